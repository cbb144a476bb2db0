// compare's fault section (issue 11 items 1 and 2): chunk faults of 1 and 2
// threads measured on the fake NIC, and the rows' goals, table and JSON.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/fake_nic.hpp>
#include <odp/mirror.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "compare.hpp"
#include "compare_merge.hpp"

namespace odp_perf {
namespace {

constexpr std::uint64_t kChunk = 2 << 20;

const Goal* goal_starting(const std::vector<Goal>& goals, const std::string& prefix) {
    for (const Goal& goal : goals) {
        if (goal.name.starts_with(prefix)) {
            return &goal;
        }
    }
    return nullptr;
}

// A device on a fake NIC whose budget holds `chunks` chunks, its emulated
// regions watched by the fake source.
struct FakeNicDevice {
    explicit FakeNicDevice(std::uint64_t chunks, std::chrono::microseconds registration_cost = {})
        : FakeNicDevice(std::make_unique<odp::FakeNic>(), chunks, registration_cost) {}

    odp::FakeNic& fake;  // owned by the device
    std::shared_ptr<odp::Device> device;
    SourceKeeper keeper;

  private:
    FakeNicDevice(std::unique_ptr<odp::FakeNic> nic, std::uint64_t chunks,
                  std::chrono::microseconds registration_cost)
        : fake(*nic),
          device(odp::Device::open(std::move(nic), {"", chunks * kChunk})),
          keeper(*device, std::chrono::milliseconds(50)) {
        fake.set_registration_cost(registration_cost);
        keeper.use(odp::MonitorKind::Fake);
    }
};

// Each thread count's rounds on a fake NIC that takes 200 us per
// registration: every chunk is registered once per round, by the threads
// given (emulated: a chunk fault; pinned: a 2 MiB region), and nothing stays
// registered afterwards.
void expect_each_chunk_registered_once_per_round(odp::Mode mode, std::uint64_t faults_per_row) {
    FakeNicDevice nic(8, std::chrono::microseconds(200));
    odp::FakeNic& fake = nic.fake;
    odp::Device& device = *nic.device;
    const std::uint64_t before = fake.counters().registrations;
    const std::vector<Row> rows = measure_parallel_faults(device, mode, 8, 3);
    ASSERT_EQ(rows.size(), 2U);
    for (const Row& row : rows) {
        SCOPED_TRACE(row.test);
        EXPECT_EQ(row.error, "");
        EXPECT_EQ(row.mode, odp::to_string(mode));
        EXPECT_EQ(row.size, 8 * kChunk);
        EXPECT_EQ(row.faults, faults_per_row);
        EXPECT_EQ(row.iterations, 24U) << "8 chunks in each of 3 rounds";
        ASSERT_EQ(row.first_touch_us_samples.size(), 3U);
        ASSERT_TRUE(row.first_touch_us);
        // Wall time per registration: never under the NIC's own cost,
        // divided by the threads at most.
        EXPECT_GE(*row.first_touch_us, row.test == "faults_1_thread" ? 200.0 : 100.0);
        EXPECT_LE(row.pinned_bytes_peak, 8 * kChunk);
    }
    EXPECT_EQ(rows[0].test, "faults_1_thread");
    EXPECT_EQ(rows[1].test, "faults_2_threads");
    EXPECT_EQ(fake.counters().registrations - before, 64U)
        << "two thread counts, a warm-up and 3 rounds, 8 chunks each";
    EXPECT_EQ(fake.live_registrations().size(), 0U);
    EXPECT_EQ(device.pinned_bytes(), 0U) << "every measured region is gone";
}

TEST(CompareFaults, ParallelFaultsFaultEveryChunkOncePerRound) {
    expect_each_chunk_registered_once_per_round(odp::Mode::Emulated, 24);
}

// Pinned's reference: one 2 MiB MR per chunk, timed the same way; pinned
// regions fault nothing.
TEST(CompareFaults, PinnedRegistersOneMrPerChunkAndKeepsNone) {
    expect_each_chunk_registered_once_per_round(odp::Mode::Pinned, 0);
}

// A registration that fails fails both rows with its error; nothing stays
// registered.
TEST(CompareFaults, AFailedFaultFailsTheRowsAndLeaksNothing) {
    FakeNicDevice nic(8);
    odp::FakeNic& fake = nic.fake;
    odp::Device& device = *nic.device;
    fake.fail_next_registrations(EIO);
    const std::vector<Row> rows = measure_parallel_faults(device, odp::Mode::Emulated, 8, 2);
    for (const Row& row : rows) {
        EXPECT_NE(row.error.find("Input/output error"), std::string::npos) << row.error;
    }
    EXPECT_EQ(fake.live_registrations().size(), 0U);
    EXPECT_EQ(device.pinned_bytes(), 0U);
}

// The first touch, a cold start at a time (compare takes turns between modes
// at each): only counted cold starts give samples, each on a fresh buffer
// whose chunk the translate faults; an error ends the row, and the cold
// starts after it do nothing. Nothing stays registered.
TEST(CompareFirstTouch, CountedColdStartsGiveTheSamplesAndAnErrorEndsTheRow) {
    FakeNicDevice nic(4, std::chrono::microseconds(200));
    odp::FakeNic& fake = nic.fake;
    odp::Device& device = *nic.device;
    const Peer no_peer{};  // no cold start here writes the buffer
    const std::uint64_t before = fake.counters().registrations;
    FirstTouch touch(odp::Mode::Emulated, kChunk, false);
    for (const bool counted : {false, true, true, true}) {
        touch.cold_start(device, no_peer, counted, false);
    }
    const Row row = std::move(touch).finish();
    EXPECT_EQ(row.error, "");
    EXPECT_EQ(row.test, "first_touch");
    EXPECT_EQ(row.size, kChunk);
    ASSERT_EQ(row.first_touch_us_samples.size(), 3U) << "the first cold start is not counted";
    ASSERT_EQ(row.reg_us_samples.size(), 3U);
    for (const double sample : row.first_touch_us_samples) {
        EXPECT_GE(sample, 200.0) << "each translate registers its fresh chunk";
    }
    ASSERT_TRUE(row.first_touch_us && row.reg_us);
    EXPECT_FALSE(row.prefetch_us);
    EXPECT_EQ(fake.counters().registrations - before, 4U) << "one chunk per cold start";

    FirstTouch failing(odp::Mode::Pinned, kChunk, true);
    failing.cold_start(device, no_peer, true, false);
    fake.fail_next_registrations(EIO);
    failing.cold_start(device, no_peer, true, false);
    const std::uint64_t after_error = fake.counters().registrations;
    failing.cold_start(device, no_peer, true, false);
    EXPECT_EQ(fake.counters().registrations, after_error) << "nothing after the error";
    const Row failed = std::move(failing).finish();
    EXPECT_EQ(failed.test, "prefetch");
    EXPECT_NE(failed.error.find("Input/output error"), std::string::npos) << failed.error;
    EXPECT_FALSE(failed.first_touch_us) << "a failed row gives no times";
    EXPECT_EQ(fake.live_registrations().size(), 0U);
    EXPECT_EQ(device.pinned_bytes(), 0U);
}

TEST(CompareFaults, ABudgetShortOfTheChunksIsRefusedUpFront) {
    FakeNicDevice nic(4);
    const std::vector<Row> rows = measure_parallel_faults(*nic.device, odp::Mode::Emulated, 8, 2);
    for (const Row& row : rows) {
        EXPECT_NE(row.error.find("chunk faults of 16 MiB need a budget that holds them"),
                  std::string::npos)
            << row.error;
        EXPECT_EQ(row.faults, 0U);
    }
}

Row fault_row(const std::string& test, std::vector<double> samples,
              const std::string& mode = "emulated") {
    Row row;
    row.mode = mode;
    row.test = test;
    row.size = 32 * kChunk;
    row.first_touch_us = median(samples);
    row.first_touch_us_samples = std::move(samples);
    return row;
}

Row pass_row(const std::string& test, std::vector<double> bw, std::vector<double> touches) {
    Row row;
    row.mode = "emulated";
    row.server_mode = "pinned";
    row.test = test;
    row.size = 256 << 20;
    row.bw_MBps = median(bw);
    row.round_bw_MBps = std::move(bw);
    if (!touches.empty()) {
        row.first_touch_us = median(touches);
        row.first_touch_us_samples = std::move(touches);
    }
    row.verified_bytes = 6 << 20;
    row.faults = test == "warm_pass" ? 0 : 768;
    row.fault_ahead_hits = test == "first_pass" ? 700 : 0;
    return row;
}

CompareResult fault_result() {
    CompareResult result;
    result.device = "rxe0";
    result.kernel = "6.12.117+deb12-amd64";
    result.modes = {"pinned", "emulated"};
    result.emulated_monitor = "module";
    result.monitors = {{"emulated", "module"}};
    Row pinned_touch;
    pinned_touch.mode = "pinned";
    pinned_touch.test = "first_touch";
    pinned_touch.size = kChunk;
    pinned_touch.reg_us = 500;
    pinned_touch.reg_us_samples = {500, 500, 500, 500, 500, 500};
    result.rows = {
        pinned_touch,
        // Per round 1 thread / 2 threads: 1.6, 1.7, 1.8, 1.9, 2.0, 1.8.
        fault_row("faults_1_thread", {480, 510, 540, 570, 600, 540}),
        fault_row("faults_2_threads", {300, 300, 300, 300, 300, 300}),
        // The kernel's own: 1.2 to 1.4.
        fault_row("faults_1_thread", {360, 390, 420, 390, 390, 360}, "pinned"),
        fault_row("faults_2_threads", {300, 300, 300, 300, 300, 300}, "pinned"),
        // First / warm: 0.95 to 1.0 with fault-ahead, 0.5 without.
        pass_row("first_pass", {95, 96, 97, 98, 99, 100}, {20, 25, 30, 35, 40, 45}),
        pass_row("warm_pass", {100, 100, 100, 100, 100, 100}, {}),
        pass_row("first_pass_demand", {50, 50, 50, 50, 50, 50}, {450, 460, 470, 480, 490, 500})};
    result.goals = evaluate_goals(result.rows);
    return result;
}

TEST(CompareFaults, GoalsPairTheRoundsOfEachSide) {
    const std::vector<Goal> goals = fault_result().goals;
    const Goal* parallel = goal_starting(goals, "chunk faults of distinct 2 MiB chunks");
    ASSERT_NE(parallel, nullptr);
    ASSERT_TRUE(parallel->measured && parallel->measured->interval);
    EXPECT_DOUBLE_EQ(parallel->measured->interval->low, 1.6);
    EXPECT_DOUBLE_EQ(parallel->measured->interval->high, 2.0);
    EXPECT_EQ(parallel->verdict, Verdict::Met) << ">= 1.5";

    const Goal* first = goal_starting(goals,
                                      "first pass of a streaming 64 KiB WRITE over a fresh "
                                      "256 MiB buffer, with fault-ahead");
    ASSERT_NE(first, nullptr);
    ASSERT_TRUE(first->measured && first->measured->interval);
    EXPECT_DOUBLE_EQ(first->measured->interval->low, 0.95);
    EXPECT_DOUBLE_EQ(first->measured->interval->high, 1.0);
    EXPECT_EQ(first->verdict, Verdict::Met) << ">= 0.9";

    const Goal* demand = goal_starting(goals, "the same first pass without fault-ahead");
    ASSERT_NE(demand, nullptr);
    EXPECT_EQ(demand->verdict, Verdict::Reported);
    EXPECT_DOUBLE_EQ(demand->measured->ratio, 0.5);

    const Goal* kernel = goal_starting(goals, "the kernel's own: pinned 2 MiB registrations");
    ASSERT_NE(kernel, nullptr);
    ASSERT_TRUE(kernel->measured && kernel->measured->interval);
    EXPECT_EQ(kernel->verdict, Verdict::Reported);
    EXPECT_DOUBLE_EQ(kernel->measured->ratio, 1.3);
    EXPECT_DOUBLE_EQ(kernel->measured->interval->low, 1.2);
    EXPECT_DOUBLE_EQ(kernel->measured->interval->high, 1.4);

    const Goal* cold = goal_starting(goals, "cold translate of a 2 MiB chunk in that first pass");
    ASSERT_NE(cold, nullptr);
    ASSERT_TRUE(cold->measured && cold->measured->interval);
    EXPECT_DOUBLE_EQ(cold->measured->interval->high, 0.09) << "45 us against 500";
    EXPECT_EQ(cold->verdict, Verdict::Met) << "<= 1.0";
}

// A run whose fault section failed says why in the goal; files of runs
// before the section have none of its goals.
TEST(CompareFaults, FailedOrMissingRowsGiveNoVerdict) {
    CompareResult result = fault_result();
    result.rows[2].error = "ibv_reg_mr: Cannot allocate memory";
    result.rows[2].first_touch_us.reset();
    const std::vector<Goal> goals = evaluate_goals(result.rows);
    const Goal* parallel = goal_starting(goals, "chunk faults of distinct 2 MiB chunks");
    ASSERT_NE(parallel, nullptr);
    EXPECT_EQ(parallel->verdict, Verdict::NotMeasured);
    EXPECT_EQ(parallel->note,
              "emulated faults_2_threads failed: ibv_reg_mr: Cannot allocate memory");

    result.rows.resize(1);
    const std::vector<Goal> older = evaluate_goals(result.rows);
    EXPECT_EQ(goal_starting(older, "chunk faults"), nullptr);
    EXPECT_EQ(goal_starting(older, "first pass"), nullptr);
    EXPECT_EQ(goal_starting(older, "cold translate of a 2 MiB chunk in that"), nullptr);
}

TEST(CompareFaults, TableShowsBothSectionsWithTheirIntervals) {
    std::ostringstream out;
    print_table(fault_result(), out);
    const std::string table = out.str();
    EXPECT_NE(table.find("Chunk faults: 32 fresh 2 MiB chunks of a region faulted by 1 thread, "
                         "then by 2"),
              std::string::npos)
        << table;
    EXPECT_NE(table.find("emulated        540.0      300.0      1.800 [1.600, 2.000]"),
              std::string::npos)
        << table;
    EXPECT_NE(table.find("pinned          390.0      300.0      1.300 [1.200, 1.400]"),
              std::string::npos)
        << table;
    EXPECT_NE(table.find("pinned: one\n 2 MiB MR registered per chunk"), std::string::npos)
        << table;
    EXPECT_NE(table.find("over a fresh 256 MiB buffer, first pass"), std::string::npos) << table;
    EXPECT_NE(table.find("fault-ahead 4 chunks"), std::string::npos) << table;
    EXPECT_NE(table.find("0.975 [0.950, 1.000]           50.00  0.500 [0.500, 0.500]"),
              std::string::npos)
        << table;
    EXPECT_NE(table.find("0.065 [0.040, 0.090]"), std::string::npos) << table;
    EXPECT_NE(table.find("ok 12 MiB, warm pass 0 faults, first pass 700 of 768 chunks faulted "
                         "ahead"),
              std::string::npos)
        << table;
}

// The rows go through the JSON and back, and the goals come out the same.
TEST(CompareFaults, JsonReadsBackTheSectionAndItsGoals) {
    const CompareResult written = fault_result();
    const CompareResult read = parse_compare_json(to_json(written, "odp-perf compare"));
    ASSERT_EQ(read.rows.size(), written.rows.size());
    for (std::size_t i = 0; i < read.rows.size(); ++i) {
        EXPECT_EQ(read.rows[i].faults, written.rows[i].faults);
        EXPECT_EQ(read.rows[i].fault_ahead_hits, written.rows[i].fault_ahead_hits);
    }
    const std::vector<Goal> goals = evaluate_goals(read.rows);
    ASSERT_EQ(goals.size(), written.goals.size());
    for (std::size_t i = 0; i < goals.size(); ++i) {
        SCOPED_TRACE(goals[i].name);
        EXPECT_EQ(goals[i].name, written.goals[i].name);
        EXPECT_EQ(goals[i].verdict, written.goals[i].verdict);
        ASSERT_EQ(goals[i].measured.has_value(), written.goals[i].measured.has_value());
        if (goals[i].measured) {
            EXPECT_DOUBLE_EQ(goals[i].measured->ratio, written.goals[i].measured->ratio);
        }
    }
}

// A file recorded before the fault-ahead counter existed (same schema) still
// reads, with none counted, so that its plot can be drawn again; a counter
// that is there but not a number is still refused.
TEST(CompareFaults, JsonWithoutTheLaterCounterReadsAsNoneCounted) {
    const std::string json = to_json(fault_result(), "odp-perf compare");
    // Each row's `"fault_ahead_hits": N, ` replaced by `with` (no std::regex:
    // GCC 12's warns inside itself under the sanitizers' -Werror build).
    const auto each_counter = [&](const std::string& with) {
        const std::string key = "\"fault_ahead_hits\": ";
        std::string out;
        std::size_t at = 0;
        for (std::size_t found = json.find(key); found != std::string::npos;
             found = json.find(key, at)) {
            out += json.substr(at, found - at) + with;
            at = json.find(", ", found) + 2;
        }
        return out + json.substr(at);
    };
    const std::string older = each_counter("");
    ASSERT_NE(older, json);
    ASSERT_EQ(older.find("fault_ahead_hits"), std::string::npos) << older;
    const CompareResult read = parse_compare_json(older);
    ASSERT_EQ(read.rows.size(), fault_result().rows.size());
    for (const Row& row : read.rows) {
        EXPECT_EQ(row.fault_ahead_hits, 0U) << row.test;
    }
    EXPECT_THROW((void)parse_compare_json(each_counter("\"fault_ahead_hits\": \"many\", ")),
                 odp::Error);
}

}  // namespace
}  // namespace odp_perf
