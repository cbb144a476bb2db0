// Fault-ahead and prefetch: chunks registered before they are needed.
//
// Concurrency contract:
//  * The pattern detector is one relaxed atomic (last_demand_fault_), read
//    and written by the threads that fault; a lost update only costs a
//    request or a missed one (speculation, never correctness).
//  * The window is refilled in batches: a request is made only when at most
//    half of it is registered (present(), lock-free), for all of it.
//  * Requests are queued under the device mutex to the device's one
//    fault-ahead thread (DeviceState, device.cpp), which runs them as
//    FaultKind::Ahead faults through the normal fault path: same claims,
//    same budget, no eviction of a chunk faulted ahead and not yet used,
//    and none of a leased one. A region's requests are dropped by close(),
//    which waits for the one running.
//  * ahead_bit on a pin (set at publication) is cleared by its first lease
//    with one fetch_and; whoever clears it counts the hit and moves the
//    window on.
#include <infiniband/verbs.h>

#include <algorithm>

#include "region_core.hpp"

namespace odp::detail {

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
    // The window is refilled in batches, as the page cache's readahead is:
    // waking the thread is a system call in the data path (60 to 250 us in
    // an emulated guest, docs/results/goals.md), so while more than half of
    // the window is registered already, nothing is requested (lock-free).
    const std::size_t end = std::min(chunk_count_, chunk + 1 + config_.fault_ahead);
    std::size_t ready = 0;
    while (chunk + 1 + ready < end && present(chunk + 1 + ready)) {
        ++ready;
    }
    if (chunk + 1 + ready == end || ready > config_.fault_ahead / 2) {
        return;
    }
    try {
        const std::scoped_lock lock(dev_.mutex);
        if (closed_) {
            return;
        }
        for (std::size_t next = chunk + 1 + ready; next < end; ++next) {
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

}  // namespace odp::detail
