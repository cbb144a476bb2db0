// The pin pool: every Pin a region ever used, recycled, never freed while
// the region lives (type-stable memory), and the state word that guards
// each pin.
//
// Concurrency contract:
//  * A pin's 64-bit state word (Pin in region_core.hpp) is only changed by
//    atomic read-modify-writes. A lease is one increment, taken only while
//    no bit of Pin::unusable is set; stale_bit stops new leases; dead_bit
//    is set by exactly one claimer (try_claim, or the last release of a
//    stale pin, in the same CAS that drops its lease), who then owns the
//    pin: it deregisters the pieces and frees it (destroy_pin).
//  * pool_ and free_ are under the device mutex. destroy_pin() may run
//    without it (the last release, lock-free): it pushes the pin on the
//    lock-free stack reclaimed_, which allocate_pin_locked() takes whole.
//  * A pin's chunk, pieces and pinned_bytes are written while the pin is
//    its fault's own (before publication) or its claimer's (after dead_bit);
//    lease holders read them after their acquire CAS on the state. Eviction's
//    scan reads pinned_bytes of pins it does not own (relaxed atomic: a pin
//    freed meanwhile fails the claim, so a stale size is never acted on).
//  * stale_pending_ counts pins made stale while unleased; the next slow
//    path (sweep_stale_locked, device mutex) claims and deregisters them.
//  * Eviction (device mutex) claims a pin only if it is neither leased nor
//    stale; a lease taken meanwhile makes the claim fail. Which pins it
//    tries, and in which order, is eviction.cpp's (EvictionPolicy).
#include <algorithm>

#include "region_core.hpp"
#include "test_hooks.hpp"

namespace odp::detail {

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
    pin->pinned_bytes.store(0, std::memory_order_relaxed);
    pin->next_reclaimed = nullptr;
    pin->reuse_interval.store(0, std::memory_order_relaxed);
    pin->protected_chunk = false;
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
            slot->last_use.store(pin.last_use.load(std::memory_order_relaxed),
                                 std::memory_order_relaxed);
            Pin* expected = &pin;
            slot->pin.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel);
        }
    }
    for (const Piece& piece : pin.pieces) {
        dev_.nic->deregister(piece.mr);
    }
    const std::uint64_t bytes = pin.pinned_bytes.exchange(0, std::memory_order_relaxed);
    pin.pieces.clear();
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
        if (pin->chunk == Pin::whole_region || (state & Pin::unusable) != 0) {
            continue;
        }
        out.push_back({.last_use = pin->last_use.load(std::memory_order_relaxed),
                       .reuse_interval = pin->reuse_interval.load(std::memory_order_relaxed),
                       .bytes = pin->pinned_bytes.load(std::memory_order_relaxed),
                       .evictable = (state & Pin::lease_mask) == 0 &&
                                    !(skip_ahead && (state & Pin::ahead_bit) != 0),
                       .region = this,
                       .pin = pin.get()});
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

}  // namespace odp::detail
