// odp-perf compare: every registration mode the device supports, side by side
// in one run (server and client in this process over the device's loopback),
// one table with each mode's ratio to pinned, JSON (docs/compare.md) and a plot.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "measure.hpp"
#include "native_check.hpp"
#include "spread.hpp"
#include "traffic.hpp"

namespace odp_perf {

struct CompareConfig {
    std::string device;  // "" = first
    std::optional<std::string> json_path;
    std::optional<std::string> plot_path;
    std::uint64_t bw_iterations = 2000;
    std::uint64_t lat_iterations = 2000;
    // Each test and size runs in this many rounds, the modes taking turns.
    std::uint32_t rounds = 4;
    std::uint32_t depth = 32;
    std::vector<std::uint64_t> sizes{8, 65536};  // message sizes for every traffic test
    bool sweep = false;                          // sizes: 2 B .. 8 MiB (sweep_sizes)
    // Registration sweep 4 KiB .. reg_max (3 GiB: rxe's max_mr_size is 4 GiB - 1).
    std::uint64_t reg_max = std::uint64_t{3} << 30;
    std::uint64_t budget = std::uint64_t{8} << 20;
    std::uint64_t working_set = std::uint64_t{32} << 20;
    std::uint64_t budget_iterations = 2000;
    int remap_rounds = 6;
    std::string command_line;  // recorded in the JSON
};

// One table row from a mode's rounds of one test and size: counts add up, the
// bandwidth is all bytes over all measured time, the latency percentiles are
// taken over every sample, the pinned peak is the highest.
Row row_from_rounds(const std::vector<ClientResult>& rounds, oob::TestKind test,
                    std::uint64_t size);

struct Goal {
    std::string name;
    std::optional<double> measured;  // the ratio
    std::optional<Interval> range;   // of its per-round ratios
    std::string target;              // ">= 0.97", "<= 1.05", ...
    Verdict verdict = Verdict::NotMeasured;
    std::string note;
};

struct CompareResult {
    std::string kernel;
    std::string device;
    std::vector<std::string> modes;
    std::string emulated_monitor;  // the invalidation source emulated mode used
    std::string sizes_note;        // why a sweep left sizes out ("" if none)
    std::vector<Row> rows;
    std::vector<Goal> goals;
    NativeCheck native_check;
};

// Runs the comparison; progress on stderr when it is a terminal.
CompareResult run_compare(const CompareConfig& config);

void print_table(const CompareResult& result, std::ostream& out);
std::string to_json(const CompareResult& result, const std::string& command_line);
// Draws the comparison with gnuplot; throws odp::Error if gnuplot is missing or fails.
void plot(const CompareResult& result, const std::string& png_path);

// Goals of issue 3 computed from the rows: each ratio of one run with the
// range of its per-round ratios, judged met only when the range clears it.
std::vector<Goal> evaluate_goals(const std::vector<Row>& rows);

}  // namespace odp_perf
