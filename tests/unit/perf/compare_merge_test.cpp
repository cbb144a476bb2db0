// scripts/compare --repeat N: runs of separate guests merged into one table.
#include "compare_merge.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <odp/error.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace odp_perf {
namespace {

Row traffic(const std::string& mode, std::vector<double> rounds, std::uint64_t faults) {
    Row row;
    row.mode = mode;
    row.server_mode = mode;
    row.test = "write";
    row.size = 65536;
    row.iterations = 300;
    row.depth = 32;
    double sum = 0;
    for (const double value : rounds) {
        sum += value;
    }
    row.bw_MBps = sum / static_cast<double>(rounds.size());
    row.lat_us_p50 = 10;
    row.lat_us_p99 = 20;
    row.round_bw_MBps = std::move(rounds);
    row.round_lat_us_p50 = {10, 10};
    row.faults = faults;
    row.verified_bytes = 1 << 20;
    row.pinned_bytes_peak = faults << 21;
    return row;
}

CompareResult run_of(std::vector<double> pinned, std::vector<double> emulated) {
    CompareResult result;
    result.kernel = "7.3.4+deb13-amd64";
    result.device = "rxe0";
    result.modes = {"pinned", "emulated", "emulated/userfaultfd"};
    result.emulated_monitor = "module";
    result.monitors = {{"emulated", "module"}, {"emulated/userfaultfd", "userfaultfd"}};
    result.native_check.ran = true;
    result.native_check.ok = true;
    result.native_check.detail = "ok";
    result.rows = {traffic("pinned", std::move(pinned), 0), traffic("emulated", emulated, 2),
                   traffic("emulated/userfaultfd", std::move(emulated), 3)};
    Row failed;
    failed.mode = "emulated/userfaultfd";
    failed.test = "prefetch";
    failed.size = 2 << 20;
    failed.error = "prefetch: \"quoted\"\nsecond line";
    result.rows.push_back(failed);
    Row reg;
    reg.mode = "pinned";
    reg.test = "register";
    reg.size = 4096;
    reg.reg_us = 12.5;
    reg.reg_us_samples = {12, 12.5, 13};
    reg.budget_bytes = 8 << 20;
    result.rows.push_back(reg);
    return result;
}

TEST(CompareMerge, JsonReadsBackWhatItWrote) {
    const CompareResult written = run_of({100, 90}, {95, 85});
    const CompareResult read = parse_compare_json(to_json(written, "odp-perf compare --quick"));
    EXPECT_EQ(read.kernel, written.kernel);
    EXPECT_EQ(read.device, written.device);
    EXPECT_EQ(read.modes, written.modes);
    EXPECT_EQ(read.monitors, written.monitors);
    EXPECT_EQ(read.emulated_monitor, "module");
    EXPECT_TRUE(read.native_check.ran && read.native_check.ok);
    ASSERT_EQ(read.rows.size(), written.rows.size());
    for (std::size_t i = 0; i < read.rows.size(); ++i) {
        const Row& a = read.rows[i];
        const Row& b = written.rows[i];
        EXPECT_EQ(std::tie(a.mode, a.server_mode, a.test, a.size, a.iterations, a.depth, a.faults,
                           a.pinned_bytes_peak, a.verified_bytes, a.error, a.budget_bytes),
                  std::tie(b.mode, b.server_mode, b.test, b.size, b.iterations, b.depth, b.faults,
                           b.pinned_bytes_peak, b.verified_bytes, b.error, b.budget_bytes))
            << "row " << i;
        EXPECT_EQ(a.bw_MBps, b.bw_MBps) << "row " << i;
        EXPECT_EQ(a.reg_us, b.reg_us) << "row " << i;
        EXPECT_EQ(a.first_touch_us, b.first_touch_us) << "null stays null, row " << i;
        EXPECT_EQ(a.round_bw_MBps, b.round_bw_MBps) << "row " << i;
        EXPECT_EQ(a.reg_us_samples, b.reg_us_samples) << "row " << i;
    }
}

// A siw run: queue pairs through RDMA CM, native left out with the reason;
// both are in the JSON, the table and a merge of such runs.
TEST(CompareMerge, ConnectionAndAbsentModesReadBack) {
    CompareResult written = run_of({100, 90}, {95, 85});
    written.device = "siw0";
    written.connection = "RDMA CM";
    written.absent_modes = {{"native", "siw0 has no native ODP (Auto picks emulated)"}};
    const CompareResult read = parse_compare_json(to_json(written, "odp-perf compare --quick"));
    EXPECT_EQ(read.connection, "RDMA CM");
    EXPECT_EQ(read.absent_modes, written.absent_modes);
    const CompareResult merged = merge_runs({read, read});
    EXPECT_EQ(merged.absent_modes, written.absent_modes);
    std::ostringstream table;
    print_table(merged, table);
    EXPECT_NE(table.str().find("native: not measured: siw0 has no native ODP (Auto picks "
                               "emulated)\nqueue pairs connected by RDMA CM\n"),
              std::string::npos)
        << table.str();
    // A file written before either existed: endpoint exchange assumed, nothing absent.
    std::string old = to_json(run_of({1, 1}, {1, 1}), "odp-perf compare");
    const std::size_t at = old.find("  \"connection\"");
    ASSERT_NE(at, std::string::npos);
    old.erase(at, old.find("\"modes\"") - at);
    const CompareResult old_read = parse_compare_json(old);
    EXPECT_EQ(old_read.connection, "");
    EXPECT_TRUE(old_read.absent_modes.empty());
}

TEST(CompareMerge, MalformedJsonSaysWhatIsWrong) {
    try {
        (void)parse_compare_json("{\"schema\": \"odp-perf-compare/1\", \"kernel\": \"x\"}");
        FAIL() << "a file without a device was read";
    } catch (const odp::Error& error) {
        EXPECT_EQ(error.errno_value(), EINVAL);
        EXPECT_NE(std::string(error.what()).find("\"device\" is missing"), std::string::npos)
            << error.what();
    }
    EXPECT_THROW((void)parse_compare_json("{\"schema\": "), odp::Error);
}

const Goal& bandwidth_goal(const CompareResult& result) {
    const auto goal = std::find_if(result.goals.begin(), result.goals.end(), [](const Goal& g) {
        return g.name == "warm RDMA WRITE bandwidth 64 KiB: emulated / pinned";
    });
    if (goal == result.goals.end()) {
        throw std::runtime_error("no bandwidth goal");
    }
    return *goal;
}

// One way of computing intervals for one run and for runs merged: more runs
// narrow the interval of the median instead of widening a range. Each run
// alone (four rounds, one disturbed) is inconclusive; merged, the 12 pairs
// give the 3rd lowest to the 3rd highest ratio, which clears 0.97.
// A file's error names the file and says the errno's text once.
TEST(CompareMerge, AFileThatFailsIsNamedOnce) {
    const std::string path =
        testing::TempDir() + "compare-merge-bad-" + std::to_string(::getpid()) + ".json";
    std::ofstream(path) << "{\"schema\": \"odp-perf-compare/1\", \"kernel\": \"x\"}";
    try {
        (void)read_compare_json(path);
        ADD_FAILURE() << "a file without its device was read";
    } catch (const odp::Error& error) {
        EXPECT_EQ(error.errno_value(), EINVAL);
        EXPECT_EQ(std::string(error.what()),
                  path + ": compare JSON: \"device\" is missing: Invalid argument");
    }
    std::remove(path.c_str());
    try {
        (void)read_compare_json(path);
        ADD_FAILURE() << "a missing file was read";
    } catch (const odp::Error& error) {
        EXPECT_EQ(error.errno_value(), ENOENT);
        EXPECT_EQ(std::string(error.what()), "opening " + path + ": No such file or directory");
    }
}

TEST(CompareMerge, MoreRunsNarrowTheInterval) {
    const std::vector<CompareResult> runs{run_of({100, 100, 100, 100}, {99, 98, 80, 100}),
                                          run_of({100, 100, 100, 100}, {99, 100, 101, 98}),
                                          run_of({100, 100, 100, 100}, {120, 98, 99, 100})};
    for (const CompareResult& run : runs) {
        CompareResult judged = run;
        judged.goals = evaluate_goals(judged.rows);
        const Goal& goal = bandwidth_goal(judged);
        ASSERT_TRUE(goal.measured && goal.measured->interval);
        EXPECT_DOUBLE_EQ(goal.measured->interval->confidence, 0.875);
    }
    CompareResult first = runs[0];
    first.goals = evaluate_goals(first.rows);
    EXPECT_EQ(bandwidth_goal(first).verdict, Verdict::Inconclusive) << "0.8 is in its range";
    const CompareResult merged = merge_runs(runs);
    const Goal& goal = bandwidth_goal(merged);
    ASSERT_TRUE(goal.measured && goal.measured->interval);
    EXPECT_EQ(goal.measured->interval->samples, 12U);
    EXPECT_DOUBLE_EQ(goal.measured->interval->low, 0.98);
    EXPECT_DOUBLE_EQ(goal.measured->interval->high, 1.0);
    EXPECT_GE(goal.measured->interval->confidence, 0.95);
    EXPECT_DOUBLE_EQ(goal.measured->ratio, 0.99);
    EXPECT_EQ(goal.verdict, Verdict::Met);
    // The merged JSON says so, and reading it back judges the same.
    const CompareResult reread = parse_compare_json(to_json(merged, "odp-perf compare --merge"));
    CompareResult rejudged = reread;
    rejudged.goals = evaluate_goals(rejudged.rows);
    EXPECT_EQ(bandwidth_goal(rejudged).verdict, Verdict::Met);
}

// Values are the mean over the runs; the rounds of every run stay in run
// order, so the ratio ranges pair run 1's rounds with run 1's and span both.
TEST(CompareMerge, RangesSpanEveryRoundOfEveryRun) {
    const CompareResult merged =
        merge_runs({run_of({100, 100}, {100, 96}), run_of({50, 50}, {40, 45})});
    ASSERT_EQ(merged.rows.size(), 5U);
    const Row& emulated = merged.rows[1];
    EXPECT_EQ(emulated.mode, "emulated");
    EXPECT_EQ(emulated.round_bw_MBps, (std::vector<double>{100, 96, 40, 45}));
    EXPECT_DOUBLE_EQ(*emulated.bw_MBps, (98.0 + 42.5) / 2);
    EXPECT_EQ(emulated.iterations, 600U);
    EXPECT_EQ(emulated.faults, 4U);
    EXPECT_EQ(merged.rows[0].round_bw_MBps, (std::vector<double>{100, 100, 50, 50}));
    EXPECT_EQ(merged.rows[4].reg_us_samples, (std::vector<double>{12, 12.5, 13, 12, 12.5, 13}));
    EXPECT_EQ(merged.rows[3].error.rfind("run 1: prefetch", 0), 0U) << merged.rows[3].error;
    // A merged file merged again alone (a plot redrawn from it) keeps its
    // errors as they were.
    const CompareResult redrawn =
        merge_runs({parse_compare_json(to_json(merged, "odp-perf compare --merge"))});
    EXPECT_EQ(redrawn.rows[3].error, merged.rows[3].error);
    // Emulated / pinned per round: 1.0, 0.96, 0.8, 0.9 -> median 0.93 in
    // [0.8, 1.0] (four pairs: their range), which straddles 0.97.
    const Goal& goal = bandwidth_goal(merged);
    ASSERT_TRUE(goal.measured && goal.measured->interval);
    EXPECT_NEAR(goal.measured->ratio, 0.93, 1e-12);
    EXPECT_DOUBLE_EQ(goal.measured->interval->low, 0.8);
    EXPECT_DOUBLE_EQ(goal.measured->interval->high, 1.0);
    EXPECT_EQ(goal.measured->interval->samples, 4U);
    EXPECT_EQ(goal.verdict, Verdict::Inconclusive);
    std::ostringstream table;
    print_table(merged, table);
    EXPECT_NE(table.str().find("emulated/userfaultfd write"), std::string::npos) << table.str();
}

// --fault-ahead: recorded in the JSON, read back, and part of what a
// comparison is (runs with and without it are not merged).
TEST(CompareMerge, FaultAheadIsRecordedAndMustMatch) {
    CompareResult ahead = run_of({1, 1}, {1, 1});
    ahead.fault_ahead = 4;
    const std::string json = to_json(ahead, "odp-perf compare --fault-ahead 4");
    EXPECT_NE(json.find("\"fault_ahead\": 4,"), std::string::npos) << json;
    EXPECT_EQ(parse_compare_json(json).fault_ahead, 4U);
    std::ostringstream table;
    print_table(ahead, table);
    EXPECT_NE(table.str().find("fault 4 chunks ahead (--fault-ahead)"), std::string::npos)
        << table.str();
    try {
        (void)merge_runs({ahead, run_of({1, 1}, {1, 1})});
        FAIL() << "runs with and without fault-ahead were merged";
    } catch (const odp::Error& error) {
        EXPECT_NE(std::string(error.what()).find("--fault-ahead needed"), std::string::npos)
            << error.what();
    }
    EXPECT_EQ(merge_runs({ahead, ahead}).fault_ahead, 4U);
}

TEST(CompareMerge, RunsOfDifferentComparisonsAreRefused) {
    CompareResult other = run_of({1, 1}, {1, 1});
    other.kernel = "6.1.0-57-amd64";
    try {
        (void)merge_runs({run_of({1, 1}, {1, 1}), other});
        FAIL() << "runs of two kernels were merged";
    } catch (const odp::Error& error) {
        EXPECT_EQ(error.errno_value(), EINVAL);
        EXPECT_NE(std::string(error.what()).find("run 2 (rxe0, kernel 6.1.0-57-amd64)"),
                  std::string::npos)
            << error.what();
    }
    EXPECT_THROW((void)merge_runs({}), odp::Error);
    other = run_of({1, 1}, {1, 1});
    other.connection = "RDMA CM";
    EXPECT_THROW((void)merge_runs({run_of({1, 1}, {1, 1}), other}), odp::Error)
        << "runs connected differently were merged";
}

}  // namespace
}  // namespace odp_perf
