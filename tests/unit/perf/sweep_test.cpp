// Sweep sizes and work requests in flight within the pinned budget.
#include "sweep.hpp"

#include <gtest/gtest.h>

namespace odp_perf {
namespace {

constexpr std::uint64_t MiB = std::uint64_t{1} << 20;

TEST(Sweep, RunsFromTwoBytesToEightMiBWhenTheBudgetAllows) {
    const Sweep sweep = sweep_sizes(1024 * MiB);
    ASSERT_EQ(sweep.sizes.size(), 23U);
    EXPECT_EQ(sweep.sizes.front(), 2U);
    EXPECT_EQ(sweep.sizes.back(), 8 * MiB);
    for (std::size_t i = 1; i < sweep.sizes.size(); ++i) {
        EXPECT_EQ(sweep.sizes[i], 2 * sweep.sizes[i - 1]);
    }
    EXPECT_EQ(sweep.left_out_from, 0U);
}

TEST(Sweep, StopsAtHalfTheBudgetAndSaysWhereItStopped) {
    const Sweep sweep = sweep_sizes(8 * MiB);  // Debian's default RLIMIT_MEMLOCK
    EXPECT_EQ(sweep.sizes.back(), 4 * MiB);
    EXPECT_EQ(sweep.left_out_from, 8 * MiB);
    const Sweep odd = sweep_sizes(6 * MiB);  // half is 3 MiB: the power of two below
    EXPECT_EQ(odd.sizes.back(), 2 * MiB);
    EXPECT_EQ(odd.left_out_from, 4 * MiB);
}

TEST(Sweep, DepthKeepsBuffersWithinHalfTheBudgetAndSixtyFourMiB) {
    EXPECT_EQ(depth_within_budget(8 * MiB, 65536, 32), 32U);      // 2 MiB in flight
    EXPECT_EQ(depth_within_budget(8 * MiB, 1 * MiB, 32), 4U);     // 4 MiB = half of 8
    EXPECT_EQ(depth_within_budget(8 * MiB, 3 * MiB, 32), 1U);     // 4 MiB buffers, never 0
    EXPECT_EQ(depth_within_budget(1024 * MiB, 8 * MiB, 32), 8U);  // 64 MiB cap
    EXPECT_EQ(depth_within_budget(1024 * MiB, 8, 32), 32U);       // never above the asked depth
}

}  // namespace
}  // namespace odp_perf
