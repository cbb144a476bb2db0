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

// First RDMA WRITE of `size` bytes from a freshly registered buffer against
// the same write warm; with `prefetch`, Region::prefetch runs first (timed).
Row measure_first_touch(odp::Device& device, const Peer& peer, odp::Mode mode, std::uint64_t size,
                        bool prefetch);

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

// Rounds of WRITE + READ-back with the source and target buffers remapped
// (munmap + mmap MAP_FIXED) between rounds; every byte read back is checked
// against what the current mapping held.
Row measure_remap(odp::Device& device, const Peer& peer, odp::Mode mode, int rounds);

}  // namespace odp_perf
