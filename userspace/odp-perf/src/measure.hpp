// The ODP measurements of odp-perf compare (issue 3 item 3): registration time
// against size, first touch against warm, prefetch, a working set larger than
// the pinned budget, and traffic while the application remaps its buffers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "session.hpp"

namespace odp_perf {

// One result: one object of the compare JSON (docs/compare.md).
struct Row {
    std::string mode;         // pinned | native | emulated (the client's buffer)
    std::string server_mode;  // the server's buffer ("" when no peer was involved)
    std::string test;  // write | read | send | register | first_touch | prefetch | budget | remap
    std::uint64_t size = 0;  // bytes per message, or bytes registered
    std::uint64_t iterations = 0;
    std::uint32_t depth = 0;  // work requests in flight (traffic tests)
    std::optional<double> bw_MBps;
    std::optional<double> lat_us_p50;
    std::optional<double> lat_us_p99;
    std::optional<double> reg_us;
    std::optional<double> first_touch_us;  // translate() of the cold range (see docs/compare.md)
    std::optional<double> first_write_us;  // the whole first RDMA WRITE, translate included
    std::optional<double> warm_us;         // the same write, warm (median of 5)
    std::optional<double> prefetch_us;
    std::optional<double> hit_rate;
    std::optional<std::uint64_t> budget_bytes;
    std::uint64_t pinned_bytes_peak = 0;
    std::uint64_t faults = 0;
    std::uint64_t invalidations = 0;
    std::uint64_t fault_ahead_hits = 0;  // chunks faulted ahead that a lease used
    std::uint64_t verified_bytes = 0;
    std::uint64_t mismatched_bytes = 0;
    std::string error;  // why this measurement could not be made ("" if it was)
    // One value per round (traffic) or per repeat (registration, cold
    // starts), in the order taken; the modes take turns, so the i-th values
    // of two modes pair up into the i-th ratio (spread.hpp).
    std::vector<double> round_bw_MBps;
    std::vector<double> round_lat_us_p50;
    std::vector<double> reg_us_samples;
    std::vector<double> first_touch_us_samples;
};

struct Peer {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
    bool cm = false;  // connect the queue pairs through RDMA CM, at `host`
};

// Registration time of a populated buffer of each size in `sizes`.
std::vector<Row> measure_registration(odp::Device& device, odp::Mode mode,
                                      const std::vector<std::uint64_t>& sizes);

// A mode's first-touch row (test first_touch, or prefetch), one cold start
// at a time so that modes can take turns: each cold start registers a fresh
// populated buffer of `size` bytes and times its registration and its first
// translate (with `prefetch`, Region::prefetch runs first, timed); the times
// are medians over the counted cold starts. One cold start with `move_data`
// also makes the first RDMA WRITE of the buffer, against the same write warm.
// A cold start's error becomes the row's, and later ones do nothing.
class FirstTouch {
  public:
    FirstTouch(odp::Mode mode, std::uint64_t size, bool prefetch);
    void cold_start(odp::Device& device, const Peer& peer, bool counted, bool move_data);
    [[nodiscard]] Row finish() &&;

  private:
    Row row_;
    odp::Mode mode_;
    bool prefetch_;
    std::vector<double> registrations_;
    std::vector<double> prefetches_;
    std::vector<double> first_touches_;
};

// 64 KiB WRITEs over a working set through a device with a pinned budget.
struct WorkingSetSpec {
    std::string test = "budget";  // the row's test
    std::uint64_t budget = 0;
    std::uint64_t working_set = 0;
    bool random = false;        // at random offsets, else cycling through the set
    std::uint64_t warm_up = 0;  // writes before the measured ones (not counted)
    std::uint64_t iterations = 0;
    std::size_t fault_ahead = 0;  // chunks (emulated buffer)
};
Row measure_budget(const std::string& device_name, const Peer& peer, odp::Mode mode,
                   const WorkingSetSpec& spec);

// Chunk faults of one thread against two (issue 11 item 1): per round, a
// fresh region over `chunks` populated chunks faulted by one thread, and
// another faulted by two (every other chunk each), the order alternating
// between rounds. Rows "faults_1_thread" and "faults_2_threads" (size: the
// bytes faulted); first_touch_us: wall time per chunk fault, the median of
// one sample per round (first_touch_us_samples). The device's budget must
// hold every chunk (the measured faults evict nothing).
inline constexpr const char* kFaultThreadTests[] = {"faults_1_thread", "faults_2_threads"};
std::vector<Row> measure_parallel_faults(odp::Device& device, odp::Mode mode, std::size_t chunks,
                                         std::uint32_t rounds);

// The first pass of a streaming RDMA WRITE (64 KiB messages in address
// order) over a fresh emulated buffer against a second, warm pass (issue 11
// item 2). Per round, a fresh region with fault-ahead gives "first_pass" and
// "warm_pass", a fresh one without it "first_pass_demand". bw_MBps over all
// rounds, round_bw_MBps one per round; first_touch_us: the translate at each
// chunk's first use in a first pass, the median of one median per round.
struct StreamSpec {
    std::uint64_t size = std::uint64_t{256} << 20;
    std::size_t fault_ahead = 4;  // chunks
    std::uint32_t rounds = 6;
};
inline constexpr const char* kStreamTests[] = {"first_pass", "warm_pass", "first_pass_demand"};
std::vector<Row> measure_stream_passes(const std::string& device_name, const Peer& peer,
                                       odp::Mode mode, const StreamSpec& spec);

// Rounds of WRITE + READ-back with the source and target buffers remapped
// (munmap + mmap MAP_FIXED) between rounds; every byte read back is checked
// against what the current mapping held.
Row measure_remap(odp::Device& device, const Peer& peer, odp::Mode mode, int rounds);

}  // namespace odp_perf
