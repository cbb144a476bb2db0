// Message sizes and work requests in flight for sweeps (client and compare).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

namespace odp_perf {

// Bytes of message buffers a sweep keeps in flight at most: the compare
// server's --max-buffer, and plenty to fill a link.
inline constexpr std::uint64_t kSweepInFlightMax = std::uint64_t{64} << 20;

struct Sweep {
    std::vector<std::uint64_t> sizes;
    std::uint64_t left_out_from = 0;  // the smallest size left out (0: none)
};

// Powers of two from 2 B up to 8 MiB, as perftest's -a, but never above half
// of the pinned budget: pinned and emulated buffers count against it, and a
// message must fit with another in flight.
inline Sweep sweep_sizes(std::uint64_t max_pinned_bytes) {
    constexpr std::uint64_t largest = std::uint64_t{8} << 20;
    const std::uint64_t cap = std::min(largest, std::bit_floor(max_pinned_bytes / 2));
    Sweep sweep;
    for (std::uint64_t size = 2; size <= cap; size *= 2) {
        sweep.sizes.push_back(size);
    }
    sweep.left_out_from = cap < largest ? std::max<std::uint64_t>(cap * 2, 2) : 0;
    return sweep;
}

// Work requests in flight for messages of `size`: `depth`, fewer when their
// buffers (a power of two each) would take more than half of the pinned
// budget or kSweepInFlightMax; at least 1.
inline std::uint32_t depth_within_budget(std::uint64_t max_pinned_bytes, std::uint64_t size,
                                         std::uint32_t depth) {
    const std::uint64_t stride = std::bit_ceil(std::max<std::uint64_t>(size, 1));
    const std::uint64_t in_flight = std::min(max_pinned_bytes / 2, kSweepInFlightMax);
    return static_cast<std::uint32_t>(std::clamp<std::uint64_t>(in_flight / stride, 1, depth));
}

}  // namespace odp_perf
