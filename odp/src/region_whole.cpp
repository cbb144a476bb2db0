// Pinned and native regions: one registration of the whole range, made when
// the region is created, and leases of it.
//
// Concurrency contract: whole_ is written once, by create() before the core
// is shared, and never changes. A lease is one CAS on its pin's state (no
// lock); close() marks the pin stale and the last lease deregisters it
// (region_pins.cpp). The budget (pinned mode) is reserved under the device
// mutex and the registration runs outside it: registrations of regions of
// one device proceed in parallel.
#include <infiniband/verbs.h>

#include <algorithm>

#include "region_core.hpp"

namespace odp::detail {

void RegionCore::register_whole() {
    const Range range = config_.range;
    const std::uint64_t max_mr_size = device_->caps().max_mr_size;
    if (!config_.implicit && max_mr_size != 0 && range.length() > max_mr_size) {
        throw_error(E2BIG, what("register", range) + ": " + std::string(device_->name()) +
                               " registers at most " + format_bytes(max_mr_size) +
                               " per memory region (max_mr_size): register smaller regions, or "
                               "use Mode::Emulated (it registers chunks)");
    }
    int flags = to_ibv_access(config_.access);
    const std::uint64_t bytes = config_.mode == Mode::Pinned ? page_rounded(range) : 0;
    Pin* pin = nullptr;
    {
        // The budget is reserved, and counted as a pinned region's, before
        // the registration: a concurrent reservation sees it. The
        // registration itself runs unlocked, so that pinned regions register
        // in parallel as emulated chunks do.
        const std::unique_lock lock(dev_.mutex);
        pin = &allocate_pin_locked();
        pin->chunk = Pin::whole_region;
        if (bytes != 0) {
            try {
                dev_.reserve_locked(bytes, *this, "register", range);
            } catch (...) {
                return_unused_pin_locked(*pin);
                throw;
            }
            dev_.pinned_regions.fetch_add(bytes, std::memory_order_relaxed);
        }
    }
    if (config_.mode != Mode::Pinned) {
        flags |= IBV_ACCESS_ON_DEMAND;
    }
    try {
        const NicMr mr = config_.implicit
                             ? dev_.nic->register_memory(0, SIZE_MAX, flags)
                             : dev_.nic->register_memory(range.begin, range.length(), flags);
        pin->pieces.push_back(Piece{range, mr});
    } catch (...) {
        const std::unique_lock lock(dev_.mutex);
        dev_.pinned_regions.fetch_sub(bytes, std::memory_order_relaxed);
        dev_.unreserve(bytes);
        return_unused_pin_locked(*pin);
        throw;
    }
    pin->pinned_bytes.store(bytes, std::memory_order_relaxed);
    note_pinned(bytes);
    bytes_registered_.fetch_add(config_.implicit ? 0 : range.length(), std::memory_order_relaxed);
    pin->state.store(((pin->state.load(std::memory_order_relaxed) & ~(Pin::incarnation_unit - 1)) +
                      Pin::incarnation_unit),
                     std::memory_order_release);
    whole_ = pin;
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

}  // namespace odp::detail
