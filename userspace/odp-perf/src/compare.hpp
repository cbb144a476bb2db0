// odp-perf compare: every registration mode the device supports, side by side
// in one run (server and client in this process over the device's loopback),
// one table with each mode's ratio to pinned, JSON (docs/compare.md) and a plot.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <odp/mirror.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "buffer.hpp"
#include "measure.hpp"
#include "native_check.hpp"
#include "spread.hpp"
#include "traffic.hpp"

namespace odp_perf {

struct CompareConfig {
    std::string device;  // "" = first
    bool cm = false;     // connect through RDMA CM (iWARP devices always do)
    std::optional<std::string> json_path;
    std::optional<std::string> plot_path;
    std::uint64_t bw_iterations = 2000;
    std::uint64_t lat_iterations = 2000;
    // Each test and size runs in this many rounds, the modes taking turns;
    // 6 is the fewest whose ratios give a 95% interval (spread.hpp).
    std::uint32_t rounds = 6;
    std::uint32_t depth = 32;
    std::vector<std::uint64_t> sizes{8, 65536};  // message sizes for every traffic test
    bool sweep = false;                          // sizes: 2 B .. 8 MiB (sweep_sizes)
    // Registration sweep 4 KiB .. reg_max (3 GiB: rxe's max_mr_size is 4 GiB - 1).
    std::uint64_t reg_max = std::uint64_t{3} << 30;
    std::uint64_t budget = std::uint64_t{8} << 20;
    std::uint64_t working_set = std::uint64_t{32} << 20;
    std::uint64_t budget_iterations = 2000;
    // The working-set section (--working-set-sweep; on with --sweep): 64 KiB
    // WRITEs, sequential and random, over these multiples of the budget,
    // each emulated column against pinned over a set of the budget's size.
    // Per point and round: two laps of the set to warm up, then this many
    // writes measured (1024: whole laps of every set up to 8 times 8 MiB).
    bool working_set_sweep = false;
    std::vector<std::uint64_t> working_set_multiples{1, 2, 4, 8};
    std::uint64_t working_set_iterations = 1024;
    int remap_rounds = 6;
    // The fault section (issue 11 items 1 and 2), per emulated column: chunk
    // faults of 1 and of 2 threads over this many fresh chunks, and a
    // streaming WRITE's first pass over a fresh buffer of stream_size (with
    // stream_fault_ahead chunks ahead) against its warm pass; `rounds` rounds
    // of the stream, 4 times as many of the faults (a round of them takes
    // milliseconds: more ratios, a narrower interval).
    std::size_t parallel_fault_chunks = 512;
    std::uint64_t stream_size = std::uint64_t{256} << 20;
    // The emulated mode's invalidation sources, one set of emulated rows each
    // (mode_variants). Empty: the module and userfaultfd when /dev/odp_mirror
    // exists, else whatever Auto picks.
    std::vector<odp::MonitorKind> sources;
    // Emulated buffers of the traffic and budget tests (both sides) register
    // this many chunks ahead of a sequential use (RegionOptions::fault_ahead).
    std::size_t fault_ahead = 0;
    // --only: the sections to run (compare_sections), every one when unset
    // (the working-set section then only with --working-set-sweep or --sweep).
    std::optional<std::set<std::string>> only;
    std::string command_line;  // recorded in the JSON
};

// The sections --only chooses from.
inline constexpr const char* compare_sections[] = {"traffic", "register", "first-touch", "budget",
                                                   "remap",   "faults",   "working-set"};

// The fault section's fault-ahead: --fault-ahead's, else 4 chunks.
inline constexpr std::size_t stream_fault_ahead(std::size_t configured) {
    return configured != 0 ? configured : 4;
}

// One column of the comparison: a registration mode, and for the emulated
// mode the invalidation source that watches it. A process has one source at
// a time (odp::Mirror), so compare switches between them (SourceKeeper).
struct ModeVariant {
    odp::Mode mode = odp::Mode::Pinned;
    odp::MonitorKind source = odp::MonitorKind::Auto;  // emulated only
    std::string label;  // its rows' "mode": pinned, native, emulated, emulated/userfaultfd
};

// Every mode, the emulated one once per source: the first source's rows are
// "emulated" (what the goals read), a further source's "emulated/<source>".
std::vector<ModeVariant> mode_variants(const std::vector<odp::Mode>& modes,
                                       const std::vector<odp::MonitorKind>& sources);

// Keeps the process's Mirror alive with one source between measurements (an
// emulated region of one page), so that registration times are those of a
// process that already watches memory, and switches the source on request.
class SourceKeeper {
  public:
    // `settle`: how long a switch waits for the last region of the old
    // source (such as the in-process server's, freed when its session ends).
    explicit SourceKeeper(odp::Device& device,
                          std::chrono::milliseconds settle = std::chrono::seconds(10));
    // Makes `source` the one emulated regions get (no-op if it is already).
    // Throws odp::Error(EBUSY) if a region of the old source outlives
    // `settle`, or the source's error if it cannot be opened.
    void use(odp::MonitorKind source);
    // The region's monitor ("module", "userfaultfd; ..."); "" before use().
    [[nodiscard]] std::string monitor() const;

  private:
    odp::Device& device_;
    std::chrono::milliseconds settle_;
    MappedBuffer buffer_;
    odp::Region region_;
    odp::MonitorKind source_ = odp::MonitorKind::Auto;
};

// One table row from a mode's rounds of one test and size: counts add up, the
// bandwidth is all bytes over all measured time, the latency percentiles are
// taken over every sample, the pinned peak is the highest.
Row row_from_rounds(const std::vector<ClientResult>& rounds, oob::TestKind test,
                    std::uint64_t size);

// The rows of the working-set section: "working_set_sequential" and
// "working_set_random", size = the working set, budget_bytes = the budget.
inline constexpr const char* kWorkingSetTests[] = {"working_set_sequential", "working_set_random"};
[[nodiscard]] bool is_working_set_test(const std::string& test);
// One row from a mode's rounds of one working-set point: counts add up, the
// bandwidth is all bytes over all measured time, the hit rate is over every
// lookup, each round's bandwidth is kept (round_bw_MBps); the first round
// that failed makes the row that error.
Row row_from_working_set_rounds(const std::vector<Row>& rounds);

struct Goal {
    std::string name;
    std::optional<RatioEstimate> measured;  // the ratio and its interval (spread.hpp)
    std::string target;                     // ">= 0.97", "<= 1.05", ...
    Verdict verdict = Verdict::NotMeasured;
    std::string note;
};

struct CompareResult {
    std::string kernel;
    std::string device;
    std::vector<std::string> modes;
    std::string emulated_monitor;  // the invalidation source emulated mode used
    // Each emulated column's source: "emulated" -> "module", "emulated/userfaultfd" -> ...
    std::map<std::string, std::string> monitors;
    std::string sizes_note;       // why a sweep left sizes out ("" if none)
    std::size_t fault_ahead = 0;  // CompareConfig::fault_ahead
    // How the queue pairs were connected: "endpoint exchange" or "RDMA CM".
    std::string connection;
    // Modes the run left out, and why: "native" -> "siw0 has no native ODP ...".
    std::map<std::string, std::string> absent_modes;
    std::vector<Row> rows;
    std::vector<Goal> goals;
    NativeCheck native_check;
};

// Runs the comparison; progress on stderr when it is a terminal.
CompareResult run_compare(const CompareConfig& config);

void print_table(const CompareResult& result, std::ostream& out);
std::string to_json(const CompareResult& result, const std::string& command_line);
// Writes the plot's data files into `dir` and returns the gnuplot script that
// draws them to `png_path`: bars and points with error bars over their rounds,
// rows whose data check failed not drawn as bars (their label says so) and
// drawn as crosses in the sweep, sizes labelled as people write them.
std::string plot_script(const CompareResult& result, const std::filesystem::path& dir,
                        const std::string& png_path);
// Draws the comparison with gnuplot; throws odp::Error if gnuplot is missing or fails.
void plot(const CompareResult& result, const std::string& png_path);

// Goals of issue 3 computed from the rows: each ratio with its confidence
// interval (spread.hpp), judged met only when the whole interval clears it.
std::vector<Goal> evaluate_goals(const std::vector<Row>& rows);

}  // namespace odp_perf
