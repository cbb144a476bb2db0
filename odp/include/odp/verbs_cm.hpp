// Connection setup through the RDMA connection manager (librdmacm), next to
// the out-of-band Endpoint exchange of verbs.hpp.  RoCE devices can use
// either; iWARP devices (siw) connect only this way.
//
// The client resolves the server's address and route, creates its RC queue
// pair on the device the address resolved to, and connects, sending a few
// bytes of private data (the out-of-band values: an rkey, an address, a
// mode); the server's listener hands out each connection request with the
// client's private data, and the server accepts it with a queue pair of its
// own and its reply.  The queue pairs are ordinary RcQueuePairs on the
// caller's PD, so memory registered through odp::Device works with them.
//
// Every step that fails throws odp::Error naming the step, the address and
// what to check; every CM object has one owner (destroyed in its destructor).
#pragma once

#include <infiniband/verbs.h>
#include <odp/export.h>
#include <rdma/rdma_cma.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <odp/verbs.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace odp::verbs {

struct ODP_API EventChannelDeleter {
    void operator()(rdma_event_channel* channel) const noexcept;
};
struct ODP_API CmIdDeleter {
    void operator()(rdma_cm_id* id) const noexcept;
};
using EventChannelPtr = std::unique_ptr<rdma_event_channel, EventChannelDeleter>;
using CmIdPtr = std::unique_ptr<rdma_cm_id, CmIdDeleter>;

// Private data: what fits every transport's connect request and reply (an
// InfiniBand/RoCE REQ carries 56 bytes after the CM's own header), framed as
// "OD", version, payload length, payload.  The frame's length matters
// because InfiniBand pads private data to its full size.
inline constexpr std::size_t cm_private_data_max = 56;
inline constexpr std::size_t cm_private_data_header = 4;
inline constexpr std::size_t cm_payload_max = cm_private_data_max - cm_private_data_header;
// Throws odp::Error(EMSGSIZE) for a payload over cm_payload_max bytes.
[[nodiscard]] ODP_API std::vector<std::uint8_t> encode_cm_private_data(
    std::span<const std::uint8_t> payload);
// The payload; throws odp::Error(EPROTO) for data that is not such a frame
// (too short, another magic or version, a length past the end).
[[nodiscard]] ODP_API std::vector<std::uint8_t> decode_cm_private_data(
    std::span<const std::uint8_t> data);

// "rdma_resolve_addr(198.51.100.1:18515): expected RDMA_CM_EVENT_ADDR_RESOLVED,
// got RDMA_CM_EVENT_ADDR_ERROR (status -19: No such device): ..." with what to
// check for that event.
[[nodiscard]] ODP_API std::string describe_cm_event_failure(std::string_view step,
                                                            rdma_cm_event_type expected,
                                                            rdma_cm_event_type got, int status);

struct CmOptions {
    std::chrono::milliseconds timeout{5000};  // each step: resolve, connect, accept
    RcQueuePair::Options qp;                  // port and GID come from the CM
    // Called with the new queue pair before the connection is set up: post
    // the first receives here.  iWARP has no receiver-not-ready retry: a SEND
    // that finds no receive posted breaks the connection, and the peer may
    // send as soon as it sees the connection established.
    std::function<void(RcQueuePair&)> before_connect;
};

// A queue pair connected through RDMA CM, with the CM id that connected it
// (its destructor disconnects).  Created by cm_connect() or CmRequest::accept().
class ODP_API CmConnection {
  public:
    CmConnection(EventChannelPtr channel, CmIdPtr id, RcQueuePair qp,
                 std::vector<std::uint8_t> peer_payload);
    CmConnection(CmConnection&&) noexcept = default;
    CmConnection& operator=(CmConnection&&) noexcept = default;
    ~CmConnection();

    [[nodiscard]] RcQueuePair& qp() noexcept { return *qp_; }
    // The payload of the peer's private data (its connect request or reply).
    [[nodiscard]] std::span<const std::uint8_t> peer_payload() const noexcept {
        return peer_payload_;
    }
    [[nodiscard]] std::string device() const;

  private:
    // Destroyed in reverse: the CM id (it holds the QP on iWARP) before the
    // QP, the event channel last.
    EventChannelPtr channel_;
    std::optional<RcQueuePair> qp_;
    CmIdPtr id_;
    std::vector<std::uint8_t> peer_payload_;
};

// The device a host address resolves to through RDMA CM (what to open
// before cm_connect(), so that its PD and CQs are on the right device).
[[nodiscard]] ODP_API std::string cm_resolve_device(std::string_view host, std::uint16_t port,
                                                    std::chrono::milliseconds timeout);

// The IPv4 address of this host that RDMA CM resolves to `device`: the
// address of its network interface, for connections from the device to
// itself.  Addresses of loopback interfaces are not considered (RDMA CM binds
// 127.0.0.1 to whichever device comes first).  Throws odp::Error(EADDRNOTAVAIL)
// naming the device and the addresses tried when none leads to it.
[[nodiscard]] ODP_API std::string cm_device_address(std::string_view device,
                                                    std::chrono::milliseconds timeout);

// Client: resolves host:port, checks `pd` is on the device it resolved to,
// creates the RC QP there and connects with `payload` as private data.
[[nodiscard]] ODP_API CmConnection cm_connect(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq,
                                              std::string_view host, std::uint16_t port,
                                              std::span<const std::uint8_t> payload,
                                              const CmOptions& options = {});

// A connection request received by a CmListener: accept it (once) or let it
// go (the destructor rejects it).
class ODP_API CmRequest {
  public:
    CmRequest(EventChannelPtr channel, CmIdPtr id, std::vector<std::uint8_t> payload);
    CmRequest(CmRequest&&) noexcept = default;
    CmRequest& operator=(CmRequest&&) noexcept = default;
    ~CmRequest();

    // The device the request arrived on: open it for the PD and CQs.
    [[nodiscard]] std::string device() const;
    [[nodiscard]] std::span<const std::uint8_t> payload() const noexcept { return payload_; }
    // Creates the RC QP on `pd` (on device()), accepts with `reply` as
    // private data and waits until the connection is established.
    [[nodiscard]] CmConnection accept(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq,
                                      std::span<const std::uint8_t> reply,
                                      const CmOptions& options = {});

  private:
    EventChannelPtr channel_;  // the request's own, after the listener's
    CmIdPtr id_;
    std::vector<std::uint8_t> payload_;
};

// An RC connection from one device to itself (loopback), for programs and
// tests that have one device.  InfiniBand and RoCE connect one queue pair to
// itself.  iWARP cannot (the kernel drives the connection over TCP, which
// needs two ends): there a second queue pair on the same PD is connected
// through RDMA CM at the device's own address (cm_device_address()).
// Either way qp()'s RDMA targets may be any memory registered on `pd`.
class ODP_API LoopbackConnection {
  public:
    LoopbackConnection(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq, const CmOptions& options = {});

    // Post work requests here.
    [[nodiscard]] RcQueuePair& qp() noexcept;
    // The other end, where qp()'s SENDs arrive (qp() itself when it is
    // connected to itself): post their receives here.
    [[nodiscard]] RcQueuePair& peer() noexcept;
    // True when the two ends are connected through RDMA CM (iWARP).
    [[nodiscard]] bool through_cm() const noexcept { return active_.has_value(); }

  private:
    std::optional<RcQueuePair> self_;      // InfiniBand, RoCE
    std::optional<CmConnection> active_;   // iWARP: the end that posts ...
    std::optional<CmConnection> passive_;  // ... and the one it connected to
};

// Server: listens on address:port ("0.0.0.0" for every address, port 0 for
// any free one).
class ODP_API CmListener {
  public:
    CmListener(std::string_view address, std::uint16_t port, int backlog = 16);
    [[nodiscard]] std::uint16_t port() const;
    // Waits for the next connection request; throws odp::Error(ETIMEDOUT)
    // when none arrives in time and odp::Error(EPROTO) for a request whose
    // private data is not odp-layer's.
    [[nodiscard]] CmRequest next_request(std::chrono::milliseconds timeout);

  private:
    EventChannelPtr channel_;
    CmIdPtr id_;
    std::string address_;
};

}  // namespace odp::verbs
