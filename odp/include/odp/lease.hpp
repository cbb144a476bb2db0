// Leases: what a work request holds while the NIC may touch memory.
#pragma once

#include <infiniband/verbs.h>
#include <odp/export.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <odp/types.hpp>
#include <span>
#include <vector>

namespace odp {

namespace detail {
class RegionCore;
struct Pin;
struct ExposureState;
}  // namespace detail

// The scatter/gather list of a translated range and the right to use it.
//
// While a Lease is held, the registrations behind its SGEs stay registered
// (they are not evicted, and an invalidation only marks them stale), and its
// region, device and mirror stay alive even if their handles are dropped.
// Release it when the work request that uses the SGEs has completed.
// Move-only; the destructor releases.
class ODP_API Lease {
  public:
    static constexpr std::size_t inline_capacity = 4;  // SGEs stored without allocating

    Lease() noexcept = default;
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() {
        if (core_ != nullptr) {
            release();
        }
    }

    // One SGE per chunk (emulated) or per GiB (pinned, native), in address order.
    [[nodiscard]] std::span<const ibv_sge> sges() const noexcept {
        return {sge_data(), sge_count_};
    }
    // The remote key registered for each SGE (same order), for a peer.
    [[nodiscard]] std::span<const std::uint32_t> rkeys() const noexcept {
        return {rkey_data(), sge_count_};
    }
    // Bytes covered (the translated length).
    [[nodiscard]] std::size_t length() const noexcept;
    [[nodiscard]] bool held() const noexcept { return core_ != nullptr; }

    // Gives the lease back. Returns true if the memory under one of its chunks
    // was invalidated while leased (a work request may have moved data to or
    // from the old pages; chunk granularity, so it can be a false alarm). A
    // change whose event the mirror recorded but has not delivered yet (a
    // munmap that returned before this call) is waited for and reported: a
    // few atomic loads when none is pending, otherwise Mirror::synchronize()
    // (so do not release while holding a lock an exposure callback takes).
    // Idempotent: false when not held.
    bool release() noexcept;

  private:
    friend class detail::RegionCore;
    friend class Exposure;

    // Inline: these run on the hit path.
    void begin(detail::RegionCore* core, std::size_t sge_count, std::size_t pin_count) {
        core_ = core;
        if (sge_count > inline_capacity || pin_count > inline_capacity) [[unlikely]] {
            allocate(sge_count, pin_count);
        }
    }
    void allocate(std::size_t sge_count, std::size_t pin_count);
    void add_sge(std::uint64_t address, std::uint32_t length, std::uint32_t lkey,
                 std::uint32_t rkey) noexcept {
        sge_data()[sge_count_] = ibv_sge{address, length, lkey};
        rkey_data()[sge_count_] = rkey;
        ++sge_count_;
    }
    void add_pin(detail::Pin* pin) noexcept { pin_data()[pin_count_++] = pin; }
    [[nodiscard]] ibv_sge* sge_data() noexcept {
        return heap_ ? heap_sges_.get() : inline_sges_.data();
    }
    [[nodiscard]] const ibv_sge* sge_data() const noexcept {
        return heap_ ? heap_sges_.get() : inline_sges_.data();
    }
    [[nodiscard]] std::uint32_t* rkey_data() noexcept {
        return heap_ ? heap_rkeys_.get() : inline_rkeys_.data();
    }
    [[nodiscard]] const std::uint32_t* rkey_data() const noexcept {
        return heap_ ? heap_rkeys_.get() : inline_rkeys_.data();
    }
    [[nodiscard]] detail::Pin** pin_data() noexcept {
        return heap_ ? heap_pins_.get() : inline_pins_.data();
    }

    detail::RegionCore* core_ = nullptr;
    std::uint32_t sge_count_ = 0;
    std::uint32_t pin_count_ = 0;
    bool heap_ = false;
    // Left uninitialised (the hit path does not pay for zeroing them): only
    // the first sge_count_ / pin_count_ entries are ever read or copied.
    std::array<ibv_sge, inline_capacity> inline_sges_;
    std::array<std::uint32_t, inline_capacity> inline_rkeys_;
    std::array<detail::Pin*, inline_capacity> inline_pins_;
    std::unique_ptr<ibv_sge[]> heap_sges_;
    std::unique_ptr<std::uint32_t[]> heap_rkeys_;
    std::unique_ptr<detail::Pin*[]> heap_pins_;
};

// What a peer needs to access one piece of an exposed range.
struct RemoteSegment {
    std::uint64_t address = 0;
    std::uint32_t length = 0;
    std::uint32_t rkey = 0;
    friend bool operator==(const RemoteSegment&, const RemoteSegment&) = default;
};

// Called once, on the mirror's reader thread, as soon as the mapping under an
// exposed range changes (`changed` is the event's range, `reason` why); this
// may be before expose() returns. Must not block; may call Exposure::release().
using ExposureCallback = std::function<void(Range changed, InvalidationReason reason)>;

// A range registered and leased for remote access (Region::expose). A peer may
// read/write the segments until it is released. If the mapping under the range
// changes while exposed, a peer's writes may land in the old pages: release()
// then returns true and the callback (if any) fires at once. Move-only; the
// destructor releases.
class ODP_API Exposure {
  public:
    Exposure() noexcept;
    Exposure(Exposure&& other) noexcept;
    Exposure& operator=(Exposure&& other) noexcept;
    Exposure(const Exposure&) = delete;
    Exposure& operator=(const Exposure&) = delete;
    ~Exposure();

    [[nodiscard]] std::span<const RemoteSegment> segments() const noexcept { return segments_; }
    [[nodiscard]] const Lease& lease() const noexcept { return lease_; }
    [[nodiscard]] Range range() const noexcept { return range_; }
    [[nodiscard]] bool held() const noexcept { return lease_.held(); }
    // True once the mapping under the exposed range has changed.
    [[nodiscard]] bool changed() const noexcept;
    // Ends the exposure; true if the mapping under the range changed while it
    // was exposed (the data a peer moved is not in the current mapping). Like
    // Lease::release(), first waits for events recorded but not delivered
    // (their callback runs before it returns). After it returns the callback
    // no longer runs. Idempotent.
    bool release() noexcept;

  private:
    friend class detail::RegionCore;

    Lease lease_;
    Range range_;
    std::vector<RemoteSegment> segments_;
    std::shared_ptr<detail::ExposureState> state_;
};

}  // namespace odp
