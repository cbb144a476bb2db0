// A region's lifetime, its references, and what it reports (description,
// statistics).
//
// Concurrency contract:
//  * references_ counts the handle (until close()), one per pin that is not
//    free, and one per call that faults (CallReference). The count is only
//    changed atomically; whoever drops it to zero deletes the core. A
//    callback of the mirror takes a reference with try_reference(), which
//    fails once the count reached zero (the destructor then resets the
//    watch first, which waits for that callback to return).
//  * close() runs under the device mutex: it sets closed_ (no fault may
//    start afterwards: the fault path checks it under the same mutex),
//    unlists the region, drops its fault-ahead requests, and claims every
//    unleased pin. Leased pins stay until their last release.
//  * Statistics are relaxed atomics (hits: StripedCounter): a reader gets
//    each counter's value at some moment, not a snapshot of all of them.
#include "region_core.hpp"

#include <algorithm>
#include <bit>

#include "test_hooks.hpp"

namespace odp::detail {

namespace {

void raise_to(std::atomic<std::uint64_t>& peak, std::uint64_t value) noexcept {
    std::uint64_t seen = peak.load(std::memory_order_relaxed);
    while (value > seen && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
    }
}

std::atomic<unsigned> next_stripe{0};

}  // namespace

std::atomic<TestHook> test_hook{nullptr};

std::uint64_t page_rounded(Range range) noexcept {
    const std::uintptr_t mask = page_size() - 1;
    return ((range.end + mask) & ~mask) - (range.begin & ~mask);
}

unsigned assign_stripe() noexcept {
    return next_stripe.fetch_add(1, std::memory_order_relaxed) % StripedCounter::stripes + 1;
}

RegionCore::RegionCore(std::shared_ptr<Device> device, const Config& config)
    : device_(std::move(device)),
      dev_(device_->state()),
      config_(config),
      chunk_shift_(static_cast<unsigned>(std::countr_zero(config.chunk_size))),
      base_chunk_(config.range.begin >> chunk_shift_),
      chunk_count_(((config.range.end - 1) >> chunk_shift_) - base_chunk_ + 1) {
    if (config_.mode == Mode::Emulated) {
        top_size_ = (chunk_count_ + leaf_size - 1) >> leaf_shift;
        top_ = std::make_unique<std::atomic<Slot*>[]>(top_size_);
        if (config_.mirror || config_.monitor != MonitorKind::None) {
            if (config_.mirror) {
                mirror_ = config_.mirror;
            } else {
                MirrorOptions options;
                options.kind = config_.monitor;
                mirror_ = Mirror::acquire(options);
            }
            watch_ = mirror_->watch(config_.range, *this);
            monitor_ = std::string(to_string(mirror_->kind()));
            if (const std::string parts = summarize(watch_.unwatched()); !parts.empty()) {
                monitor_ +=
                    "; not watched: " + parts + " (Region::unwatched() lists each with the reason)";
            }
        } else {
            monitor_ = "none (the application promised never to change mapped buffers)";
        }
    } else if (config_.mode == Mode::Native) {
        monitor_ = "not needed (native ODP: the NIC follows the mapping)";
    } else {
        monitor_ = "none (pinned: not coherent with munmap/mremap/madvise)";
    }
}

RegionCore::~RegionCore() {
    // Before any member goes: waits for a callback of this watch running on
    // the dispatcher (none can start afterwards).
    watch_.reset();
}

RegionCore* RegionCore::create(std::shared_ptr<Device> device, const Config& config) {
    if (config.mode == Mode::Emulated &&
        (!std::has_single_bit(config.chunk_size) || config.chunk_size < page_size() ||
         config.chunk_size > (std::size_t{1} << 30))) {
        throw_error(EINVAL, "chunk size " + std::to_string(config.chunk_size) +
                                " is not a power of two between the page size (" +
                                std::to_string(page_size()) + ") and 1 GiB: pick e.g. 2 MiB");
    }
    // unique_ptr with close() as the owner until the handle takes over.
    RegionCore* core = new RegionCore(std::move(device), config);  // deleted by drop_reference
    try {
        if (config.mode != Mode::Emulated) {
            core->register_whole();
        }
        const std::scoped_lock lock(core->dev_.mutex);
        core->dev_.regions.push_back(core);
    } catch (...) {
        core->drop_reference();
        throw;
    }
    return core;
}

bool RegionCore::try_reference() noexcept {
    std::int64_t count = references_.load(std::memory_order_relaxed);
    do {
        if (count == 0) {
            return false;
        }
    } while (!references_.compare_exchange_weak(count, count + 1, std::memory_order_acq_rel,
                                                std::memory_order_relaxed));
    return true;
}

bool RegionCore::synchronize_mirror() noexcept {
    try {
        mirror_->synchronize();
        return true;
    } catch (const std::exception& error) {
        log_error(std::string("waiting for the mirror's pending events failed; reporting the "
                              "lease as changed: ") +
                  error.what());
    } catch (...) {
        log_error("waiting for the mirror's pending events failed; reporting the lease as changed");
    }
    return false;
}

void RegionCore::drop_reference() noexcept {
    if (references_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        delete this;
    }
}

void RegionCore::close() noexcept {
    // Everything is made stale below. The watch stays until the core goes:
    // a pin still leased stays in its slot, where an invalidation finds it
    // and marks it changed; the last release detaches it.
    {
        std::unique_lock lock(dev_.mutex);
        closed_ = true;
        std::erase(dev_.regions, this);
        dev_.forget_fault_ahead_locked(*this, lock);
        epoch_.fetch_add(1, std::memory_order_seq_cst);
        for (const auto& pin : pool_) {
            const std::uint64_t old =
                pin->state.fetch_or(Pin::stale_bit, std::memory_order_acq_rel);
            if ((old & (Pin::free_bit | Pin::dead_bit)) != 0) {
                continue;
            }
            if (try_claim(*pin, true)) {
                destroy_pin(*pin);  // cannot delete this: the handle's reference is held
            }
        }
        invalidations_[static_cast<std::size_t>(InvalidationReason::Teardown)].fetch_add(
            1, std::memory_order_relaxed);
        Stats mine = stats();
        mine.pinned_bytes = 0;  // still-leased pins are counted by the device until released
        mine.peak_pinned_bytes = 0;
        accumulate(dev_.retired, mine);
    }
    drop_reference();
}

std::string RegionCore::what(const char* operation, Range part) const {
    return std::string(operation) + "(" + format_address(part.begin) + ", " +
           format_bytes(part.length()) + ") on " + std::string(to_string(config_.mode)) +
           " region [" + format_address(config_.range.begin) + ", " +
           format_address(config_.range.end) + ") of " + std::string(device_->name());
}

Range RegionCore::checked_part(std::uintptr_t address, std::size_t length,
                               const char* operation) const {
    const Range part = Range::from_length(address, length);
    if (!config_.range.contains(part)) {
        throw_error(EINVAL, what(operation, part) +
                                ": the range is not inside the region: register it first");
    }
    return part;
}

void RegionCore::note_pinned(std::uint64_t bytes) noexcept {
    raise_to(peak_pinned_, pinned_.fetch_add(bytes, std::memory_order_relaxed) + bytes);
}

std::string RegionCore::monitor_description() const {
    return monitor_;
}

std::string RegionCore::describe() const {
    std::string text(to_string(config_.mode));
    if (config_.mode == Mode::Emulated) {
        text += ", " + format_bytes(config_.chunk_size) + " chunks";
    }
    text += config_.implicit ? ", whole address space" : "";
    text += ", [" + format_address(config_.range.begin) + ", " + format_address(config_.range.end) +
            ") " + format_bytes(config_.range.length());
    text += ", access " + to_string(config_.access) + ", on " + std::string(device_->name());
    text += ", monitor: " + monitor_;
    return text;
}

Stats RegionCore::stats() const {
    Stats s;
    s.hits = hits_.sum();
    s.misses = misses_.load(std::memory_order_relaxed);
    s.chunk_faults = chunk_faults_.load(std::memory_order_relaxed);
    s.bytes_registered = bytes_registered_.load(std::memory_order_relaxed);
    s.prefetches = prefetches_.load(std::memory_order_relaxed);
    s.chunks_faulted_ahead = chunks_faulted_ahead_.load(std::memory_order_relaxed);
    s.fault_ahead_hits = fault_ahead_hits_.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < invalidation_reason_count; ++i) {
        s.invalidations[i] = invalidations_[i].load(std::memory_order_relaxed);
    }
    s.chunks_invalidated = chunks_invalidated_.load(std::memory_order_relaxed);
    s.stale_while_leased = stale_while_leased_.load(std::memory_order_relaxed);
    s.evictions = evictions_.load(std::memory_order_relaxed);
    s.back_pressure = back_pressure_.load(std::memory_order_relaxed);
    s.pinned_bytes = pinned_.load(std::memory_order_relaxed);
    s.peak_pinned_bytes = peak_pinned_.load(std::memory_order_relaxed);
    return s;
}

void accumulate(Stats& total, const Stats& part) noexcept {
    total.hits += part.hits;
    total.misses += part.misses;
    total.chunk_faults += part.chunk_faults;
    total.bytes_registered += part.bytes_registered;
    total.prefetches += part.prefetches;
    total.chunks_faulted_ahead += part.chunks_faulted_ahead;
    total.fault_ahead_hits += part.fault_ahead_hits;
    for (std::size_t i = 0; i < invalidation_reason_count; ++i) {
        total.invalidations[i] += part.invalidations[i];
    }
    total.chunks_invalidated += part.chunks_invalidated;
    total.stale_while_leased += part.stale_while_leased;
    total.evictions += part.evictions;
    total.back_pressure += part.back_pressure;
    total.pinned_bytes += part.pinned_bytes;
    total.peak_pinned_bytes = std::max(total.peak_pinned_bytes, part.peak_pinned_bytes);
}

}  // namespace odp::detail
