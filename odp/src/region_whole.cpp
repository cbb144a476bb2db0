// Pinned and native regions: one registration of the whole range, made when
// the region is created, and leases of it.
//
// Concurrency contract: whole_ is written once, by create() before the core
// is shared, and never changes. A lease is one CAS on its pin's state (no
// lock); close() marks the pin stale and the last lease deregisters it
// (region_pins.cpp). The budget (pinned mode) is reserved under the device
// mutex, which register_whole() holds throughout.
#include <infiniband/verbs.h>

#include <algorithm>

#include "region_core.hpp"

namespace odp::detail {

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
    pin.pinned_bytes.store(bytes, std::memory_order_relaxed);
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

}  // namespace odp::detail
