// Several runs of odp-perf compare (separate guests, `scripts/compare
// --repeat N`) merged into one table: a run's numbers move by tens of percent
// from guest to guest, so the merged rows carry every run's rounds and the
// ranges of their ratios span all runs.
#pragma once

#include <string>
#include <vector>

#include "compare.hpp"

namespace odp_perf {

// Reads the JSON that to_json wrote (schema odp-perf-compare/1). Throws
// odp::Error(EINVAL) naming what is missing or malformed.
CompareResult parse_compare_json(const std::string& text);

// parse_compare_json of the file at `path`; its errors name the file (and
// say the errno's text once).
CompareResult read_compare_json(const std::string& path);

// One result of runs of the same comparison (same kernel, device, modes,
// sources and fault-ahead,
// else odp::Error(EINVAL) naming the difference). Per mode, test and size:
// the value is the mean over the runs, the per-round and per-repeat samples
// are every run's in run order (so the i-th samples of two modes still pair
// up), counts add up, the pinned peak is the highest, and a run's error makes
// the row an error naming the run. Goals are evaluated on the merged rows.
CompareResult merge_runs(const std::vector<CompareResult>& runs);

}  // namespace odp_perf
