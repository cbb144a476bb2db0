// Emulated regions: the chunk fault, i.e. registering a chunk on demand.
//
// Concurrency contract:
//  * One fault per chunk: a fault claims its chunk in faulting_ under the
//    device mutex; a second demand faulter of the chunk waits on
//    fault_done and then leases what the first registered (a fault-ahead
//    gives up instead). Faults of different chunks, of one region or
//    several, run in parallel.
//  * Under the device mutex: the claim, the sweep of stale pins, taking a
//    pin from the pool, reserving the whole chunk's bytes of the budget
//    (evicting if needed; the budget is never overshot) and, at the end,
//    unclaiming. Without it: arming the source's watch, the registration
//    itself (ibv_reg_mr pins and may sleep), publishing the pin in its slot
//    and the re-check below; the claim keeps other faults of the chunk out,
//    the pin is the fault's own until published and its bytes are reserved.
//  * No invalidation is lost: the fault reads the slot's sequence and the
//    region's epoch before arming (arm() waits for the changes delivered so
//    far to be over), publishes its pin unconfirmed (nobody else may lease
//    it), then re-reads both. Unchanged: it confirms the pin by CAS (an
//    invalidation after publication marked the pin, and the CAS fails).
//    Changed: the pin is dropped and the chunk faulted again, up to
//    max_fault_attempts times (then EAGAIN).
#include <infiniband/verbs.h>

#include <algorithm>

#include "memory_map.hpp"
#include "region_core.hpp"
#include "test_hooks.hpp"

namespace odp::detail {

namespace {

constexpr int max_fault_attempts = 8;

// True if each piece lies inside one of `watched` (adjacent ranges merged).
bool all_within(const std::vector<Piece>& pieces, const std::vector<Range>& watched) {
    return std::all_of(pieces.begin(), pieces.end(), [&](const Piece& piece) {
        return std::any_of(watched.begin(), watched.end(),
                           [&](Range range) { return range.contains(piece.range); });
    });
}

}  // namespace

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
    pin.pinned_bytes.store(used, std::memory_order_relaxed);
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
        Slot& slot = ensure_leaf_locked(chunk)[chunk & leaf_mask];
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
            dev_.reserve_locked(reserved, *this, ahead ? "fault-ahead" : "translate", part, ahead);
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
        // The clock after this fault's tick: the chunk's own hits until the
        // next fault are no reuse. Its last use before it went (if the slot
        // remembers one) gives its reuse interval.
        const std::uint64_t now = dev_.clock.fetch_add(1, std::memory_order_relaxed) + 1;
        const std::uint64_t previous_use = slot.last_use.load(std::memory_order_relaxed);
        pin.reuse_interval.store(previous_use != 0 && previous_use < now ? now - previous_use : 0,
                                 std::memory_order_relaxed);
        pin.last_use.store(now, std::memory_order_relaxed);
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

}  // namespace odp::detail
