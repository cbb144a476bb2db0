// One odp-perf test connection: the verbs side (device, region, CQ, RC QP)
// joined to the out-of-band exchange.  The server side is a coroutine per
// client (serve()); the client side is a synchronous facade (PeerLink) over
// the same coroutines, each step still bounded by its deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <odp/device.hpp>
#include <odp/region.hpp>
#include <odp/verbs.hpp>
#include <odp/verbs_cm.hpp>
#include <optional>
#include <string>
#include <thread>

#include "buffer.hpp"
#include "oob_channel.hpp"

namespace odp_perf {

using namespace std::chrono_literals;

odp::Mode to_mode(oob::WireMode mode);
oob::WireMode to_wire(odp::Mode mode);
oob::Endpoint to_wire(const odp::verbs::Endpoint& endpoint, odp::Mode mode);
odp::verbs::Endpoint from_wire(const oob::Endpoint& endpoint);
// How a client connects its queue pair: through RDMA CM when asked (--cm),
// and always on an iWARP device, which connects no other way.
oob::Connection choose_connection(bool cm_asked, bool iwarp_device);
// True for an iWARP device (siw); false for a fake NIC.
bool is_iwarp(const odp::Device& device);

// "auto -> emulated (rxe0 has no native ODP for RC write)" or "pinned".
std::string describe_choice(const odp::Device& device, odp::Mode requested, odp::Access access);

// Registration modes the device can do for `access` (pinned and emulated
// always, native when its ODP caps cover it).
std::vector<odp::Mode> supported_modes(const odp::Device& device, odp::Access access);
// Why native mode is not among supported_modes() ("" when it is): "siw0 has
// no native ODP (Auto picks emulated)".
std::string native_absence(const odp::Device& device, odp::Access access);

// Region options for test buffers: chunks at least as large as one slot so a
// message never straddles two chunks (one remote segment = one rkey per op);
// emulated buffers fault `fault_ahead` chunks ahead (--fault-ahead).
odp::RegionOptions region_options(odp::Mode mode, std::size_t slot_stride,
                                  std::size_t fault_ahead = 0);

// A test buffer and its region (the region is dropped first).
struct TestMemory {
    MappedBuffer buffer;
    odp::Region region;
};

struct ServerConfig {
    std::string device;  // "" = first device
    std::uint16_t port = 18515;
    std::uint64_t max_buffer_bytes = std::uint64_t{1} << 30;  // refuse larger Hello requests
    std::chrono::milliseconds step_timeout = 10s;
    std::chrono::milliseconds traffic_timeout = 600s;  // wait for Done while traffic runs
    bool verbose = false;
    bool quiet = false;
    std::size_t fault_ahead = 0;  // emulated buffers: RegionOptions::fault_ahead
    std::uint64_t exit_after =
        0;  // stop after this many sessions ended (0: run until stopped)  // drop per-connection
            // failure logs (compare: its own client ends them)
};

// The server's per-client session: Hello -> resources -> Welcome -> (traffic)
// -> Done -> verify -> Report.
oob::SessionHandler make_server_session(std::shared_ptr<odp::Device> device,
                                        const ServerConfig& config);

// Runs `odp-perf server` until `stop` (checked every 100 ms) becomes true or
// config.exit_after sessions ended; returns true if any session failed.
bool run_server(const ServerConfig& config, const std::atomic<bool>& stop,
                std::function<void(std::uint16_t)> on_listening = {});

struct LinkSpec {
    std::string host;
    std::uint16_t port = 18515;
    oob::TestKind test = oob::TestKind::Write;
    odp::Mode server_mode = odp::Mode::Pinned;
    std::uint64_t message_size = 0;
    std::uint64_t buffer_size = 0;
    std::uint32_t depth = 64;  // outstanding work requests (and server receives)
    std::uint32_t pattern_seed = 1;
    std::chrono::milliseconds step_timeout = 10s;
    bool cm = false;  // connect through RDMA CM (iWARP devices always do), at `host`
};

// Where a remote op lands: address and the rkey covering it.
struct RemoteTarget {
    std::uint64_t address = 0;
    std::uint32_t rkey = 0;
};

// The client's connection to a server: CQ, QP, and what the server exposed.
class PeerLink {
  public:
    // Connects, creates the CQ and QP, exchanges Hello/Welcome and connects
    // the QP. `local_mode`: the mode of the client's own buffer (reported).
    PeerLink(odp::Device& device, const LinkSpec& spec, odp::Mode local_mode);
    PeerLink(const PeerLink&) = delete;
    PeerLink& operator=(const PeerLink&) = delete;
    ~PeerLink();

    odp::verbs::RcQueuePair& qp() { return cm_ ? cm_->qp() : *qp_; }
    oob::Connection connection() const { return connection_; }
    ibv_cq& cq() { return *cq_; }
    odp::Mode server_mode() const { return server_mode_; }
    std::uint64_t remote_size() const { return remote_size_; }
    // The remote address and rkey for [offset, offset + length) of the
    // server's buffer; throws odp::Error(ERANGE) if it straddles two segments.
    RemoteTarget remote(std::uint64_t offset, std::uint64_t length) const;
    // Before each SEND: on iWARP (no receiver-not-ready retry) waits until
    // the server has posted a receive for it (the count of receives it
    // RDMA-writes into this link's credit word); throws odp::Error(ETIMEDOUT)
    // when none comes in time. Does nothing on other transports.
    void await_receive(std::chrono::milliseconds timeout = 10s);
    // Sends Done, waits for the server's Report.
    oob::Report finish(const oob::Done& done, std::chrono::milliseconds timeout = 600s);

  private:
    oob::asio::io_context io_;
    std::unique_ptr<oob::Channel> channel_;
    odp::verbs::CqPtr cq_;
    std::vector<std::uint64_t> credit_;  // send test on iWARP: receives the server posted
    odp::verbs::MrPtr credit_mr_;
    std::uint64_t sends_ = 0;
    oob::Connection connection_ = oob::Connection::Endpoints;
    std::optional<odp::verbs::RcQueuePair> qp_;   // Endpoints
    std::optional<odp::verbs::CmConnection> cm_;  // RdmaCm (goes before the CQ)
    std::vector<oob::RemoteRange> ranges_;
    std::uint64_t remote_base_ = 0;
    std::uint64_t remote_size_ = 0;
    odp::Mode server_mode_ = odp::Mode::Pinned;
};

}  // namespace odp_perf
