// compare's rows are made of several rounds per mode: how they add up.
#include <gtest/gtest.h>

#include <vector>

#include "compare.hpp"

namespace odp_perf {
namespace {

ClientResult round_of(std::uint64_t operations, std::uint64_t bytes, double seconds,
                      std::vector<double> samples) {
    ClientResult result;
    result.local_mode = odp::Mode::Emulated;
    result.server_mode = odp::Mode::Emulated;
    result.operations = operations;
    result.bytes = bytes;
    result.seconds = seconds;
    result.latency_samples_us = std::move(samples);
    return result;
}

TEST(CompareRows, BandwidthIsAllBytesOverAllTime) {
    // 1 MiB in 1 s, then 3 MiB in 0.5 s: 4 MiB in 1.5 s, not the mean of
    // the two rates (3.5 MiB/s).
    const std::vector<ClientResult> rounds{round_of(16, 1 << 20, 1.0, {}),
                                           round_of(48, 3 << 20, 0.5, {})};
    const Row row = row_from_rounds(rounds, oob::TestKind::Write, 65536);
    EXPECT_EQ(row.mode, "emulated");
    EXPECT_EQ(row.server_mode, "emulated");
    EXPECT_EQ(row.test, "write");
    EXPECT_EQ(row.size, 65536U);
    EXPECT_EQ(row.iterations, 64U);
    ASSERT_TRUE(row.bw_MBps);
    EXPECT_DOUBLE_EQ(*row.bw_MBps, 4.0 / 1.5);
    EXPECT_FALSE(row.lat_us_p50) << "no latency phase, no latency";
}

TEST(CompareRows, LatencyPercentilesAreOverEverySample) {
    // Round one is slow (a disturbed host), round two fast: the p50 of the
    // pooled samples lies between, the p99 comes from the slow round.
    std::vector<double> slow(100, 90.0);
    std::vector<double> fast(300, 40.0);
    const std::vector<ClientResult> rounds{round_of(10, 80, 0.5, slow),
                                           round_of(10, 80, 0.5, fast)};
    const Row row = row_from_rounds(rounds, oob::TestKind::Write, 8);
    ASSERT_TRUE(row.lat_us_p50 && row.lat_us_p99);
    EXPECT_DOUBLE_EQ(*row.lat_us_p50, 40.0);
    EXPECT_DOUBLE_EQ(*row.lat_us_p99, 90.0);
}

TEST(CompareRows, CountsAddUpAndThePeakIsTheHighest) {
    ClientResult one = round_of(1, 8, 1.0, {5.0});
    one.local_stats.chunk_faults = 2;
    one.local_stats.peak_pinned_bytes = 4096;
    one.local_stats.invalidations[static_cast<std::size_t>(odp::InvalidationReason::Unmap)] = 3;
    one.server_report.faults = 1;
    one.server_report.invalidations = 1;
    one.server_report.pinned_bytes_peak = 8192;
    one.verified_bytes = 100;
    one.mismatched_bytes = 1;
    ClientResult two = round_of(1, 8, 1.0, {6.0});
    two.local_stats.chunk_faults = 2;
    two.local_stats.peak_pinned_bytes = 2 << 20;
    two.server_report.pinned_bytes_peak = 4096;
    two.verified_bytes = 50;
    const Row row = row_from_rounds({one, two}, oob::TestKind::Send, 8);
    EXPECT_EQ(row.test, "send");
    EXPECT_EQ(row.faults, 5U);
    EXPECT_EQ(row.invalidations, 4U);
    EXPECT_EQ(row.pinned_bytes_peak, 2U << 20);
    EXPECT_EQ(row.verified_bytes, 150U);
    EXPECT_EQ(row.mismatched_bytes, 1U) << "a wrong byte in any round shows in the row";
}

}  // namespace
}  // namespace odp_perf
