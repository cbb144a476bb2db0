// Emulated regions: the chunk table and the lock-free hit path of translate.
//
// Concurrency contract:
//  * The table is two levels: top_ (fixed at creation) points to leaves of
//    leaf_size slots (the last one only as many as the region has chunks:
//    a region of one chunk pays for one slot, not a 96 KiB leaf that its
//    first fault would zero), created on first use under the device mutex
//    (ensure_leaf_locked) and never freed while the region lives, so a
//    reader that loaded a leaf may keep using it.
//  * A slot holds the pin of its chunk (or none) and a sequence number.
//    Only the fault that claimed the chunk (faulting_, device mutex) stores a
//    pin into its slot, after registering without the mutex; invalidation
//    and the claimer of a pin clear it with a CAS, without the mutex.
//  * The hit path (try_acquire) takes no lock and makes no system call: it
//    loads the leaf and the slot's pin, takes a lease by CAS on the pin's
//    state, then checks that the pin still belongs to this chunk (a pin may
//    be recycled between the loads; with a lease held it cannot change).
//  * A miss goes to the fault path (region_fault.cpp) with a call reference
//    held, so that a close() of the handle during the fault cannot delete
//    the core under it.
#include <algorithm>

#include "region_core.hpp"

namespace odp::detail {

Range RegionCore::chunk_range(std::size_t chunk) const noexcept {
    const std::uintptr_t begin = static_cast<std::uintptr_t>(base_chunk_ + chunk) << chunk_shift_;
    return Range{begin, begin + config_.chunk_size}.intersect(config_.range);
}

RegionCore::Slot* RegionCore::slot_if_present(std::size_t chunk) const noexcept {
    Slot* leaf = top_[chunk >> leaf_shift].load(std::memory_order_acquire);
    return leaf == nullptr ? nullptr : &leaf[chunk & leaf_mask];
}

bool RegionCore::present(std::size_t chunk) const noexcept {
    const Slot* slot = slot_if_present(chunk);
    const Pin* pin = slot == nullptr ? nullptr : slot->pin.load(std::memory_order_acquire);
    return pin != nullptr && (pin->state.load(std::memory_order_acquire) & Pin::unusable) == 0;
}

RegionCore::Slot* RegionCore::ensure_leaf_locked(std::size_t chunk) {
    std::atomic<Slot*>& entry = top_[chunk >> leaf_shift];
    if (Slot* leaf = entry.load(std::memory_order_acquire)) {
        return leaf;
    }
    leaves_.push_back(std::make_unique<Slot[]>(leaf_slots(chunk >> leaf_shift)));
    entry.store(leaves_.back().get(), std::memory_order_seq_cst);
    return leaves_.back().get();
}

std::size_t RegionCore::leaf_slots(std::size_t leaf_index) const noexcept {
    return std::min(leaf_size, chunk_count_ - (leaf_index << leaf_shift));
}

RegionCore::Hit RegionCore::try_acquire(std::size_t chunk, Range part) noexcept {
    const Slot* leaf = top_[chunk >> leaf_shift].load(std::memory_order_acquire);
    if (leaf == nullptr) {
        return {};
    }
    Pin* pin = leaf[chunk & leaf_mask].pin.load(std::memory_order_acquire);
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
    // Two stores only when a fault happened since the chunk's last use.
    const std::uint64_t now = dev_.clock.load(std::memory_order_relaxed);
    const std::uint64_t last = pin->last_use.load(std::memory_order_relaxed);
    if (last < now) [[unlikely]] {
        pin->reuse_interval.store(now - last, std::memory_order_relaxed);
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

}  // namespace odp::detail
