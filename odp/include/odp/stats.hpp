// Statistics of a region (Region::stats) and of a device in total (Device::stats).
#pragma once

#include <odp/export.h>

#include <array>
#include <cstdint>
#include <iosfwd>
#include <odp/types.hpp>
#include <string>

namespace odp {

struct ODP_API Stats {
    std::uint64_t hits = 0;              // translate chunk lookups served from the table
    std::uint64_t misses = 0;            // lookups that took the slow path
    std::uint64_t chunk_faults = 0;      // chunks registered on demand (emulated)
    std::uint64_t bytes_registered = 0;  // cumulative bytes handed to ibv_reg_mr
    std::uint64_t prefetches = 0;        // prefetch() calls that did work
    std::uint64_t chunks_faulted_ahead =
        0;  // registered in the background (fault-ahead, async prefetch)
    std::uint64_t fault_ahead_hits = 0;  // of those, chunks a lease used afterwards
    // Invalidation events received, by InvalidationReason (index = enum value).
    std::array<std::uint64_t, invalidation_reason_count> invalidations{};
    std::uint64_t chunks_invalidated = 0;  // registered chunks turned stale by events
    std::uint64_t stale_while_leased = 0;  // of those, chunks that were leased at the time
    std::uint64_t evictions = 0;           // chunks deregistered to stay in the budget
    std::uint64_t back_pressure = 0;       // reservations refused: budget full or too small
    std::uint64_t pinned_bytes = 0;        // registered (pinned) now
    std::uint64_t peak_pinned_bytes = 0;   // highest pinned_bytes seen

    [[nodiscard]] std::uint64_t invalidations_of(InvalidationReason reason) const noexcept {
        return invalidations[static_cast<std::size_t>(reason)];
    }
    [[nodiscard]] std::uint64_t total_invalidations() const noexcept;
    friend bool operator==(const Stats&, const Stats&) = default;
};

// One "name value" line per field, zero invalidation reasons left out.
[[nodiscard]] ODP_API std::string to_string(const Stats& stats);
// {"hits":1,...,"invalidations":{"unmap":0,...},...}
[[nodiscard]] ODP_API std::string to_json(const Stats& stats);
ODP_API std::ostream& operator<<(std::ostream& out, const Stats& stats);

}  // namespace odp
