// Client-side traffic: bandwidth (a window of work requests in flight) and
// latency (one at a time), perftest style, every buffer used through a Lease.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "session.hpp"

namespace odp_perf {

struct LatencySummary {
    double min_us = 0;
    double p50_us = 0;
    double avg_us = 0;
    double p99_us = 0;
    double max_us = 0;
};
LatencySummary summarize(std::vector<double> samples_us);
// perftest's MB/sec: 2^20 bytes per second (0 when no time passed).
double bandwidth_MBps(std::uint64_t bytes, double seconds);

struct ClientSpec {
    std::string device;  // "" = first
    std::string host;
    std::uint16_t port = 18515;
    oob::TestKind test = oob::TestKind::Write;
    std::uint64_t size = 65536;
    std::uint64_t iterations = 1000;
    std::optional<double> duration_s;      // instead of iterations (bandwidth)
    std::uint64_t latency_iterations = 0;  // 0: no latency phase
    bool bandwidth = true;
    std::uint32_t depth = 64;  // work requests in flight (and server receives)
    // Distinct message buffers cycled through (0: depth). Fewer slots than
    // depth reuse buffers like perftest does (WRITE/READ only).
    std::uint32_t slots = 0;
    odp::Mode mode = odp::Mode::Auto;       // the client's buffer
    odp::Mode peer_mode = odp::Mode::Auto;  // the server's buffer
    std::uint32_t pattern_seed = 0x0d9;
    bool cm = false;              // connect through RDMA CM (iWARP devices always do)
    std::size_t fault_ahead = 0;  // emulated buffer: RegionOptions::fault_ahead
};

struct ClientResult {
    odp::Mode local_mode = odp::Mode::Pinned;
    odp::Mode server_mode = odp::Mode::Pinned;
    std::string local_choice;  // "auto -> emulated (...)"
    oob::Connection connection = oob::Connection::Endpoints;
    std::uint64_t operations = 0;
    std::uint64_t bytes = 0;
    double seconds = 0;
    double bw_MBps = 0;  // MB = 2^20 bytes, as perftest's MB/sec
    double msg_rate_Mpps = 0;
    std::optional<LatencySummary> latency;
    std::vector<double> latency_samples_us;  // what `latency` summarizes
    std::uint64_t verified_bytes = 0;        // by the client (read) and the server (write, send)
    std::uint64_t mismatched_bytes = 0;
    std::uint64_t leases_invalidated = 0;
    odp::Stats local_stats;
    oob::Report server_report;
};

// One client test against a server: connects, warms up, measures bandwidth
// and/or latency, has every byte verified, returns the numbers.
ClientResult run_client_test(odp::Device& device, const ClientSpec& spec);

struct WindowSpec {
    oob::TestKind test = oob::TestKind::Write;
    std::size_t size = 0;
    std::size_t stride = 0;   // next power of two of size
    std::uint32_t depth = 1;  // in flight
    std::uint32_t slots = 0;  // remote slot = op % slots (0: depth)
    std::uint64_t count = 0;
    std::optional<double> duration_s;  // stop posting after this long
    std::size_t local_span = 0;        // local offset = op * stride % span (0: depth * stride)
    // Nonzero: the local offset is instead a pseudo-random multiple of
    // stride within the span, drawn from the op number and this seed.
    std::uint64_t random_seed = 0;
    std::uint64_t first_op = 0;  // op number of the first operation (slot continuity)
    // Nonzero: time every translate whose local offset is a multiple of this
    // (a chunk's first use in a sequential pass: Window::entry_translate_us).
    std::size_t time_translates_every = 0;
};
struct Window {
    std::uint64_t operations = 0;
    double seconds = 0;
    std::uint64_t invalidated = 0;           // leases whose memory changed while in flight
    std::vector<double> entry_translate_us;  // WindowSpec::time_translates_every
};
// Keeps `depth` operations in flight, each through a fresh Lease released on
// its completion, until `count` completed or `duration_s` passed.
Window run_window(PeerLink& link, TestMemory& memory, const WindowSpec& spec);

// Posts the operation of `test` for `lease` (a Write/Read target, or a Send).
void post_operation(PeerLink& link, oob::TestKind test, const odp::Lease& lease,
                    const RemoteTarget& target, std::uint64_t wr_id, bool signaled = true);
// Waits for one completion of `link`; throws odp::Error naming the status.
ibv_wc wait_one(PeerLink& link, std::chrono::milliseconds timeout = 10s);

}  // namespace odp_perf
