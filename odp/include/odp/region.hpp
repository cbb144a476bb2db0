// Regions: registered memory in one of three modes, used through Leases.
#pragma once

#include <odp/export.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <odp/lease.hpp>
#include <odp/listener.hpp>
#include <odp/mirror.hpp>
#include <odp/stats.hpp>
#include <odp/types.hpp>
#include <string>
#include <vector>

namespace odp {

namespace detail {
class RegionCore;
}

struct RegionOptions {
    Mode mode = Mode::Auto;
    // Emulated mode: size of the aligned chunks registered on demand; a power
    // of two, at least the page size.
    std::size_t chunk_size = std::size_t{2} << 20;
    // Emulated mode: which invalidation source the per-process Mirror uses
    // (Mirror::acquire). None: no Mirror at all; the application promises
    // never to change the mapping under the region (or calls invalidate()).
    MonitorKind monitor = MonitorKind::Auto;
    // Emulated mode: use this Mirror instead of acquiring one (e.g. a Fake
    // one in tests). Overrides `monitor`.
    std::shared_ptr<Mirror> mirror;
    // Emulated mode: when chunks are faulted in address order, register up to
    // this many chunks beyond the last one used in the background, before
    // they are needed (within the budget; never evicting a leased chunk or
    // another faulted-ahead one; it stops when the pattern stops). Refilled
    // in batches: once at most half of them are registered. 0: off.
    std::size_t fault_ahead = 0;
};

inline constexpr std::size_t unlimited_sges = std::numeric_limits<std::size_t>::max();

// A registered range of memory (Device::register_region / register_address_space).
// Move-only handle; destroying it deregisters what no Lease holds and defers
// the rest until the last Lease is released. Thread-safe: any number of
// threads may translate, expose, prefetch and release at once.
class ODP_API Region {
  public:
    Region() noexcept = default;
    Region(Region&& other) noexcept;
    Region& operator=(Region&& other) noexcept;
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;
    ~Region();

    [[nodiscard]] explicit operator bool() const noexcept { return core_ != nullptr; }
    // The mode in use (never Auto: Auto has been resolved).
    [[nodiscard]] Mode mode() const;
    [[nodiscard]] Range range() const;
    [[nodiscard]] Access access() const;
    [[nodiscard]] std::size_t chunk_size() const;  // emulated; the region length otherwise
    [[nodiscard]] bool implicit() const;           // register_address_space()
    // Which invalidation source watches the region: "odp_mirror module",
    // "userfaultfd", "none (...)", or "not needed (native)"/"(pinned: not coherent)".
    // Parts it cannot watch are summed up in one line (counts by kind, the
    // first few ranges); unwatched() lists every one with its reason.
    [[nodiscard]] std::string monitor() const;
    // Emulated regions: the parts of the range the invalidation source could
    // not watch when the region was registered (file mappings, System V
    // shared memory... for userfaultfd), each with the reason. Chunks there
    // are never pinned whole: a translate inside one throws the reason.
    [[nodiscard]] std::vector<Unwatched> unwatched() const;
    // "emulated, 2 MiB chunks, [0x7f.., 0x7f..) on rxe0, monitor userfaultfd"
    [[nodiscard]] std::string describe() const;

    // Translates [address, address + length) into SGEs (emulated: one per chunk,
    // registering missing chunks) and leases them. Throws odp::Error: EINVAL
    // (bad range or outside the region), E2BIG (needs more than max_sge SGEs),
    // EFAULT (memory not mapped), BackPressure/EAGAIN (pinned budget full;
    // releasing leases makes room), ENOBUFS (the chunks can never fit the
    // budget beside the pinned regions: refused before registering anything),
    // or the NIC's error.
    [[nodiscard]] Lease translate(const void* address, std::size_t length,
                                  std::size_t max_sge = unlimited_sges);
    [[nodiscard]] Lease translate(std::uintptr_t address, std::size_t length,
                                  std::size_t max_sge = unlimited_sges);

    // Registers and leases the range for a peer and returns its segments.
    // Needs remote access (EACCES otherwise).
    [[nodiscard]] Exposure expose(const void* address, std::size_t length,
                                  ExposureCallback on_change = {});

    // Native: ibv_advise_mr (EOPNOTSUPP if the device cannot); emulated:
    // registers the chunks now (without leasing them); pinned: nothing to do.
    void prefetch(const void* address, std::size_t length, Prefetch advice = Prefetch::Write);
    // The same without waiting: emulated, the chunks are queued for the
    // device's background thread (registered within the budget, never
    // evicting a leased chunk; failures are only counted as missing
    // chunks_faulted_ahead); native: as prefetch(); pinned: nothing.
    void prefetch_async(const void* address, std::size_t length, Prefetch advice = Prefetch::Write);

    // Deregisters chunks that were invalidated and are no longer leased now,
    // instead of at the next slow-path call (they keep old pages pinned).
    void collect();

    [[nodiscard]] Stats stats() const;

    // Invalidation entry points (what the Mirror calls through the listener);
    // public for applications that know their mapping changed.
    void invalidate(Range range, InvalidationReason reason) noexcept;
    void invalidate_all(InvalidationReason reason) noexcept;
    // The listener to pass to Mirror::watch (emulated regions).
    [[nodiscard]] InvalidationListener& listener() const;

  private:
    friend class Device;
    explicit Region(detail::RegionCore* core) noexcept : core_(core) {}
    [[nodiscard]] detail::RegionCore& core() const;

    detail::RegionCore* core_ = nullptr;
};

}  // namespace odp
