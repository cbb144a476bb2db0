// compare's rows are made of several rounds per mode: how they add up.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
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

TEST(Spread, RangeOfPairedRatios) {
    const std::vector<double> emulated{9.0, 10.0, 12.0};
    const std::vector<double> pinned{10.0, 10.0, 10.0, 99.0};  // the 4th has no partner
    const std::optional<Interval> range = ratio_range(emulated, pinned);
    ASSERT_TRUE(range);
    EXPECT_DOUBLE_EQ(range->low, 0.9);
    EXPECT_DOUBLE_EQ(range->high, 1.2);
    EXPECT_EQ(range->samples, 3U);
}

TEST(Spread, OneUsablePairHasNoRange) {
    EXPECT_FALSE(ratio_range(std::vector<double>{1.0}, std::vector<double>{2.0}));
    EXPECT_FALSE(ratio_range(std::vector<double>{1.0, 2.0}, std::vector<double>{0.0, 2.0}))
        << "a zero denominator is no sample";
    EXPECT_FALSE(ratio_range({}, {}));
}

TEST(Spread, AGoalIsMetOnlyWhenTheWholeRangeClearsIt) {
    const auto at_least = [](double r) { return r >= 0.97; };
    EXPECT_EQ(judge(0.99, Interval{0.98, 1.01, 4}, at_least), Verdict::Met);
    EXPECT_EQ(judge(0.99, Interval{0.95, 1.01, 4}, at_least), Verdict::Inconclusive);
    EXPECT_EQ(judge(0.90, Interval{0.85, 0.96, 4}, at_least), Verdict::NotMet);
    EXPECT_EQ(judge(0.99, std::nullopt, at_least), Verdict::Met) << "one round: the ratio decides";
    EXPECT_EQ(judge(std::nullopt, std::nullopt, at_least), Verdict::NotMeasured);
    const auto at_most = [](double r) { return r <= 1.05; };
    EXPECT_EQ(judge(1.0, Interval{0.9, 1.1, 4}, at_most), Verdict::Inconclusive);
    EXPECT_EQ(to_string(Verdict::Inconclusive), "inconclusive");
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
    const std::vector<Row> rows{traffic_row("pinned", "write", 65536, {100, 100, 100, 100}, {10}),
                                traffic_row("emulated", "write", 65536, {96, 100, 104, 100}, {10}),
                                traffic_row("pinned", "write", 8, {1}, {10, 10, 10, 10}),
                                traffic_row("emulated", "write", 8, {1}, {10, 10.2, 10.1, 10})};
    const std::vector<Goal> goals = evaluate_goals(rows);
    const Goal& bandwidth =
        goal_named(goals, "warm RDMA WRITE bandwidth 64 KiB: emulated / pinned");
    ASSERT_TRUE(bandwidth.measured && bandwidth.range);
    EXPECT_DOUBLE_EQ(*bandwidth.measured, 1.0);
    EXPECT_DOUBLE_EQ(bandwidth.range->low, 0.96);
    EXPECT_DOUBLE_EQ(bandwidth.range->high, 1.04);
    EXPECT_EQ(bandwidth.verdict, Verdict::Inconclusive);
    const Goal& latency = goal_named(goals, "RDMA WRITE latency p50 8 B");
    ASSERT_TRUE(latency.range);
    EXPECT_EQ(latency.verdict, Verdict::Met);
    EXPECT_DOUBLE_EQ(latency.range->high, 1.02);
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
    ASSERT_TRUE(touch.range);
    EXPECT_DOUBLE_EQ(touch.range->low, 1.0);
    EXPECT_DOUBLE_EQ(touch.range->high, 1.3);
    EXPECT_EQ(touch.verdict, Verdict::Inconclusive) << "1.1 is under 1.2, 1.3 is not";
}

TEST(CompareJson, GoalsCarryTheirRangeAndVerdict) {
    CompareResult result;
    result.rows = {traffic_row("pinned", "write", 65536, {100, 100}, {10}),
                   traffic_row("emulated", "write", 65536, {99, 98}, {10})};
    result.goals = evaluate_goals(result.rows);
    const std::string json = to_json(result, "odp-perf compare");
    EXPECT_NE(json.find("\"round_bw_MBps\": [99, 98]"), std::string::npos) << json;
    EXPECT_NE(json.find("\"ratio_low\": 0.98, \"ratio_high\": 0.99"), std::string::npos) << json;
    EXPECT_NE(json.find("\"verdict\": \"met\", \"met\": true"), std::string::npos) << json;
}

// The plot: error bars from the rounds, sizes as people write them, and a
// row whose bytes arrived wrong is not drawn as a bar. gnuplot must draw it
// (scripts/setup installs gnuplot-nox); ODP_PLOT_KEEP=FILE keeps the picture.
TEST(ComparePlot, DrawsASweepWithRangesAndWrongData) {
    CompareResult result;
    result.device = "rxe0";
    result.kernel = "test";
    result.modes = {"pinned", "native", "emulated"};
    for (const std::string& mode : result.modes) {
        for (const std::uint64_t size : {8ULL, 4096ULL, 65536ULL, 1ULL << 20}) {
            for (const char* test : {"write", "read", "send"}) {
                Row row = traffic_row(mode, test, size, {40, 44, 42, 43}, {20, 21, 25, 22});
                row.mismatched_bytes = mode == "native" && size == 8 ? 8 : 0;
                result.rows.push_back(row);
            }
        }
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
            EXPECT_TRUE(line.ends_with("25.0      2.0"))
                << "its registration and speed-up: " << line;
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

}  // namespace
}  // namespace odp_perf
