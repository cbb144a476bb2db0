// RDMA transfers between two libodp regions over one RC QP connected to
// itself (rxe0 loopback), each through the library's leases (the local side)
// and exposures (the side a peer reaches with an rkey):
//   write: source lease (the data), target exposure (the peer's RDMA WRITE lands there)
//   read:  source exposure (the peer reads it), target lease (the READ response lands there)
//   send:  source lease (SEND), target lease (the posted RECV)
// start() posts the work requests and waits for their completions; the
// caller then releases (Held::release) and checks the bytes.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <odp/device.hpp>
#include <odp/region.hpp>
#include <odp/verbs.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace odp::stress {

enum class Operation : std::uint8_t { Write, Read, Send };
inline constexpr std::array all_operations = {Operation::Write, Operation::Read, Operation::Send};
inline constexpr std::size_t operation_count = all_operations.size();
[[nodiscard]] std::string_view name_of(Operation operation) noexcept;
[[nodiscard]] std::optional<Operation> parse_operation(std::string_view name) noexcept;

// The SGEs covering bytes [offset, offset + length) of the concatenation of `sges`.
[[nodiscard]] std::vector<ibv_sge> slice_sges(std::span<const ibv_sge> sges, std::size_t offset,
                                              std::size_t length);

// What one transfer holds until the caller has decided: its leases and exposure.
struct Held {
    Lease source_lease;
    Lease target_lease;
    Exposure source_exposure;
    Exposure target_exposure;

    // Releases everything; true if any release reported a change.
    bool release() noexcept;
};

// One work request of the transfer in flight, for the report of a failure.
struct PostedRequest {
    std::uint64_t wr_id = 0;
    const char* opcode = "";     // "RDMA WRITE", "RDMA READ", "SEND", "RECV"
    std::vector<ibv_sge> local;  // lkeys: the lease's MRs
    std::uint64_t remote_address = 0;
    std::uint32_t rkey = 0;  // the exposure's MR (WRITE/READ only)
};

// A completion with an error status: the first one of the transfer, the
// requests it posted and the QP's state when it was seen.
struct FailedCompletion {
    std::uint64_t wr_id = 0;
    ibv_wc_status status = IBV_WC_SUCCESS;
    std::uint32_t vendor_err = 0;
    std::size_t completed_before = 0;  // successful completions of the transfer before it
    std::vector<PostedRequest> posted;
    std::string qp_state;
    // The requests of the QP's transfers before, which completed: a late
    // duplicate of one of them (a retransmission) still reaches the responder.
    std::vector<PostedRequest> earlier;

    [[nodiscard]] std::string describe() const;
};

class Loopback {
  public:
    // One CQ and one RC QP on `device`'s PD, connected to itself; `max_sge`
    // SGEs per work request, local ACK timeout 4.096 us * 2^`ack_timeout`.
    Loopback(Device& device, std::uint32_t max_sge, std::uint8_t ack_timeout);
    Loopback(const Loopback&) = delete;
    Loopback& operator=(const Loopback&) = delete;

    // Translates/exposes [source, +length) of `source_region` and
    // [target, +length) of `target_region` as `operation` needs, posts the
    // transfer and waits until every work request completed. Throws
    // odp::Error from the library (EFAULT: memory unmapped at that moment,
    // EAGAIN: the mapping kept changing; the caller retries) and
    // odp::Error(EIO/ETIMEDOUT) for a failed or missing completion; after
    // EIO, failure() describes the first failed completion.
    void run(Operation operation, Region& source_region, const unsigned char* source,
             Region& target_region, unsigned char* target, std::size_t length, Held& held);

    [[nodiscard]] const std::optional<FailedCompletion>& failure() const noexcept {
        return failure_;
    }

  private:
    void post_and_wait(Operation operation, Region& source_region, const unsigned char* source,
                       Region& target_region, unsigned char* target, std::size_t length,
                       Held& held);
    void wait_for(std::size_t completions);
    [[nodiscard]] std::string qp_state() const;

    std::uint32_t max_sge_;
    verbs::CqPtr cq_;
    std::optional<verbs::RcQueuePair> qp_;
    std::uint64_t wr_id_ = 0;
    std::vector<PostedRequest> posted_;    // the transfer in flight
    std::deque<PostedRequest> completed_;  // the last requests that completed
    std::optional<FailedCompletion> failure_;
};

}  // namespace odp::stress
