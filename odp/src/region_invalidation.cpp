// Invalidation: the mirror (or the application, Region::invalidate) tells
// the region that the mapping under a range changed.
//
// Concurrency contract: the chunk table part is lock-free. Called on the
// mirror's thread, it never takes the device mutex, never waits for a fault
// and never deregisters: per chunk it bumps the slot's sequence (sequence
// first, then the pin: a fault that publishes its pin and then reads the
// sequence sees one or the other), marks the pin stale and changed, and
// detaches it from its slot. Whoever releases the last lease (or the next
// slow path, for unleased pins) deregisters it. A whole-region event bumps
// the epoch the same way. Exposures overlapping the range are fired
// afterwards, under the registry's own locks (region_exposures.cpp). A
// callback may run after close(), while leases keep the core: it takes a
// reference for its duration.
#include <algorithm>
#include <span>

#include "region_core.hpp"

namespace odp::detail {

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
            Slot* leaf = top_[leaf_index].load(std::memory_order_seq_cst);
            if (leaf == nullptr) {
                continue;  // nothing was ever registered there
            }
            const std::size_t from = std::max(first, leaf_index << leaf_shift);
            const std::size_t to = std::min(last, ((leaf_index + 1) << leaf_shift) - 1);
            for (std::size_t chunk = from; chunk <= to; ++chunk) {
                Slot& slot = leaf[chunk & leaf_mask];
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
            Slot* const leaf = top_[leaf_index].load(std::memory_order_seq_cst);
            if (leaf == nullptr) {
                continue;
            }
            for (Slot& slot : std::span(leaf, leaf_slots(leaf_index))) {
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

}  // namespace odp::detail
