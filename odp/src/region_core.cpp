#include "region_core.hpp"

#include <infiniband/verbs.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "memory_map.hpp"
#include "test_hooks.hpp"

namespace odp::detail {

namespace {

constexpr int max_fault_attempts = 8;
// SGE lengths are 32-bit: pinned/native leases split at this size.
constexpr std::size_t max_sge_bytes = std::size_t{1} << 30;

std::uintptr_t page_size() noexcept {
    static const auto size = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    return size;
}

std::uint64_t page_rounded(Range range) noexcept {
    const std::uintptr_t mask = page_size() - 1;
    return ((range.end + mask) & ~mask) - (range.begin & ~mask);
}

void raise_to(std::atomic<std::uint64_t>& peak, std::uint64_t value) noexcept {
    std::uint64_t seen = peak.load(std::memory_order_relaxed);
    while (value > seen && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
    }
}

std::atomic<unsigned> next_stripe{0};

// True if each piece lies inside one of `watched` (adjacent ranges merged).
bool all_within(const std::vector<Piece>& pieces, const std::vector<Range>& watched) {
    return std::all_of(pieces.begin(), pieces.end(), [&](const Piece& piece) {
        return std::any_of(watched.begin(), watched.end(),
                           [&](Range range) { return range.contains(piece.range); });
    });
}

}  // namespace

std::atomic<TestHook> test_hook{nullptr};

unsigned assign_stripe() noexcept {
    return next_stripe.fetch_add(1, std::memory_order_relaxed) % StripedCounter::stripes + 1;
}

// ---------------------------------------------------------------- lifetime

RegionCore::RegionCore(std::shared_ptr<Device> device, const Config& config)
    : device_(std::move(device)),
      dev_(device_->state()),
      config_(config),
      chunk_shift_(static_cast<unsigned>(std::countr_zero(config.chunk_size))),
      base_chunk_(config.range.begin >> chunk_shift_),
      chunk_count_(((config.range.end - 1) >> chunk_shift_) - base_chunk_ + 1) {
    if (config_.mode == Mode::Emulated) {
        top_size_ = (chunk_count_ + leaf_size - 1) >> leaf_shift;
        top_ = std::make_unique<std::atomic<Leaf*>[]>(top_size_);
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

// ---------------------------------------------------------------- helpers

Range RegionCore::chunk_range(std::size_t chunk) const noexcept {
    const std::uintptr_t begin = static_cast<std::uintptr_t>(base_chunk_ + chunk) << chunk_shift_;
    return Range{begin, begin + config_.chunk_size}.intersect(config_.range);
}

RegionCore::Slot* RegionCore::slot_if_present(std::size_t chunk) const noexcept {
    Leaf* leaf = top_[chunk >> leaf_shift].load(std::memory_order_acquire);
    return leaf == nullptr ? nullptr : &leaf->slots[chunk & leaf_mask];
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

// ---------------------------------------------------------------- pins

Pin& RegionCore::allocate_pin_locked() {
    if (free_.empty()) {
        // Pins freed by lock-free releasers: take the whole list at once.
        for (Pin* pin = reclaimed_.exchange(nullptr, std::memory_order_acquire); pin != nullptr;) {
            Pin* next = pin->next_reclaimed;
            free_.push_back(pin);
            pin = next;
        }
    }
    Pin* pin = nullptr;
    if (free_.empty()) {
        pool_.push_back(std::make_unique<Pin>());
        pin = pool_.back().get();
    } else {
        pin = free_.back();
        free_.pop_back();
    }
    references_.fetch_add(1, std::memory_order_relaxed);
    pin->pieces.clear();
    pin->pinned_bytes = 0;
    pin->next_reclaimed = nullptr;
    return *pin;
}

void RegionCore::return_unused_pin_locked(Pin& pin) noexcept {
    pin.state.store(
        Pin::free_bit | (pin.state.load(std::memory_order_relaxed) & ~(Pin::incarnation_unit - 1)),
        std::memory_order_release);
    free_.push_back(&pin);
    references_.fetch_sub(1, std::memory_order_relaxed);  // the handle still holds one
}

bool RegionCore::mark_stale(Pin& pin, bool changed) noexcept {
    const std::uint64_t bits = Pin::stale_bit | (changed ? Pin::changed_bit : 0);
    const std::uint64_t old = pin.state.fetch_or(bits, std::memory_order_acq_rel);
    if ((old & (Pin::stale_bit | Pin::dead_bit | Pin::free_bit)) != 0) {
        return false;
    }
    chunks_invalidated_.fetch_add(1, std::memory_order_relaxed);
    if ((old & Pin::lease_mask) != 0) {
        stale_while_leased_.fetch_add(1, std::memory_order_relaxed);
    } else {
        stale_pending_.fetch_add(1, std::memory_order_release);
    }
    return true;
}

bool RegionCore::try_claim(Pin& pin, bool require_stale) noexcept {
    std::uint64_t state = pin.state.load(std::memory_order_acquire);
    for (;;) {
        if ((state & (Pin::dead_bit | Pin::free_bit)) != 0 || (state & Pin::lease_mask) != 0 ||
            (require_stale && (state & Pin::stale_bit) == 0) ||
            (!require_stale && (state & Pin::stale_bit) != 0)) {
            return false;
        }
        if (pin.state.compare_exchange_weak(state, state | Pin::dead_bit | Pin::stale_bit,
                                            std::memory_order_acq_rel)) {
            return true;
        }
    }
}

std::uint64_t RegionCore::destroy_pin(Pin& pin) noexcept {
    if (pin.chunk != Pin::whole_region) {
        if (Slot* slot = slot_if_present(pin.chunk)) {
            Pin* expected = &pin;
            slot->pin.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel);
        }
    }
    for (const Piece& piece : pin.pieces) {
        dev_.nic->deregister(piece.mr);
    }
    const std::uint64_t bytes = pin.pinned_bytes;
    pin.pieces.clear();
    pin.pinned_bytes = 0;
    // The region's count first: a region's pinned bytes stay a part of the
    // device's reservation, so its peak never exceeds the budget. The other
    // order let a fault reserve the freed bytes and count them in this
    // region before they left it (CI's TSan run saw the peak one chunk over).
    pinned_.fetch_sub(bytes, std::memory_order_release);
    if (pin.chunk == Pin::whole_region) {
        dev_.pinned_regions.fetch_sub(bytes, std::memory_order_relaxed);
    }
    dev_.unreserve(bytes);
    // Free, same incarnation (the next user bumps it).
    pin.state.store(
        Pin::free_bit | (pin.state.load(std::memory_order_relaxed) & ~(Pin::incarnation_unit - 1)),
        std::memory_order_release);
    Pin* head = reclaimed_.load(std::memory_order_relaxed);
    do {
        pin.next_reclaimed = head;
    } while (!reclaimed_.compare_exchange_weak(head, &pin, std::memory_order_release,
                                               std::memory_order_relaxed));
    drop_reference();  // may delete this: nothing after it
    return bytes;
}

bool RegionCore::release_pin(Pin* pin) noexcept {
    // The last lease of a stale pin claims it in the same step that drops
    // the lease: with a gap between the two, close() (or a sweep) could claim
    // and destroy the pin, and delete this core, before the claim ran.
    std::uint64_t old = pin->state.load(std::memory_order_relaxed);
    bool claim = false;
    do {
        claim = (old & Pin::lease_mask) == 1 && (old & Pin::stale_bit) != 0;
    } while (!pin->state.compare_exchange_weak(old, (old - 1) | (claim ? Pin::dead_bit : 0),
                                               std::memory_order_acq_rel,
                                               std::memory_order_relaxed));
    const bool changed = (old & Pin::changed_bit) != 0;
    if (claim) [[unlikely]] {
        run_test_hook(HookPoint::LastLeaseReleased);
        destroy_pin(*pin);  // may delete this
    }
    return changed;
}

std::uint64_t RegionCore::sweep_stale_locked() noexcept {
    if (stale_pending_.exchange(0, std::memory_order_acquire) == 0) {
        return 0;
    }
    std::uint64_t freed = 0;
    for (const auto& pin : pool_) {
        if (try_claim(*pin, true)) {
            freed += destroy_pin(*pin);
        }
    }
    return freed;
}

void RegionCore::collect_eviction_candidates_locked(std::vector<EvictionCandidate>& out,
                                                    bool skip_ahead) {
    for (const auto& pin : pool_) {
        const std::uint64_t state = pin->state.load(std::memory_order_acquire);
        if (pin->chunk != Pin::whole_region && (state & Pin::unusable) == 0 &&
            (state & Pin::lease_mask) == 0 && !(skip_ahead && (state & Pin::ahead_bit) != 0)) {
            out.push_back({pin->last_use.load(std::memory_order_relaxed), this, pin.get()});
        }
    }
}

bool RegionCore::evict_locked(Pin& pin) noexcept {
    if (!try_claim(pin, false)) {
        return false;  // leased or invalidated since the scan
    }
    evictions_.fetch_add(1, std::memory_order_relaxed);
    destroy_pin(pin);
    return true;
}

void RegionCore::collect() {
    const std::scoped_lock lock(dev_.mutex);
    sweep_stale_locked();
}

// ---------------------------------------------------------------- pinned / native

void RegionCore::register_whole() {
    const std::unique_lock lock(dev_.mutex);
    Pin& pin = allocate_pin_locked();
    pin.chunk = Pin::whole_region;
    const Range range = config_.range;
    int flags = to_ibv_access(config_.access);
    std::uint64_t bytes = 0;
    const std::uint64_t max_mr_size = device_->caps().max_mr_size;
    if (!config_.implicit && max_mr_size != 0 && range.length() > max_mr_size) {
        return_unused_pin_locked(pin);
        throw_error(E2BIG, what("register", range) + ": " + std::string(device_->name()) +
                               " registers at most " + format_bytes(max_mr_size) +
                               " per memory region (max_mr_size): register smaller regions, or "
                               "use Mode::Emulated (it registers chunks)");
    }
    try {
        if (config_.mode == Mode::Pinned) {
            dev_.reserve_locked(page_rounded(range), *this, what("register", range));
            bytes = page_rounded(range);
        } else {
            flags |= IBV_ACCESS_ON_DEMAND;
        }
        const NicMr mr = config_.implicit
                             ? dev_.nic->register_memory(0, SIZE_MAX, flags)
                             : dev_.nic->register_memory(range.begin, range.length(), flags);
        pin.pieces.push_back(Piece{range, mr});
    } catch (...) {
        dev_.unreserve(bytes);
        return_unused_pin_locked(pin);
        throw;
    }
    pin.pinned_bytes = bytes;
    note_pinned(bytes);
    dev_.pinned_regions.fetch_add(bytes, std::memory_order_relaxed);
    bytes_registered_.fetch_add(config_.implicit ? 0 : range.length(), std::memory_order_relaxed);
    pin.state.store(((pin.state.load(std::memory_order_relaxed) & ~(Pin::incarnation_unit - 1)) +
                     Pin::incarnation_unit),
                    std::memory_order_release);
    whole_ = &pin;
}

void RegionCore::acquire_whole(Range want, std::size_t max_sge, Lease& lease) {
    const std::size_t sge_count = (want.length() + max_sge_bytes - 1) / max_sge_bytes;
    if (sge_count > max_sge) {
        throw_error(E2BIG, what("translate", want) + ": needs " + std::to_string(sge_count) +
                               " SGEs of at most 1 GiB but max_sge is " + std::to_string(max_sge) +
                               ": split the request");
    }
    Pin& pin = *whole_;
    std::uint64_t state = pin.state.load(std::memory_order_relaxed);
    do {
        if ((state & Pin::unusable) != 0 || (state & Pin::lease_mask) == Pin::lease_mask) {
            throw_error(EAGAIN, what("translate", want) +
                                    ": the region is closing or has 16M leases outstanding");
        }
    } while (!pin.state.compare_exchange_weak(state, state + 1, std::memory_order_acquire,
                                              std::memory_order_relaxed));
    lease.begin(this, sge_count, 1);
    lease.add_pin(&pin);
    const Piece& piece = pin.pieces.front();
    for (std::uintptr_t at = want.begin; at < want.end; at += max_sge_bytes) {
        const std::size_t length = std::min<std::size_t>(max_sge_bytes, want.end - at);
        lease.add_sge(at, static_cast<std::uint32_t>(length), piece.mr.lkey, piece.mr.rkey);
    }
    hits_.add(1);
}

// ---------------------------------------------------------------- emulated

RegionCore::Hit RegionCore::try_acquire(std::size_t chunk, Range part) noexcept {
    Leaf* leaf = top_[chunk >> leaf_shift].load(std::memory_order_acquire);
    if (leaf == nullptr) {
        return {};
    }
    Pin* pin = leaf->slots[chunk & leaf_mask].pin.load(std::memory_order_acquire);
    if (pin == nullptr) {
        return {};
    }
    std::uint64_t state = pin->state.load(std::memory_order_relaxed);
    do {
        if ((state & Pin::unusable) != 0 || (state & Pin::lease_mask) == Pin::lease_mask) {
            return {};
        }
    } while (!pin->state.compare_exchange_weak(state, state + 1, std::memory_order_acquire,
                                               std::memory_order_relaxed));
    // The pin may have been recycled for another chunk between the two
    // loads. Now that we hold a lease it cannot change any more, and the
    // acquire CAS made its chunk and pieces (written before its state was
    // published) visible.
    if (pin->chunk != chunk) {
        release_pin(pin);
        return {};
    }
    const Piece* piece = pin->find(part);
    if (piece == nullptr) {
        release_pin(pin);
        return {};
    }
    const std::uint64_t now = dev_.clock.load(std::memory_order_relaxed);
    if (pin->last_use.load(std::memory_order_relaxed) != now) {
        pin->last_use.store(now, std::memory_order_relaxed);
    }
    return {pin, piece, (state & Pin::ahead_bit) != 0};
}

Lease RegionCore::translate(std::uintptr_t address, std::size_t length, std::size_t max_sge) {
    const std::uintptr_t end = address + length;
    if (length == 0 || end < address || address < config_.range.begin || end > config_.range.end)
        [[unlikely]] {
        (void)checked_part(address, length, "translate");  // throws the precise error
    }
    return lease_range(Range{address, end}, max_sge, "translate");
}

Lease RegionCore::lease_range(Range want, std::size_t max_sge, const char* operation) {
    CallReference reference;  // before the lease: outlives it on every path
    Lease lease;
    if (config_.mode != Mode::Emulated) {
        acquire_whole(want, max_sge, lease);
        return lease;
    }
    // A munmap/madvise/mremap that returned before this call must be seen:
    // wait for events the source recorded but has not delivered yet (a few
    // atomic loads when there are none).
    if (mirror_ && !mirror_->up_to_date()) {
        mirror_->synchronize();
    }
    const std::size_t first = chunk_of(want.begin);
    const std::size_t last = chunk_of(want.end - 1);
    const std::size_t count = last - first + 1;
    if (count > max_sge) {
        throw_error(E2BIG, what("translate", want) + ": spans " + std::to_string(count) + " " +
                               format_bytes(config_.chunk_size) + " chunks (one SGE each) but " +
                               "max_sge is " + std::to_string(max_sge) +
                               ": split the request or use larger chunks");
    }
    // The lease holds all its chunks at once: a range that can never fit the
    // budget is refused before anything is registered or evicted.
    if (count * config_.chunk_size + dev_.pinned_regions.load(std::memory_order_relaxed) >
        dev_.max_pinned) [[unlikely]] {
        check_fits_budget(want, first, last, operation);
    }
    lease.begin(this, count, count);
    std::uint64_t hits = 0;
    for (std::size_t chunk = first; chunk <= last; ++chunk) {
        const Range part = want.intersect(chunk_range(chunk));
        Hit hit = try_acquire(chunk, part);
        if (hit.pin != nullptr) {
            ++hits;
        } else {
            reference.hold(*this);
            hit = acquire_slow(chunk, part);
            note_demand_fault(chunk);
        }
        if (hit.ahead) [[unlikely]] {
            used_faulted_ahead(*hit.pin, chunk);
        }
        lease.add_pin(hit.pin);
        lease.add_sge(part.begin, static_cast<std::uint32_t>(part.length()), hit.piece->mr.lkey,
                      hit.piece->mr.rkey);
    }
    if (hits != 0) {
        hits_.add(hits);
    }
    return lease;
}

RegionCore::Leaf& RegionCore::ensure_leaf_locked(std::size_t chunk) {
    std::atomic<Leaf*>& entry = top_[chunk >> leaf_shift];
    if (Leaf* leaf = entry.load(std::memory_order_acquire)) {
        return *leaf;
    }
    leaves_.push_back(std::make_unique<Leaf>());
    entry.store(leaves_.back().get(), std::memory_order_seq_cst);
    return *leaves_.back();
}

void RegionCore::check_fits_budget(Range want, std::size_t first, std::size_t last,
                                   const char* operation) const {
    const std::uint64_t needed =
        page_rounded(Range{chunk_range(first).begin, chunk_range(last).end});
    const std::uint64_t held = dev_.pinned_regions.load(std::memory_order_acquire);
    if (needed + held <= dev_.max_pinned) {
        return;
    }
    const std::uint64_t room = dev_.max_pinned - std::min(held, dev_.max_pinned);
    std::string advice = room >= config_.chunk_size
                             ? "split it into pieces of at most " +
                                   format_bytes(room / config_.chunk_size * config_.chunk_size) +
                                   ", or raise max_pinned_bytes"
                             : "raise max_pinned_bytes";
    if (held != 0) {
        advice += ", or drop pinned regions";
    }
    throw_error(ENOBUFS,
                what(operation, want) + ": leases " + std::to_string(last - first + 1) + " " +
                    format_bytes(config_.chunk_size) + " chunks at once (up to " +
                    format_bytes(needed) + " pinned) but the pinned budget is " +
                    format_bytes(dev_.max_pinned) + " (" + dev_.budget_source + ")" +
                    (held != 0 ? ", of which pinned regions hold " + format_bytes(held) : "") +
                    "; no retry can make it fit: " + advice);
}

void RegionCore::throw_unmapped(Range part) const {
    throw_error(EFAULT, what("translate", part) + ": the memory is not mapped" +
                            (has(config_.access, Access::LocalWrite) ||
                                     has(config_.access, Access::RemoteWrite)
                                 ? " writable"
                                 : " readable") +
                            " (freed, never mapped, or PROT_NONE): pass a live buffer");
}

bool RegionCore::register_pieces(Pin& pin, Range span, Range part, std::uint64_t reserved,
                                 const std::vector<Range>& watched) {
    const int flags = to_ibv_access(config_.access);
    const auto drop_pieces = [&]() noexcept {
        for (const Piece& piece : pin.pieces) {
            dev_.nic->deregister(piece.mr);
        }
        pin.pieces.clear();
        dev_.unreserve(reserved);
    };
    std::uint64_t used = 0;
    try {
        try {
            pin.pieces.push_back(
                Piece{span, dev_.nic->register_memory(span.begin, span.length(), flags)});
            used = page_rounded(span);
        } catch (const Error& error) {
            if (error.errno_value() != EFAULT) {
                throw;
            }
            // Part of the chunk is not mapped: register the mapped parts only.
            const bool need_write = (flags & IBV_ACCESS_LOCAL_WRITE) != 0;
            for (const Range mapped : accessible_ranges(span, need_write)) {
                try {
                    pin.pieces.push_back(Piece{
                        mapped, dev_.nic->register_memory(mapped.begin, mapped.length(), flags)});
                    used += page_rounded(mapped);
                } catch (const Error& inner) {
                    if (inner.errno_value() != EFAULT) {
                        throw;
                    }
                    // Mapped but not pinnable (VM_IO, [vvar], beyond EOF): skip.
                }
            }
            if (pin.find(part) == nullptr) {
                throw_unmapped(part);
            }
        }
    } catch (...) {
        drop_pieces();
        throw;
    }
    if (!all_within(pin.pieces, watched)) {
        drop_pieces();
        return false;
    }
    dev_.unreserve(reserved - used);
    pin.pinned_bytes = used;
    note_pinned(used);
    std::uint64_t bytes = 0;
    for (const Piece& piece : pin.pieces) {
        bytes += piece.range.length();
    }
    bytes_registered_.fetch_add(bytes, std::memory_order_relaxed);
    return true;
}

RegionCore::Armed RegionCore::arm(Range span, Range part) {
    if (!watch_) {
        return {span, {span}};
    }
    // The source must watch what is about to be pinned (userfaultfd only sees
    // mappings registered with it). If some mapping in the chunk cannot be
    // watched, pin only the pages asked for, which must be watchable.
    try {
        return {span, watch_.arm(span)};
    } catch (const Error&) {
        const std::uintptr_t mask = page_size() - 1;
        const Range narrow = Range{part.begin & ~mask, (part.end + mask) & ~mask}.intersect(span);
        return {narrow, watch_.arm(narrow)};  // throws the source's error, which says what to do
    }
}

void RegionCore::throw_unsettled(Range part) const {
    throw_error(EAGAIN, what("translate", part) + ": the mapping changed during " +
                            std::to_string(max_fault_attempts) +
                            " registrations in a row: retry later");
}

RegionCore::Hit RegionCore::acquire_slow(std::size_t chunk, Range part, FaultKind kind) {
    if (kind == FaultKind::Demand) {
        misses_.fetch_add(1, std::memory_order_relaxed);
    }
    std::unique_lock lock(dev_.mutex);
    // One fault per chunk: a thread that finds the chunk being faulted waits
    // for that fault and leases what it registered.
    for (;;) {
        if (const Hit hit = try_acquire(chunk, part); hit.pin != nullptr) {
            return hit;
        }
        if (std::find(faulting_.begin(), faulting_.end(), chunk) == faulting_.end()) {
            break;
        }
        if (kind == FaultKind::Ahead) {
            return {};  // someone is faulting it already
        }
        dev_.fault_done.wait(lock);
    }
    faulting_.push_back(chunk);
    const auto end_claim = [&] {
        if (!lock.owns_lock()) {
            lock.lock();
        }
        std::erase(faulting_, chunk);
        dev_.fault_done.notify_all();
    };
    try {
        const Hit hit = fault_claimed(chunk, part, kind, lock);
        end_claim();
        return hit;
    } catch (...) {
        end_claim();
        throw;
    }
}

RegionCore::Hit RegionCore::fault_claimed(std::size_t chunk, Range part, FaultKind kind,
                                          std::unique_lock<std::mutex>& lock) {
    const bool ahead = kind == FaultKind::Ahead;
    for (int attempt = 0;; ++attempt) {
        if (!lock.owns_lock()) {
            lock.lock();
        }
        if (closed_) {
            throw_error(EINVAL, what("translate", part) +
                                    ": the region was closed during the call: keep the Region "
                                    "alive while other threads use it");
        }
        sweep_stale_locked();
        Slot& slot = ensure_leaf_locked(chunk).slots[chunk & leaf_mask];
        if (Pin* current = slot.pin.load(std::memory_order_acquire)) {
            const std::uint64_t state = current->state.load(std::memory_order_acquire);
            if ((state & Pin::unusable) == 0 && (state & Pin::lease_mask) == Pin::lease_mask) {
                throw_error(EAGAIN, what("translate", part) +
                                        ": 16M leases outstanding on one chunk: release some");
            }
            if ((state & Pin::unusable) == 0) {
                // Registered, but not over `part`: a hole at fault time. If it
                // is mapped now, the mapping changed without an event (mmap
                // into a hole does not invalidate): re-register the chunk.
                const bool need_write =
                    (to_ibv_access(config_.access) & IBV_ACCESS_LOCAL_WRITE) != 0;
                const std::vector<Range> mapped = accessible_ranges(part, need_write);
                if (mapped.empty() || mapped.front() != part) {
                    throw_unmapped(part);
                }
                // Changed, not just stale: leases may still hold it, and once
                // out of its slot no invalidation can reach it any more.
                mark_stale(*current, true);
            }
            Pin* expected = current;
            slot.pin.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel);
            if (try_claim(*current, true)) {
                destroy_pin(*current);
            }
        }

        // In this order: the sources report some changes (MADV_DONTNEED,
        // reclaim) when they start, and arm() waits until the ones delivered
        // so far are over; one delivered after the loads fails the re-check.
        const std::uint64_t seq = slot.seq.load(std::memory_order_seq_cst);
        const std::uint64_t epoch = epoch_.load(std::memory_order_seq_cst);
        // The whole chunk is reserved (arm() may narrow it; the rest goes
        // back after the registration), then arm() and the registration
        // (ibv_reg_mr pins and may sleep) run unlocked: the pin is ours until
        // published, the bytes are reserved.
        const Range whole = chunk_range(chunk);
        const std::uint64_t reserved = page_rounded(whole);
        Pin& pin = allocate_pin_locked();
        pin.chunk = chunk;
        try {
            dev_.reserve_locked(reserved, *this, what(ahead ? "fault-ahead" : "translate", part),
                                ahead);
        } catch (...) {
            return_unused_pin_locked(pin);
            throw;
        }
        lock.unlock();
        bool watched = false;
        try {
            Armed armed;
            try {
                armed = arm(whole, part);
            } catch (...) {
                dev_.unreserve(reserved);
                throw;
            }
            watched = register_pieces(pin, armed.span, part, reserved, armed.watched);
        } catch (...) {
            lock.lock();
            return_unused_pin_locked(pin);
            throw;
        }
        if (!watched) {
            // Memory was mapped into a hole of the chunk after it was armed
            // (no event says so): pinned, it would never be watched. Arm again.
            lock.lock();
            return_unused_pin_locked(pin);
            if (attempt + 1 >= max_fault_attempts) {
                throw_unsettled(part);
            }
            continue;
        }
        // One lease (ours), next incarnation, not leasable by others until
        // the re-check below confirms it.
        const std::uint64_t published =
            ((pin.state.load(std::memory_order_relaxed) & ~(Pin::incarnation_unit - 1)) +
             Pin::incarnation_unit) |
            Pin::unconfirmed_bit | (ahead ? Pin::ahead_bit : 0) | 1;
        pin.state.store(published, std::memory_order_release);
        pin.last_use.store(dev_.clock.fetch_add(1, std::memory_order_relaxed),
                           std::memory_order_relaxed);
        slot.pin.store(&pin, std::memory_order_seq_cst);
        chunk_faults_.fetch_add(1, std::memory_order_relaxed);
        run_test_hook(HookPoint::FaultPublished);
        // Confirmed only if no invalidation ran since the sequence was read:
        // one before the pin was in its slot bumped the sequence, one after
        // it marked the pin (then the exchange below fails).
        std::uint64_t expected_state = published;
        if (slot.seq.load(std::memory_order_seq_cst) == seq &&
            epoch_.load(std::memory_order_seq_cst) == epoch &&
            pin.state.compare_exchange_strong(expected_state, published & ~Pin::unconfirmed_bit,
                                              std::memory_order_acq_rel)) {
            if (ahead) {
                chunks_faulted_ahead_.fetch_add(1, std::memory_order_relaxed);
            }
            return {&pin, pin.find(part)};
        }
        // An invalidation ran while we registered: the pages we pinned may be
        // the old ones. Drop them and fault again.
        mark_stale(pin, true);
        Pin* expected = &pin;
        slot.pin.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel);
        release_pin(&pin);
        if (attempt + 1 >= max_fault_attempts) {
            throw_unsettled(part);
        }
    }
}

// ---------------------------------------------------------------- fault-ahead

bool RegionCore::present(std::size_t chunk) const noexcept {
    const Slot* slot = slot_if_present(chunk);
    const Pin* pin = slot == nullptr ? nullptr : slot->pin.load(std::memory_order_acquire);
    return pin != nullptr && (pin->state.load(std::memory_order_acquire) & Pin::unusable) == 0;
}

void RegionCore::note_demand_fault(std::size_t chunk) noexcept {
    if (config_.fault_ahead == 0) {
        return;
    }
    // Stored as chunk + 1 so that 0 means "none": sequential if the last
    // demand fault was of the chunk just before.
    const std::size_t previous = last_demand_fault_.exchange(chunk + 1, std::memory_order_relaxed);
    if (chunk != 0 && previous == chunk) {
        request_ahead_of(chunk);
    }
}

void RegionCore::used_faulted_ahead(Pin& pin, std::size_t chunk) noexcept {
    // The first lease of a faulted-ahead chunk: the stream goes on.
    if ((pin.state.fetch_and(~Pin::ahead_bit, std::memory_order_relaxed) & Pin::ahead_bit) != 0) {
        fault_ahead_hits_.fetch_add(1, std::memory_order_relaxed);
        last_demand_fault_.store(chunk + 1, std::memory_order_relaxed);
        request_ahead_of(chunk);
    }
}

void RegionCore::request_ahead_of(std::size_t chunk) noexcept {
    try {
        const std::scoped_lock lock(dev_.mutex);
        if (closed_) {
            return;
        }
        const std::size_t end = std::min(chunk_count_, chunk + 1 + config_.fault_ahead);
        for (std::size_t next = chunk + 1; next < end; ++next) {
            if (!present(next) &&
                std::find(faulting_.begin(), faulting_.end(), next) == faulting_.end()) {
                dev_.request_fault_ahead_locked(*this, next);
            }
        }
    } catch (const std::exception& error) {
        // Speculation only: the demand path goes on without it.
        log_error(std::string("fault-ahead not requested: ") + error.what());
    }
}

void RegionCore::fault_ahead(std::size_t chunk) noexcept {
    if (present(chunk)) {
        return;
    }
    try {
        const Hit hit = acquire_slow(chunk, chunk_range(chunk), FaultKind::Ahead);
        if (hit.pin != nullptr) {
            release_pin(hit.pin);
        }
    } catch (...) {
        // Budget full, memory not mapped, the mapping kept changing or the
        // region closed: speculation ends here; a demand fault would report it.
    }
}

void RegionCore::prefetch_async(std::uintptr_t address, std::size_t length, Prefetch advice) {
    const Range want = checked_part(address, length, "prefetch_async");
    if (config_.mode != Mode::Emulated) {
        prefetch(address, length, advice);
        return;
    }
    const std::size_t first = chunk_of(want.begin);
    const std::size_t last = chunk_of(want.end - 1);
    {
        const std::scoped_lock lock(dev_.mutex);
        for (std::size_t chunk = first; chunk <= last; ++chunk) {
            if (!present(chunk)) {
                dev_.request_fault_ahead_locked(*this, chunk);
            }
        }
    }
    prefetches_.fetch_add(1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------- invalidation

void RegionCore::on_invalidate(Range range, InvalidationReason reason) noexcept {
    if (reason == InvalidationReason::Overflow) {
        on_invalidate_all(reason);
        return;
    }
    // After close() only leases hold the core: an exposure callback that
    // releases the last one must not delete it under this call.
    const bool referenced = try_reference();
    invalidate_range(range, reason);
    if (referenced) {
        drop_reference();
    }
}

void RegionCore::invalidate_range(Range range, InvalidationReason reason) noexcept {
    invalidations_[static_cast<std::size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
    const Range hit = range.intersect(config_.range);
    if (hit.empty()) {
        return;
    }
    if (config_.mode == Mode::Emulated) {
        const std::size_t first = chunk_of(hit.begin);
        const std::size_t last = chunk_of(hit.end - 1);
        for (std::size_t leaf_index = first >> leaf_shift; leaf_index <= (last >> leaf_shift);
             ++leaf_index) {
            Leaf* leaf = top_[leaf_index].load(std::memory_order_seq_cst);
            if (leaf == nullptr) {
                continue;  // nothing was ever registered there
            }
            const std::size_t from = std::max(first, leaf_index << leaf_shift);
            const std::size_t to = std::min(last, ((leaf_index + 1) << leaf_shift) - 1);
            for (std::size_t chunk = from; chunk <= to; ++chunk) {
                Slot& slot = leaf->slots[chunk & leaf_mask];
                // Sequence first, then the pin: a fault that publishes its
                // pin and then reads the sequence sees one or the other.
                slot.seq.fetch_add(1, std::memory_order_seq_cst);
                Pin* pin = slot.pin.load(std::memory_order_seq_cst);
                if (pin == nullptr) {
                    continue;
                }
                mark_stale(*pin, true);
                slot.pin.compare_exchange_strong(pin, nullptr, std::memory_order_acq_rel);
            }
        }
    }
    fire_exposures(hit, reason);
}

void RegionCore::on_invalidate_all(InvalidationReason reason) noexcept {
    const bool referenced = try_reference();  // as in on_invalidate
    invalidate_everything(reason);
    if (referenced) {
        drop_reference();
    }
}

void RegionCore::invalidate_everything(InvalidationReason reason) noexcept {
    invalidations_[static_cast<std::size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
    if (config_.mode == Mode::Emulated) {
        epoch_.fetch_add(1, std::memory_order_seq_cst);
        for (std::size_t leaf_index = 0; leaf_index < top_size_; ++leaf_index) {
            Leaf* leaf = top_[leaf_index].load(std::memory_order_seq_cst);
            if (leaf == nullptr) {
                continue;
            }
            for (Slot& slot : leaf->slots) {
                Pin* pin = slot.pin.load(std::memory_order_seq_cst);
                if (pin != nullptr) {
                    mark_stale(*pin, true);
                    slot.pin.compare_exchange_strong(pin, nullptr, std::memory_order_acq_rel);
                }
            }
        }
    }
    fire_exposures(config_.range, reason);
}

// Marks every exposure overlapping `hit` as changed and runs each callback at
// most once.
void RegionCore::fire_exposures(Range hit, InvalidationReason reason) noexcept {
    if (exposure_count_.load(std::memory_order_acquire) == 0) {
        return;
    }
    std::vector<std::shared_ptr<ExposureState>> to_fire;
    {
        const std::scoped_lock lock(exposures_mutex_);
        for (const auto& state : exposures_) {
            if (state->range.overlaps(hit)) {
                state->changed.store(true, std::memory_order_release);
                to_fire.push_back(state);
            }
        }
    }
    for (const auto& state : to_fire) {
        const std::scoped_lock lock(state->mutex);
        if (!state->released && !state->fired && state->callback) {
            state->fired = true;
            try {
                state->callback(hit, reason);
            } catch (const std::exception& error) {
                log_error(std::string("exposure callback threw (ignored): ") + error.what());
            } catch (...) {
                log_error("exposure callback threw (ignored)");
            }
        }
    }
}

// ---------------------------------------------------------------- expose / prefetch

Exposure RegionCore::expose(std::uintptr_t address, std::size_t length, ExposureCallback callback) {
    const Range want = checked_part(address, length, "expose");
    if (!has(config_.access, Access::RemoteWrite) && !has(config_.access, Access::RemoteRead) &&
        !has(config_.access, Access::RemoteAtomic)) {
        throw_error(EACCES, what("expose", want) + ": the region was registered with access " +
                                to_string(config_.access) +
                                ", no remote access: register it with RemoteWrite/RemoteRead");
    }
    // Changes made before this call are behind the exposure, not under it:
    // their pending events are delivered before it is listed (else a munmap
    // that returned before expose() would mark it changed at release).
    if (mirror_ && !mirror_->up_to_date()) {
        mirror_->synchronize();
    }
    // Listed before the chunks are leased: an invalidation from here on runs
    // the callback (one that lands before translate() is already behind the
    // pages it leases). The callback may thus run before expose() returns.
    auto state = std::make_shared<ExposureState>();
    state->callback = std::move(callback);
    state->range = want;
    {
        const std::scoped_lock lock(exposures_mutex_);
        exposures_.push_back(state);
        exposure_count_.fetch_add(1, std::memory_order_release);
    }
    Exposure exposure;
    try {
        exposure.lease_ = lease_range(want, unlimited_sges, "expose");
    } catch (...) {
        remove_exposure(state);
        const std::scoped_lock lock(state->mutex);
        state->released = true;
        throw;
    }
    exposure.state_ = std::move(state);  // from here on its destructor unlists it
    run_test_hook(HookPoint::ExposeTranslated);
    exposure.range_ = want;
    const auto sges = exposure.lease_.sges();
    const auto rkeys = exposure.lease_.rkeys();
    exposure.segments_.reserve(sges.size());
    for (std::size_t i = 0; i < sges.size(); ++i) {
        exposure.segments_.push_back(RemoteSegment{sges[i].addr, sges[i].length, rkeys[i]});
    }
    return exposure;
}

void RegionCore::remove_exposure(const std::shared_ptr<ExposureState>& state) noexcept {
    const std::scoped_lock lock(exposures_mutex_);
    if (std::erase(exposures_, state) != 0) {
        exposure_count_.fetch_sub(1, std::memory_order_release);
    }
}

void RegionCore::prefetch(std::uintptr_t address, std::size_t length, Prefetch advice) {
    const Range want = checked_part(address, length, "prefetch");
    switch (config_.mode) {
        case Mode::Pinned:
            return;  // already resident and registered
        case Mode::Native: {
            if (!device_->caps().prefetch) {
                throw_error(EOPNOTSUPP, what("prefetch", want) + ": " +
                                            std::string(device_->name()) +
                                            " cannot prefetch ODP memory (ibv_advise_mr)");
            }
            const Piece& piece = whole_->pieces.front();
            std::vector<ibv_sge> sges;
            for (std::uintptr_t at = want.begin; at < want.end; at += max_sge_bytes) {
                sges.push_back(ibv_sge{
                    at,
                    static_cast<std::uint32_t>(std::min<std::size_t>(max_sge_bytes, want.end - at)),
                    piece.mr.lkey});
            }
            dev_.nic->advise(advice, sges);
            prefetches_.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        case Mode::Emulated:
        case Mode::Auto: {
            Lease lease = lease_range(want, unlimited_sges, "prefetch");
            lease.release();
            prefetches_.fetch_add(1, std::memory_order_relaxed);
            return;
        }
    }
}

// ---------------------------------------------------------------- stats

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
