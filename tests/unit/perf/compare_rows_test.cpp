// compare's rows are made of several rounds per mode: how they add up.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/fake_nic.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
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

TEST(CompareRows, EachRoundKeepsItsOwnBandwidthAndMedian) {
    const std::vector<ClientResult> rounds{round_of(16, 1 << 20, 1.0, {10.0, 20.0, 30.0}),
                                           round_of(48, 3 << 20, 0.5, {5.0, 6.0, 7.0})};
    const Row row = row_from_rounds(rounds, oob::TestKind::Write, 65536);
    EXPECT_EQ(row.round_bw_MBps, (std::vector<double>{1.0, 6.0}));
    EXPECT_EQ(row.round_lat_us_p50, (std::vector<double>{20.0, 6.0}));
}

TEST(Spread, PairedRatiosSkipUnpairedAndZeroDenominators) {
    const std::vector<double> emulated{9.0, 10.0, 12.0, 5.0};
    const std::vector<double> pinned{10.0, 10.0, 10.0, 0.0, 99.0};  // the 5th has no partner
    EXPECT_EQ(paired_ratios(emulated, pinned), (std::vector<double>{0.9, 1.0, 1.2}));
}

TEST(Spread, MedianOfOddEvenAndNonFiniteSamples) {
    EXPECT_EQ(median({3.0, 1.0, 2.0}), 2.0);
    EXPECT_EQ(median({4.0, 1.0, 2.0, 3.0}), 2.5);
    EXPECT_EQ(median({1.0, std::nan(""), 3.0}), 2.0) << "NaN is no sample";
    EXPECT_FALSE(median({}));
}

// The sign test's interval: with n samples, [x(k), x(n+1-k)] holds the
// median with probability 1 - 2 P(Binomial(n, 1/2) < k).
TEST(Spread, FewSamplesGiveTheirRangeWithItsConfidence) {
    const std::optional<Interval> four = median_interval({1.02, 0.95, 1.10, 0.99});
    ASSERT_TRUE(four);
    EXPECT_DOUBLE_EQ(four->low, 0.95);
    EXPECT_DOUBLE_EQ(four->high, 1.10);
    EXPECT_EQ(four->samples, 4U);
    EXPECT_DOUBLE_EQ(four->confidence, 1 - 2.0 / 16) << "87.5%: every sample on one side";
    const std::optional<Interval> two = median_interval({2.0, 1.0});
    ASSERT_TRUE(two);
    EXPECT_DOUBLE_EQ(two->confidence, 0.5);
    EXPECT_DOUBLE_EQ(median_interval({1, 2, 3, 4, 5, 6})->confidence, 1 - 2.0 / 64)
        << "6 samples: the fewest whose range reaches 95%";
}

TEST(Spread, ManySamplesDropTheirOutliers) {
    // 12 samples (three runs of four rounds): k = 3, P(B < 3) = 79/4096, so
    // the 3rd lowest to the 3rd highest at 96.1%; k = 4 would be 85.4%.
    std::vector<double> samples{0.5, 0.97, 0.98, 0.99, 1.0, 1.0, 1.01, 1.01, 1.02, 1.03, 1.04, 9.0};
    std::reverse(samples.begin(), samples.end());  // order does not matter
    const std::optional<Interval> interval = median_interval(samples);
    ASSERT_TRUE(interval);
    EXPECT_DOUBLE_EQ(interval->low, 0.98);
    EXPECT_DOUBLE_EQ(interval->high, 1.03);
    EXPECT_NEAR(interval->confidence, 1 - 2 * 79.0 / 4096, 1e-12);
    EXPECT_GE(interval->confidence, kWantedConfidence);
    // A thousand samples: no underflow, and the interval is narrow.
    std::vector<double> many;
    for (int i = 0; i < 1000; ++i) {
        many.push_back(1.0 + (i % 100) / 1000.0);
    }
    const std::optional<Interval> narrow = median_interval(many);
    ASSERT_TRUE(narrow);
    EXPECT_GE(narrow->confidence, kWantedConfidence);
    EXPECT_LT(narrow->confidence, 0.97);
    EXPECT_LE(narrow->high - narrow->low, 0.01);
}

TEST(Spread, OneUsablePairHasNoInterval) {
    EXPECT_FALSE(median_interval({1.0}));
    EXPECT_FALSE(median_interval({1.0, std::nan("")}));
    const std::vector<double> one{1.0};
    const std::vector<double> two{2.0};
    const std::optional<RatioEstimate> estimate = estimate_ratio({1.5, one}, {3.0, two});
    ASSERT_TRUE(estimate);
    EXPECT_DOUBLE_EQ(estimate->ratio, 0.5) << "the values' ratio, not the pair's";
    EXPECT_FALSE(estimate->interval);
    EXPECT_FALSE(estimate_ratio({1.0, one}, {0.0, two})) << "no ratio to zero";
    EXPECT_FALSE(estimate_ratio({std::nullopt, one}, {1.0, two}));
}

TEST(Spread, RatioIsTheMedianOfThePairs) {
    const std::vector<double> emulated{96, 100, 104, 80};
    const std::vector<double> pinned{100, 100, 100, 100};
    const std::optional<RatioEstimate> estimate = estimate_ratio({95.0, emulated}, {100.0, pinned});
    ASSERT_TRUE(estimate && estimate->interval);
    EXPECT_NEAR(estimate->ratio, 0.98, 1e-12) << "median of 0.96, 1.0, 1.04, 0.8";
    EXPECT_DOUBLE_EQ(estimate->interval->low, 0.8);
    EXPECT_DOUBLE_EQ(estimate->interval->high, 1.04);
}

// Crafted intervals against a target: met only when all of it clears the
// target, missed when none does, inconclusive when it straddles it or when
// there is no interval at all.
TEST(Spread, AGoalIsMetOnlyWhenTheWholeIntervalClearsIt) {
    const auto at_least = [](double r) { return r >= 0.97; };
    const auto with = [](double ratio, double low, double high) {
        return std::optional(RatioEstimate{ratio, Interval{low, high, 6, 0.97}});
    };
    EXPECT_EQ(judge(with(0.99, 0.98, 1.01), at_least), Verdict::Met);
    EXPECT_EQ(judge(with(0.97, 0.97, 0.99), at_least), Verdict::Met) << "the bound itself clears";
    EXPECT_EQ(judge(with(0.99, 0.95, 1.01), at_least), Verdict::Inconclusive);
    EXPECT_EQ(judge(with(0.96, 0.95, 0.99), at_least), Verdict::Inconclusive)
        << "a ratio under the target with an interval above it still straddles";
    EXPECT_EQ(judge(with(0.90, 0.85, 0.96), at_least), Verdict::NotMet);
    EXPECT_EQ(judge(std::optional(RatioEstimate{1.5, std::nullopt}), at_least),
              Verdict::Inconclusive)
        << "one round: far above the target, yet nothing is known of its spread";
    EXPECT_EQ(judge(std::nullopt, at_least), Verdict::NotMeasured);
    // Clearing the target in every one of two rounds: 50% sure, no verdict.
    EXPECT_EQ(judge(std::optional(RatioEstimate{1.2, Interval{1.1, 1.3, 2, 0.5}}), at_least),
              Verdict::Inconclusive);
    EXPECT_EQ(judge(std::optional(RatioEstimate{0.5, Interval{0.4, 0.6, 4, 0.875}}), at_least),
              Verdict::Inconclusive)
        << "four rounds, 87.5%: under the 90% a verdict needs";
    EXPECT_EQ(judge(std::optional(RatioEstimate{0.5, Interval{0.4, 0.6, 5, 0.9375}}), at_least),
              Verdict::NotMet);
    const auto at_most = [](double r) { return r <= 1.05; };
    EXPECT_EQ(judge(with(1.0, 0.9, 1.1), at_most), Verdict::Inconclusive);
    EXPECT_EQ(judge(with(1.0, 0.9, 1.04), at_most), Verdict::Met);
    EXPECT_EQ(judge(with(1.2, 1.06, 1.3), at_most), Verdict::NotMet);
    EXPECT_EQ(to_string(Verdict::Inconclusive), "inconclusive");
    EXPECT_EQ(to_string(Verdict::NotMet), "not met");
}

Row traffic_row(const std::string& mode, const std::string& test, std::uint64_t size,
                std::vector<double> bw, std::vector<double> p50) {
    Row row;
    row.mode = mode;
    row.test = test;
    row.size = size;
    double bw_sum = 0;
    for (const double value : bw) {
        bw_sum += value;
    }
    row.bw_MBps = bw_sum / static_cast<double>(bw.size());
    row.lat_us_p50 = p50.front();
    row.round_bw_MBps = std::move(bw);
    row.round_lat_us_p50 = std::move(p50);
    return row;
}

const Goal& goal_named(const std::vector<Goal>& goals, const std::string& prefix) {
    for (const Goal& goal : goals) {
        if (goal.name.starts_with(prefix)) {
            return goal;
        }
    }
    throw std::runtime_error("no goal " + prefix);
}

TEST(CompareGoals, BandwidthGoalCarriesTheRangeOfItsRounds) {
    // Emulated against pinned, round by round: 0.96, 1.0, 1.04, 1.0. The
    // pooled ratio (1.0) clears 0.97, one round does not: inconclusive.
    const std::vector<Row> rows{
        traffic_row("pinned", "write", 65536, {100, 100, 100, 100}, {10}),
        traffic_row("emulated", "write", 65536, {96, 100, 104, 100}, {10}),
        traffic_row("pinned", "write", 8, {1}, {10, 10, 10, 10, 10, 10}),
        traffic_row("emulated", "write", 8, {1}, {10, 10.2, 10.1, 10, 10.1, 10})};
    const std::vector<Goal> goals = evaluate_goals(rows);
    const Goal& bandwidth =
        goal_named(goals, "warm RDMA WRITE bandwidth 64 KiB: emulated / pinned");
    ASSERT_TRUE(bandwidth.measured && bandwidth.measured->interval);
    EXPECT_DOUBLE_EQ(bandwidth.measured->ratio, 1.0);
    EXPECT_DOUBLE_EQ(bandwidth.measured->interval->low, 0.96);
    EXPECT_DOUBLE_EQ(bandwidth.measured->interval->high, 1.04);
    EXPECT_EQ(bandwidth.verdict, Verdict::Inconclusive);
    const Goal& latency = goal_named(goals, "RDMA WRITE latency p50 8 B");
    ASSERT_TRUE(latency.measured && latency.measured->interval);
    EXPECT_EQ(latency.verdict, Verdict::Met);
    EXPECT_DOUBLE_EQ(latency.measured->interval->high, 1.02);
    const Goal& touch = goal_named(goals, "first touch");
    EXPECT_EQ(touch.verdict, Verdict::NotMeasured);
}

TEST(CompareGoals, FirstTouchPairsColdStartsInOrder) {
    Row emulated;
    emulated.mode = "emulated";
    emulated.test = "first_touch";
    emulated.size = 2 << 20;
    emulated.first_touch_us = 110;
    emulated.first_touch_us_samples = {100, 110, 130};
    Row pinned = emulated;
    pinned.mode = "pinned";
    pinned.first_touch_us.reset();
    pinned.reg_us = 100;
    pinned.reg_us_samples = {100, 100, 100};
    const std::vector<Goal> goals = evaluate_goals({emulated, pinned});
    const Goal& touch = goal_named(goals, "first touch");
    ASSERT_TRUE(touch.measured && touch.measured->interval);
    EXPECT_DOUBLE_EQ(touch.measured->ratio, 1.1);
    EXPECT_DOUBLE_EQ(touch.measured->interval->low, 1.0);
    EXPECT_DOUBLE_EQ(touch.measured->interval->high, 1.3);
    EXPECT_EQ(touch.verdict, Verdict::Inconclusive) << "1.1 is under 1.2, 1.3 is not";
}

TEST(CompareJson, GoalsCarryTheirRangeAndVerdict) {
    CompareResult result;
    result.rows = {traffic_row("pinned", "write", 65536, {100, 100, 100, 100, 100, 100}, {10}),
                   traffic_row("emulated", "write", 65536, {99, 98, 99, 98, 99, 98}, {10})};
    result.goals = evaluate_goals(result.rows);
    const std::string json = to_json(result, "odp-perf compare");
    EXPECT_NE(json.find("\"round_bw_MBps\": [99, 98, 99, 98, 99, 98]"), std::string::npos) << json;
    EXPECT_NE(json.find("\"ratio\": 0.985, \"ratio_low\": 0.98, \"ratio_high\": 0.99, "
                        "\"confidence\": 0.96875, \"samples\": 6"),
              std::string::npos)
        << json;
    EXPECT_NE(json.find("\"verdict\": \"met\", \"met\": true"), std::string::npos) << json;
    // Every row carries its ratios to pinned's row of the same test and size.
    EXPECT_NE(json.find("\"to_pinned\": {\"bw_MBps\": {\"ratio\": 0.985, \"low\": 0.98, "
                        "\"high\": 0.99, \"confidence\": 0.96875, \"samples\": 6}, "
                        "\"lat_us_p50\": {\"ratio\": 1, \"low\": null, \"high\": null, "
                        "\"confidence\": null, \"samples\": 0}, \"reg_us\": null}"),
              std::string::npos)
        << json;
    EXPECT_NE(json.find("\"to_pinned\": {\"bw_MBps\": null, \"lat_us_p50\": null, "
                        "\"reg_us\": null}"),
              std::string::npos)
        << "pinned's own row has no ratio to itself: " << json;
}

TEST(CompareJson, TwoRoundsAreTooFewForAVerdict) {
    CompareResult result;
    result.rows = {traffic_row("pinned", "write", 65536, {100, 100}, {10}),
                   traffic_row("emulated", "write", 65536, {120, 130}, {10})};
    result.goals = evaluate_goals(result.rows);
    const Goal& bandwidth =
        goal_named(result.goals, "warm RDMA WRITE bandwidth 64 KiB: emulated / pinned");
    EXPECT_EQ(bandwidth.verdict, Verdict::Inconclusive) << "both rounds clear 0.97, at 50%";
    EXPECT_EQ(bandwidth.note,
              "too few rounds for a verdict (50% of 2; at least 5 needed: run more --rounds)");
}

TEST(CompareJson, OneRoundGoalIsInconclusiveAndSaysWhy) {
    CompareResult result;
    result.rows = {traffic_row("pinned", "write", 65536, {100}, {10}),
                   traffic_row("emulated", "write", 65536, {150}, {10})};
    result.goals = evaluate_goals(result.rows);
    const Goal& bandwidth =
        goal_named(result.goals, "warm RDMA WRITE bandwidth 64 KiB: emulated / pinned");
    EXPECT_EQ(bandwidth.verdict, Verdict::Inconclusive);
    EXPECT_EQ(bandwidth.note, "one round: no interval (run more --rounds)");
    const std::string json = to_json(result, "odp-perf compare --rounds 1");
    EXPECT_NE(json.find("\"ratio\": 1.5, \"ratio_low\": null, \"ratio_high\": null, "
                        "\"confidence\": null, \"samples\": 0"),
              std::string::npos)
        << json;
    EXPECT_NE(json.find("\"verdict\": \"inconclusive\", \"met\": false"), std::string::npos)
        << json;
}

// The plot: error bars from the rounds, sizes as people write them, and a
// row whose bytes arrived wrong is not drawn as a bar. gnuplot must draw it
// (scripts/setup installs gnuplot-nox); ODP_PLOT_KEEP=FILE keeps the picture.
// A sweep of `tests` at 8 B to 1 MiB in three modes, native's 8 B data wrong.
CompareResult sweep_result(const std::vector<const char*>& tests) {
    CompareResult result;
    result.device = "rxe0";
    result.kernel = "test";
    result.modes = {"pinned", "native", "emulated"};
    for (const std::string& mode : result.modes) {
        for (const std::uint64_t size : {8ULL, 4096ULL, 65536ULL, 1ULL << 20}) {
            for (const char* test : tests) {
                Row row = traffic_row(mode, test, size, {40, 44, 42, 43}, {20, 21, 25, 22});
                row.mismatched_bytes = mode == "native" && size == 8 ? 8 : 0;
                result.rows.push_back(row);
            }
        }
    }
    return result;
}

TEST(ComparePlot, DrawsASweepWithRangesAndWrongData) {
    CompareResult result = sweep_result({"write", "read", "send"});
    for (const std::string& mode : result.modes) {
        for (const std::uint64_t size : {4096ULL, 1ULL << 20, 1ULL << 30}) {
            Row reg;
            reg.mode = mode;
            reg.test = "register";
            reg.size = size;
            reg.reg_us = static_cast<double>(size) / 4096.0 * (mode == "pinned" ? 1.0 : 0.01);
            result.rows.push_back(reg);
        }
    }
    const char* keep = std::getenv("ODP_PLOT_KEEP");
    const std::string path =
        keep ? keep : testing::TempDir() + "compare-plot-" + std::to_string(::getpid()) + ".png";
    ASSERT_NO_THROW(plot(result, path));
    std::ifstream png(path, std::ios::binary);
    std::string magic(8, '\0');
    png.read(magic.data(), 8);
    EXPECT_EQ(magic, "\x89PNG\r\n\x1a\n");
    png.seekg(0, std::ios::end);
    EXPECT_GT(png.tellg(), 10000);
    if (!keep) {
        std::remove(path.c_str());
    }
}

// --fault-ahead reaches emulated buffers only (the option means nothing to
// pinned and native regions).
TEST(CompareVariants, FaultAheadIsForEmulatedBuffers) {
    EXPECT_EQ(region_options(odp::Mode::Emulated, 65536, 4).fault_ahead, 4U);
    EXPECT_EQ(region_options(odp::Mode::Emulated, 65536).fault_ahead, 0U);
    EXPECT_EQ(region_options(odp::Mode::Pinned, 65536, 4).fault_ahead, 0U);
    EXPECT_EQ(region_options(odp::Mode::Native, 65536, 4).fault_ahead, 0U);
    EXPECT_EQ(region_options(odp::Mode::Emulated, 4 << 20, 4).chunk_size, 4U << 20)
        << "chunks still hold a whole slot";
}

// Two invalidation sources of the emulated mode in one table: a process has
// one source at a time, so compare runs the emulated mode once per source
// (SourceKeeper switches) and labels the further source's column.
TEST(CompareVariants, EmulatedOncePerSourceTheFirstIsPlainEmulated) {
    const std::vector<ModeVariant> variants =
        mode_variants({odp::Mode::Pinned, odp::Mode::Native, odp::Mode::Emulated},
                      {odp::MonitorKind::Module, odp::MonitorKind::Userfaultfd});
    ASSERT_EQ(variants.size(), 4U);
    EXPECT_EQ(variants[0].label, "pinned");
    EXPECT_EQ(variants[1].label, "native");
    EXPECT_EQ(variants[2].label, "emulated");
    EXPECT_EQ(variants[2].source, odp::MonitorKind::Module);
    EXPECT_EQ(variants[3].label, "emulated/userfaultfd");
    EXPECT_EQ(variants[3].mode, odp::Mode::Emulated);
    EXPECT_EQ(variants[3].source, odp::MonitorKind::Userfaultfd);
}

TEST(CompareVariants, NoSourcesGiveOneEmulatedColumnWithAuto) {
    const std::vector<ModeVariant> variants =
        mode_variants({odp::Mode::Pinned, odp::Mode::Emulated}, {});
    ASSERT_EQ(variants.size(), 2U);
    EXPECT_EQ(variants[1].label, "emulated");
    EXPECT_EQ(variants[1].source, odp::MonitorKind::Auto);
}

constexpr odp::Access kTestAccess =
    odp::Access::LocalWrite | odp::Access::RemoteWrite | odp::Access::RemoteRead;

std::shared_ptr<odp::Device> fake_device(const odp::DeviceCaps& caps, const std::string& name) {
    return odp::Device::open(std::make_unique<odp::FakeNic>(caps, name));
}

// siw has no ODP: compare measures pinned and emulated and says why native
// is not there; native appears only where ODP covers every RC operation.
TEST(CompareModes, NativeIsLeftOutWithItsReason) {
    const auto siw = fake_device({}, "siw0");
    EXPECT_EQ(supported_modes(*siw, kTestAccess),
              (std::vector<odp::Mode>{odp::Mode::Pinned, odp::Mode::Emulated}));
    EXPECT_EQ(native_absence(*siw, kTestAccess), "siw0 has no native ODP (Auto picks emulated)");

    odp::DeviceCaps partial;
    partial.odp = true;
    partial.rc.send = partial.rc.recv = partial.rc.write = true;  // no RDMA READ
    const auto no_read = fake_device(partial, "odp0");
    EXPECT_EQ(supported_modes(*no_read, kTestAccess).size(), 2U);
    EXPECT_NE(native_absence(*no_read, kTestAccess).find("odp0's native ODP does not cover RC"),
              std::string::npos)
        << native_absence(*no_read, kTestAccess);

    odp::DeviceCaps full = partial;
    full.rc.read = true;
    const auto odp_device = fake_device(full, "mlx5_0");
    EXPECT_EQ(supported_modes(*odp_device, kTestAccess),
              (std::vector<odp::Mode>{odp::Mode::Pinned, odp::Mode::Native, odp::Mode::Emulated}));
    EXPECT_EQ(native_absence(*odp_device, kTestAccess), "");
}

// --cm asks for RDMA CM; an iWARP device gets it whether asked or not.
TEST(CompareConnection, RdmaCmWhenAskedAndAlwaysOnIwarp) {
    EXPECT_EQ(choose_connection(false, false), oob::Connection::Endpoints);
    EXPECT_EQ(choose_connection(true, false), oob::Connection::RdmaCm);
    EXPECT_EQ(choose_connection(false, true), oob::Connection::RdmaCm);
    EXPECT_EQ(choose_connection(true, true), oob::Connection::RdmaCm);
    EXPECT_FALSE(is_iwarp(*fake_device({}, "fake0"))) << "a fake NIC has no transport";
}

// Emulated regions registered after use(S) get S; a switch waits for the old
// source's last region and names it when it outlives the wait.
TEST(CompareSources, KeeperSwitchesTheProcesssSource) {
    const std::shared_ptr<odp::Device> device = odp::Device::open(std::make_unique<odp::FakeNic>());
    ASSERT_EQ(odp::Mirror::current(), nullptr);
    {
        SourceKeeper keeper(*device, std::chrono::milliseconds(50));
        keeper.use(odp::MonitorKind::Fake);
        ASSERT_NE(odp::Mirror::current(), nullptr);
        EXPECT_EQ(odp::Mirror::current()->kind(), odp::MonitorKind::Fake);
        EXPECT_EQ(keeper.monitor(), "fake");
        {
            // A measurement's region registered with Auto joins the source.
            const MappedBuffer buffer(page_size(), page_size(), true);
            const odp::Region region = device->register_region(
                buffer.data(), buffer.size(), odp::Access::LocalWrite, odp::Mode::Emulated);
            EXPECT_EQ(region.monitor(), "fake");
            // ...and holds it: switching now would leave it on the old one.
            try {
                keeper.use(odp::MonitorKind::None);
                ADD_FAILURE() << "switched while a region of the old source was alive";
            } catch (const odp::Error& error) {
                EXPECT_EQ(error.code().value(), EBUSY);
                EXPECT_NE(std::string(error.what()).find("fake source is still registered"),
                          std::string::npos)
                    << error.what();
            }
        }
        keeper.use(odp::MonitorKind::None);  // its region is gone: the switch succeeds
        EXPECT_EQ(odp::Mirror::current(), nullptr) << "the None source needs no Mirror";
        keeper.use(odp::MonitorKind::Fake);
        EXPECT_EQ(odp::Mirror::current()->kind(), odp::MonitorKind::Fake);
    }
    EXPECT_EQ(odp::Mirror::current(), nullptr) << "the keeper's region is gone with it";
}

CompareResult two_source_result() {
    CompareResult result;
    result.device = "rxe0";
    result.kernel = "7.3.4+deb13-amd64";
    result.modes = {"pinned", "native", "emulated", "emulated/userfaultfd"};
    result.emulated_monitor = "module";
    result.monitors = {{"emulated", "module"}, {"emulated/userfaultfd", "userfaultfd"}};
    for (const std::string& mode : result.modes) {
        const bool userfaultfd = mode == "emulated/userfaultfd";
        result.rows.push_back(traffic_row(
            mode, "write", 65536,
            userfaultfd ? std::vector<double>{90, 81} : std::vector<double>{100, 90}, {10, 11}));
        Row reg;
        reg.mode = mode;
        reg.test = "register";
        reg.size = 4096;
        reg.reg_us = mode == "pinned" ? 50.0 : 5.0;
        result.rows.push_back(reg);
    }
    result.rows.back().reg_us = 25.0;  // emulated/userfaultfd: speed-up 2.0
    return result;
}

TEST(CompareTable, SecondSourceIsAnAlignedColumnOfItsOwn) {
    std::ostringstream out;
    print_table(two_source_result(), out);
    const std::string table = out.str();
    EXPECT_NE(table.find("emulated mode's invalidation source: module\n"), std::string::npos)
        << table;
    EXPECT_NE(table.find("emulated/userfaultfd: the emulated mode watched by userfaultfd\n"),
              std::string::npos)
        << table;
    // Every traffic row puts its size in the same column as the header's #bytes.
    std::istringstream lines(table);
    std::string line;
    std::size_t bytes_end = std::string::npos;
    int traffic_rows = 0;
    while (std::getline(lines, line)) {
        if (line.starts_with("mode ")) {
            bytes_end = line.find("#bytes") + 6;
        } else if (bytes_end != std::string::npos && line.find(" write ") != std::string::npos &&
                   line.find("65536") != std::string::npos) {
            EXPECT_EQ(line.find("65536") + 5, bytes_end) << line;
            ++traffic_rows;
        }
        if (line.starts_with("emulated/userfaultfd write")) {
            EXPECT_NE(line.find("0.900 [0.900, 0.900]"), std::string::npos)
                << "its ratio to pinned: " << line;
        }
        if (line.starts_with("4 KiB ")) {
            EXPECT_TRUE(line.ends_with(" 25.0" + std::string(23, ' ') + "2.0"))
                << "its registration and speed-up (one repeat: no interval): " << line;
        }
    }
    EXPECT_EQ(traffic_rows, 4) << table;
}

TEST(CompareJson, MonitorsNameEachEmulatedColumnsSource) {
    const std::string json = to_json(two_source_result(), "odp-perf compare");
    EXPECT_NE(
        json.find("\"modes\": [\"pinned\", \"native\", \"emulated\", \"emulated/userfaultfd\"]"),
        std::string::npos)
        << json;
    EXPECT_NE(json.find("\"monitors\": {\"emulated\": \"module\", \"emulated/userfaultfd\": "
                        "\"userfaultfd\"}"),
              std::string::npos)
        << json;
    EXPECT_NE(json.find("{\"mode\": \"emulated/userfaultfd\", "), std::string::npos) << json;
}

// Registration speed-ups and the first touch carry the interval of their
// repeats and cold starts, like the traffic rows.
TEST(CompareTable, RegistrationAndFirstTouchShowTheirIntervals) {
    CompareResult result;
    result.modes = {"pinned", "emulated"};
    for (const std::string& mode : result.modes) {
        Row reg;
        reg.mode = mode;
        reg.test = "register";
        reg.size = 1 << 30;
        reg.reg_us = mode == "pinned" ? 500000.0 : 1000.0;
        reg.reg_us_samples = mode == "pinned" ? std::vector<double>{500000, 450000, 520000}
                                              : std::vector<double>{1000, 1000, 1000};
        result.rows.push_back(reg);
        Row touch;
        touch.mode = mode;
        touch.test = "first_touch";
        touch.size = 2 << 20;
        touch.reg_us = mode == "pinned" ? 100.0 : 5.0;
        touch.reg_us_samples = {100, 100, 100, 100, 100};
        touch.first_touch_us = mode == "pinned" ? 1.0 : 90.0;
        touch.first_touch_us_samples = {80, 90, 95, 90, 120};
        result.rows.push_back(touch);
    }
    std::ostringstream out;
    print_table(result, out);
    const std::string table = out.str();
    EXPECT_NE(table.find("1 GiB"), std::string::npos) << table;
    EXPECT_NE(table.find(" 500.0 [450.0, 520.0]\n"), std::string::npos)
        << "speed-up 500 [450, 520] over three repeats: " << table;
    EXPECT_NE(table.find("0.900 [0.800, 1.200]\n"), std::string::npos)
        << "cold translate / pinned registration over five cold starts: " << table;
}

// The plot's data and script: error bars from the rounds, a row whose data
// check failed is no bar and its label says so, sizes as people write them.
TEST(ComparePlot, ScriptLabelsSizesAndMarksWrongData) {
    CompareResult result = sweep_result({"write"});
    for (const std::string& mode : result.modes) {
        Row reg;
        reg.mode = mode;
        reg.test = "register";
        reg.size = 1ULL << 30;
        reg.reg_us = 1000;
        reg.reg_us_samples = {900, 1000, 1300};
        result.rows.push_back(reg);
    }
    const std::filesystem::path dir =
        testing::TempDir() + "compare-plot-script-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir);
    const std::string script = plot_script(result, dir, "out.png");
    const auto file = [&](const std::string& name) {
        std::ifstream in(dir / name);
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    };
    // Bars at 8 B: native's bytes were wrong, so no bar, and the panel says
    // so under its axis (read and send were not measured at all here).
    EXPECT_EQ(
        file("lat.dat").rfind("\"write*\" 20.000 20.000 25.000 0 0 0 20.000 20.000 25.000\n", 0),
        0U)
        << file("lat.dat");
    EXPECT_NE(script.find("set xlabel \"* not drawn: emulated (read, send): failed; native "
                          "(write): data wrong; native (read, send): failed; pinned (read, "
                          "send): failed\"\nplot '" +
                          (dir / "lat.dat").string()),
              std::string::npos)
        << script;
    EXPECT_NE(script.find("set xlabel \"* not drawn: emulated (read, send): failed; native "
                          "(read, send): failed; pinned (read, send): failed\"\nplot '" +
                          (dir / "bw.dat").string()),
              std::string::npos)
        << "at 64 KiB native's data was right: " << script;
    EXPECT_EQ(file("bw.dat").rfind("\"write\" 42.250 40.000 44.000 42.250 40.000 44.000", 0), 0U)
        << "value, then the lowest and highest round: " << file("bw.dat");
    EXPECT_NE(script.find("set style histogram errorbars"), std::string::npos);
    // The sweep: native's 8 B point is a cross of its own, sizes are labelled.
    EXPECT_EQ(file("sweep-wrong-1.dat"), "8 42.25 40 44\n");
    EXPECT_EQ(file("sweep-1.dat"), "4096 42.25 40 44\n65536 42.25 40 44\n1048576 42.25 40 44\n");
    EXPECT_NE(script.find("title 'native: data check failed'"), std::string::npos) << script;
    EXPECT_NE(script.find("set xtics rotate by -30 (\"8 B\" 8, \"4 KiB\" 4096, \"64 KiB\" 65536, "
                          "\"1 MiB\" 1048576)"),
              std::string::npos)
        << script;
    // Registration: error bars over the repeats, 1 GiB written as such.
    EXPECT_EQ(file("reg-0.dat"), "1073741824 1000 900 1300\n");
    EXPECT_NE(script.find("\"1 GiB\" 1073741824"), std::string::npos) << script;
    EXPECT_NE(script.find("reg-0.dat' using 1:2:3:4 with yerrorlines"), std::string::npos)
        << script;
    std::filesystem::remove_all(dir);
}

// A label with a '/' names a column, not a folder of the plot's data files.
TEST(ComparePlot, DrawsTwoEmulatedSources) {
    const std::string path =
        testing::TempDir() + "compare-plot-sources-" + std::to_string(::getpid()) + ".png";
    ASSERT_NO_THROW(plot(two_source_result(), path));
    std::ifstream png(path, std::ios::binary);
    std::string magic(8, '\0');
    png.read(magic.data(), 8);
    EXPECT_EQ(magic, "\x89PNG\r\n\x1a\n");
    std::remove(path.c_str());
}

Row working_set_round(const std::string& mode, const std::string& test, std::uint64_t multiple,
                      double bw, double hit_rate, std::uint64_t faults) {
    Row row;
    row.mode = mode;
    row.server_mode = "pinned";
    row.test = test;
    row.budget_bytes = 8 << 20;
    row.size = multiple * (8 << 20);
    row.iterations = 1024;
    row.bw_MBps = bw;
    row.round_bw_MBps = {bw};
    row.hit_rate = hit_rate;
    row.faults = faults;
    row.pinned_bytes_peak = 8 << 20;
    return row;
}

// A working-set point's rounds: all bytes over all time, the hit rate over
// every lookup, faults added up, each round's bandwidth kept in order.
TEST(CompareWorkingSet, RoundsAddUp) {
    const Row row = row_from_working_set_rounds(
        {working_set_round("emulated", "working_set_random", 2, 100, 0.9, 10),
         working_set_round("emulated", "working_set_random", 2, 50, 0.8, 20)});
    EXPECT_EQ(row.iterations, 2048U);
    ASSERT_TRUE(row.bw_MBps);
    EXPECT_NEAR(*row.bw_MBps, 128.0 / 1.92, 1e-9) << "128 MiB in 0.64 s + 1.28 s";
    ASSERT_TRUE(row.hit_rate);
    EXPECT_NEAR(*row.hit_rate, 0.85, 1e-12);
    EXPECT_EQ(row.faults, 30U);
    EXPECT_EQ(row.round_bw_MBps, (std::vector<double>{100, 50}));
    EXPECT_EQ(row.size, 16U << 20);
    Row failed = working_set_round("emulated", "working_set_random", 2, 0, 0, 0);
    failed.error = "budget full";
    EXPECT_EQ(row_from_working_set_rounds(
                  {working_set_round("emulated", "working_set_random", 2, 100, 0.9, 10), failed})
                  .error,
              "budget full");
    EXPECT_TRUE(is_working_set_test("working_set_sequential"));
    EXPECT_FALSE(is_working_set_test("budget"));
}

// Emulated over 1-8x the budget against pinned over a set of the budget's
// size: the ratio pairs each round with pinned's of the same pattern, in the
// table, the JSON and the plot's panel (ratio with its interval, hit rate).
TEST(CompareWorkingSet, RatiosToPinnedInTableJsonAndPlot) {
    CompareResult result;
    result.modes = {"pinned", "emulated"};
    const std::vector<double> pinned_rounds{100, 100, 100, 100, 100};
    const std::vector<double> emulated_rounds{50, 40, 60, 50, 55};  // ratios 0.4 to 0.6
    for (const char* test : kWorkingSetTests) {
        std::vector<Row> pinned;
        for (const double bw : pinned_rounds) {
            pinned.push_back(working_set_round("pinned", test, 1, bw, 1.0, 0));
        }
        result.rows.push_back(row_from_working_set_rounds(pinned));
        for (const std::uint64_t multiple : {1, 2, 4, 8}) {
            std::vector<Row> rounds;
            for (const double bw : emulated_rounds) {
                rounds.push_back(working_set_round("emulated", test, multiple, bw,
                                                   1.0 / static_cast<double>(multiple), 32));
            }
            result.rows.push_back(row_from_working_set_rounds(rounds));
        }
    }
    std::ostringstream out;
    print_table(result, out);
    const std::string table = out.str();
    EXPECT_NE(table.find("Working set against the pinned budget of 8 MiB"), std::string::npos)
        << table;
    EXPECT_NE(table.find("random      emulated     32 MiB        4x    25.00%           160"),
              std::string::npos)
        << table;
    EXPECT_NE(table.find("0.500 [0.400, 0.600]\n"), std::string::npos) << table;

    const std::string json = to_json(result, "odp-perf compare --working-set-sweep");
    const std::string emulated_4x = "\"test\": \"working_set_sequential\", \"size\": 33554432";
    const std::size_t at = json.find(emulated_4x);
    ASSERT_NE(at, std::string::npos) << json;
    const std::string line = json.substr(at, json.find('\n', at) - at);
    EXPECT_NE(line.find("\"hit_rate\": 0.25"), std::string::npos) << line;
    EXPECT_NE(line.find("\"budget_bytes\": 8388608"), std::string::npos) << line;
    EXPECT_NE(line.find("\"to_pinned\": {\"bw_MBps\": {\"ratio\": 0.5, \"low\": 0.4, "
                        "\"high\": 0.6, \"confidence\": 0.9375, \"samples\": 5}"),
              std::string::npos)
        << line;

    const std::filesystem::path dir =
        testing::TempDir() + "compare-plot-working-set-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir);
    const std::string script = plot_script(result, dir, "out.png");
    std::ifstream in(dir / "ws-sequential-1.dat");
    std::stringstream data;
    data << in.rdbuf();
    EXPECT_EQ(data.str(),
              "1 0.5000 0.4000 0.6000 1.0000\n2 0.5000 0.4000 0.6000 0.5000\n"
              "4 0.5000 0.4000 0.6000 0.2500\n8 0.5000 0.4000 0.6000 0.1250\n");
    // Only this section's panel (compare --only working-set): gnuplot fails
    // on a panel without points, such as an empty registration panel.
    EXPECT_NE(script.find("set multiplot layout 1,1"), std::string::npos) << script;
    EXPECT_EQ(script.find("reg-0.dat"), std::string::npos) << script;
    EXPECT_EQ(script.find("bw.dat"), std::string::npos) << script;
    EXPECT_NE(script.find("ws-random-1.dat' using 1:5 axes x1y2"), std::string::npos) << script;
    EXPECT_NE(script.find("title 'emulated sequential, bandwidth ratio'"), std::string::npos)
        << script;
    EXPECT_EQ(script.find("ws-sequential-0.dat"), std::string::npos) << "pinned is the reference";
    // Two key lines per curve: under the panel, never over the curves.
    const std::size_t panel = script.find("set title 'Working set");
    ASSERT_NE(panel, std::string::npos) << script;
    EXPECT_NE(script.find("set key outside below", panel), std::string::npos) << script;
    const std::filesystem::path png = dir / "working-set.png";
    plot(result, png.string());  // throws if gnuplot refused the script
    EXPECT_GT(std::filesystem::file_size(png), 0U);
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace odp_perf
