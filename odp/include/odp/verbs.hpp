// Small RAII layer over libibverbs: one owner type per verbs object and an RC
// queue-pair helper. Used by libodp itself, odp-perf and the guest tests.
//
// Every factory throws odp::Error naming the call and the device; every
// destructor logs (never throws) a failed destroy.
#pragma once

#include <infiniband/verbs.h>
#include <odp/export.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace odp::verbs {

struct ODP_API ContextDeleter {
    void operator()(ibv_context* context) const noexcept;
};
struct ODP_API PdDeleter {
    void operator()(ibv_pd* pd) const noexcept;
};
struct ODP_API MrDeleter {
    void operator()(ibv_mr* mr) const noexcept;
};
struct ODP_API CqDeleter {
    void operator()(ibv_cq* cq) const noexcept;
};
struct ODP_API QpDeleter {
    void operator()(ibv_qp* qp) const noexcept;
};
struct ODP_API CompChannelDeleter {
    void operator()(ibv_comp_channel* channel) const noexcept;
};
using ContextPtr = std::unique_ptr<ibv_context, ContextDeleter>;
using PdPtr = std::unique_ptr<ibv_pd, PdDeleter>;
using MrPtr = std::unique_ptr<ibv_mr, MrDeleter>;
using CqPtr = std::unique_ptr<ibv_cq, CqDeleter>;
using QpPtr = std::unique_ptr<ibv_qp, QpDeleter>;
using CompChannelPtr = std::unique_ptr<ibv_comp_channel, CompChannelDeleter>;

// Names of the verbs devices present ("rxe0", "mlx5_0", ...).
[[nodiscard]] ODP_API std::vector<std::string> device_names();

// Opens the device called `name`, or the first device if `name` is empty.
// Throws odp::Error(ENODEV) listing the devices present when there is none or
// no such device, and names the device and /dev/infiniband when opening fails
// (EACCES: no permission).
[[nodiscard]] ODP_API ContextPtr open_device(std::string_view name);

// The device name of an open context.
[[nodiscard]] ODP_API std::string device_name(ibv_context& context);

[[nodiscard]] ODP_API PdPtr alloc_pd(ibv_context& context);

// ibv_reg_mr; `ibv_access` is IBV_ACCESS_* flags (add IBV_ACCESS_ON_DEMAND for
// an ODP MR; address nullptr and length SIZE_MAX for an implicit ODP MR).
[[nodiscard]] ODP_API MrPtr reg_mr(ibv_pd& pd, void* address, std::size_t length, int ibv_access);

[[nodiscard]] ODP_API CqPtr create_cq(ibv_context& context, int min_entries);

// What a peer needs to connect an RC QP to this one (exchange it out of band).
struct Endpoint {
    std::uint32_t qp_num = 0;
    std::uint32_t psn = 0;
    ibv_gid gid{};          // RoCE / global routing; zero on IB without GRH
    std::uint16_t lid = 0;  // InfiniBand only; 0 on RoCE
    std::uint8_t port = 1;
    std::uint8_t gid_index = 0;
    ibv_mtu mtu = IBV_MTU_1024;  // active MTU of the port
};
// "qp 17 psn 0x1234 lid 0 gid ::ffff:192.0.2.1 (index 1) port 1 mtu 1024"
[[nodiscard]] ODP_API std::string to_string(const Endpoint& endpoint);
// Fixed-size wire form (network byte order) for out-of-band exchange.
inline constexpr std::size_t endpoint_wire_size = 32;
[[nodiscard]] ODP_API std::array<std::uint8_t, endpoint_wire_size> to_wire(
    const Endpoint& endpoint);
// Throws odp::Error(EPROTO) for a malformed message (bad MTU value).
[[nodiscard]] ODP_API Endpoint from_wire(std::span<const std::uint8_t, endpoint_wire_size> wire);

// Chooses the GID index for `port`: on RoCE the first RoCE v2 entry with an
// IPv4-mapped address (what rxe on an IPv4 netdev provides), else the first
// RoCE v2 entry, else the first non-zero entry; on InfiniBand 0. Throws
// odp::Error(ENOENT) when a RoCE port has no usable GID (no IP address on the
// netdev: `ip addr add` one).
[[nodiscard]] ODP_API std::uint8_t choose_gid_index(ibv_context& context, std::uint8_t port);

// An RC queue pair with the usual connection dance. Create it, exchange
// local_endpoint() with the peer, call connect(peer), then post.
class ODP_API RcQueuePair {
  public:
    struct Options {
        std::uint8_t port = 1;
        int gid_index = -1;  // -1: choose_gid_index()
        std::uint32_t max_send_wr = 64;
        std::uint32_t max_recv_wr = 64;
        std::uint32_t max_send_sge = 4;
        std::uint32_t max_recv_sge = 4;
        std::uint32_t max_inline_data = 0;
        int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                     IBV_ACCESS_REMOTE_ATOMIC;  // what the peer may do to this QP's MRs
        std::uint8_t max_rd_atomic = 1;         // outstanding RDMA READ/atomic, both ways
        std::uint8_t timeout = 14;              // 4.096 us * 2^14 = 67 ms
        std::uint8_t retry_cnt = 7;
        std::uint8_t rnr_retry = 7;  // 7: retry forever on receiver-not-ready
        std::uint8_t min_rnr_timer = 12;
        ibv_mtu max_mtu = IBV_MTU_4096;  // path MTU = min(local active, peer, max_mtu)
        std::uint32_t psn = 0;           // 0: random
    };

    RcQueuePair(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq, const Options& options);
    RcQueuePair(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq);

    [[nodiscard]] const Endpoint& local_endpoint() const noexcept { return local_; }
    // RESET -> INIT -> RTR -> RTS against `peer`.
    void connect(const Endpoint& peer);

    // Posting; `sges` may be empty (zero-length operations). Throws
    // odp::Error naming the operation on failure (ENOMEM: send queue full).
    void post_write(std::span<const ibv_sge> sges, std::uint64_t remote_address, std::uint32_t rkey,
                    std::uint64_t wr_id, bool signaled = true);
    // A READ into more SGEs than the device's max_sge_rd (siw: 1) is posted
    // as several work requests, over consecutive remote bytes; only the last
    // is signaled (one completion, `wr_id`), all take send-queue slots.
    void post_read(std::span<const ibv_sge> sges, std::uint64_t remote_address, std::uint32_t rkey,
                   std::uint64_t wr_id, bool signaled = true);
    void post_send(std::span<const ibv_sge> sges, std::uint64_t wr_id, bool signaled = true);
    void post_recv(std::span<const ibv_sge> sges, std::uint64_t wr_id);

    [[nodiscard]] ibv_qp& qp() const noexcept { return *qp_; }

  private:
    void post(ibv_send_wr& wr, const char* what);

    QpPtr qp_;
    Options options_;
    Endpoint local_;
    std::string device_;
    std::size_t max_read_sge_ = 1;  // the device's max_sge_rd
};

// Polls `cq` until `count` completions arrived or `timeout` passed; returns
// the completions (any status). Busy-polls: for tests and benchmarks.
[[nodiscard]] ODP_API std::vector<ibv_wc> poll(ibv_cq& cq, std::size_t count,
                                               std::chrono::milliseconds timeout);

// Polls one completion; throws odp::Error(ETIMEDOUT) when none arrives in
// time and odp::Error(EIO) naming ibv_wc_status_str() when it failed.
ODP_API ibv_wc wait_completion(ibv_cq& cq, std::chrono::milliseconds timeout);

}  // namespace odp::verbs
