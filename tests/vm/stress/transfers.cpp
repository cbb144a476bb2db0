#include "transfers.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <odp/error.hpp>
#include <string>
#include <thread>

namespace odp::stress {

namespace {

using namespace std::chrono_literals;

// Under software emulation a transfer of 512 KiB takes milliseconds; a
// minute without its completion means the QP is stuck.
constexpr auto completion_timeout = 60s;

// Requests of earlier transfers a failure report lists.
constexpr std::size_t remembered_requests = 8;

constexpr std::array<std::string_view, operation_count> operation_names = {"write", "read", "send"};

}  // namespace

std::string_view name_of(Operation operation) noexcept {
    return operation_names[static_cast<std::size_t>(operation)];
}

std::optional<Operation> parse_operation(std::string_view name) noexcept {
    for (const Operation operation : all_operations) {
        if (name_of(operation) == name) {
            return operation;
        }
    }
    return std::nullopt;
}

std::vector<ibv_sge> slice_sges(std::span<const ibv_sge> sges, std::size_t offset,
                                std::size_t length) {
    std::vector<ibv_sge> out;
    std::size_t at = 0;  // offset of the current SGE in the concatenation
    for (const ibv_sge& sge : sges) {
        const std::size_t begin = std::max(offset, at);
        const std::size_t end = std::min(offset + length, at + sge.length);
        if (begin < end) {
            out.push_back(ibv_sge{sge.addr + (begin - at), static_cast<std::uint32_t>(end - begin),
                                  sge.lkey});
        }
        at += sge.length;
    }
    return out;
}

bool Held::release() noexcept {
    // Every one is released even when an earlier one reported a change.
    const bool source_changed = source_lease.release() | source_exposure.release();
    const bool target_changed = target_lease.release() | target_exposure.release();
    return source_changed || target_changed;
}

namespace {

void append_requests(std::string& text, const auto& requests) {
    char line[160];
    for (const PostedRequest& request : requests) {
        std::snprintf(line, sizeof line, "\n      wr %llu %s",
                      static_cast<unsigned long long>(request.wr_id), request.opcode);
        text += line;
        for (const ibv_sge& sge : request.local) {
            std::snprintf(line, sizeof line, " [%s +%u lkey 0x%x]",
                          format_address(sge.addr).c_str(), sge.length, sge.lkey);
            text += line;
        }
        if (request.rkey != 0) {
            std::snprintf(line, sizeof line, " remote %s rkey 0x%x",
                          format_address(request.remote_address).c_str(), request.rkey);
            text += line;
        }
    }
}

}  // namespace

std::string FailedCompletion::describe() const {
    std::string text = "work request " + std::to_string(wr_id) + " completed with " +
                       ibv_wc_status_str(status) + " (vendor error " + std::to_string(vendor_err) +
                       "), the transfer's first failed completion (" +
                       std::to_string(completed_before) + " of its completions succeeded before)";
    if (status == IBV_WC_WR_FLUSH_ERR) {
        // rxe's responder moves a loopback QP (requester and responder are
        // one QP) to the error state before its NAK reaches the requester's
        // completer, which then flushes instead of reporting the NAK.
        text +=
            "; a flush first on a loopback QP: its responder side failed (an rkey or access "
            "violation, e.g. on a late duplicate of an earlier READ whose MR is gone, or a RECV "
            "it could not use)";
    }
    text += "; QP state " + qp_state + "; the transfer posted:";
    append_requests(text, posted);
    text += "\n    the QP's requests before it (completed):";
    append_requests(text, earlier);
    return text;
}

Loopback::Loopback(Device& device, std::uint32_t max_sge, std::uint8_t ack_timeout)
    : max_sge_(max_sge) {
    cq_ = verbs::create_cq(*device.context(), 64);
    verbs::RcQueuePair::Options options;
    options.timeout = ack_timeout;
    options.max_send_sge = max_sge;
    options.max_recv_sge = max_sge;
    qp_.emplace(*device.pd(), *cq_, *cq_, options);
    qp_->connect(qp_->local_endpoint());
}

// Polls like verbs::poll, but yields the CPU between empty polls: the guests
// have two vCPUs, shared by the workers, the changers and rxe's own kernel
// threads, which a busy loop would starve.
void Loopback::wait_for(std::size_t completions) {
    const auto deadline = std::chrono::steady_clock::now() + completion_timeout;
    std::size_t done = 0;
    std::uint64_t empty_polls = 0;
    while (done < completions) {
        ibv_wc wc{};
        const int got = ibv_poll_cq(cq_.get(), 1, &wc);
        if (got < 0) {
            throw_error(EIO, "ibv_poll_cq failed: the CQ overran or the device is in error");
        }
        if (got == 0) {
            if (++empty_polls % 64 == 0 && std::chrono::steady_clock::now() >= deadline) {
                throw_error(ETIMEDOUT, "only " + std::to_string(done) + " of " +
                                           std::to_string(completions) + " completions within " +
                                           std::to_string(completion_timeout.count()) + " s");
            }
            std::this_thread::yield();
            continue;
        }
        if (wc.status != IBV_WC_SUCCESS) {
            failure_ = FailedCompletion{wc.wr_id,
                                        wc.status,
                                        wc.vendor_err,
                                        done,
                                        posted_,
                                        qp_state(),
                                        {completed_.begin(), completed_.end()}};
            throw_error(EIO, failure_->describe());
        }
        ++done;
    }
    for (const PostedRequest& request : posted_) {
        if (completed_.size() == remembered_requests) {
            completed_.pop_front();
        }
        completed_.push_back(request);
    }
}

namespace {

// The process's mappings of the verbs device files (rdma-core maps each
// rxe queue from /dev/infiniband/uverbsN): a post that finds its send queue
// full with nothing outstanding means the queue's mapping changed under it.
std::string verbs_mappings() {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    std::string text;
    std::size_t count = 0;
    while (std::getline(maps, line)) {
        if (line.find("/dev/infiniband/") != std::string::npos) {
            ++count;
            text += "\n      " + line;
        }
    }
    return std::to_string(count) + " mappings of /dev/infiniband/*:" + text;
}

}  // namespace

std::string Loopback::qp_state() const {
    ibv_qp_attr attributes{};
    ibv_qp_init_attr init{};
    if (ibv_query_qp(&qp_->qp(), &attributes, IBV_QP_STATE, &init) != 0) {
        return "unknown (ibv_query_qp failed)";
    }
    switch (attributes.qp_state) {
        case IBV_QPS_RTS:
            return "RTS";
        case IBV_QPS_SQE:
            return "SQE";
        case IBV_QPS_ERR:
            return "ERR";
        default:
            return std::to_string(attributes.qp_state);
    }
}

void Loopback::run(Operation operation, Region& source_region, const unsigned char* source,
                   Region& target_region, unsigned char* target, std::size_t length, Held& held) {
    posted_.clear();
    try {
        post_and_wait(operation, source_region, source, target_region, target, length, held);
    } catch (const Error& error) {
        if (error.errno_value() != ENOMEM) {
            throw;
        }
        throw_error(ENOMEM, std::string(error.what()) + "; " + std::to_string(posted_.size()) +
                                " requests of this transfer posted before it, the earlier "
                                "ones all completed; QP state " +
                                qp_state() + "; " + verbs_mappings());
    }
}

void Loopback::post_and_wait(Operation operation, Region& source_region,
                             const unsigned char* source, Region& target_region,
                             unsigned char* target, std::size_t length, Held& held) {
    switch (operation) {
        case Operation::Write: {
            held.source_lease = source_region.translate(source, length, max_sge_);
            held.target_exposure = target_region.expose(target, length);
            std::size_t offset = 0;
            for (const RemoteSegment& segment : held.target_exposure.segments()) {
                const std::vector<ibv_sge> sges =
                    slice_sges(held.source_lease.sges(), offset, segment.length);
                qp_->post_write(sges, segment.address, segment.rkey, ++wr_id_);
                posted_.push_back({wr_id_, "RDMA WRITE", sges, segment.address, segment.rkey});
                offset += segment.length;
            }
            wait_for(held.target_exposure.segments().size());
            return;
        }
        case Operation::Read: {
            held.source_exposure = source_region.expose(source, length);
            held.target_lease = target_region.translate(target, length, max_sge_);
            std::size_t offset = 0;
            for (const RemoteSegment& segment : held.source_exposure.segments()) {
                const std::vector<ibv_sge> sges =
                    slice_sges(held.target_lease.sges(), offset, segment.length);
                qp_->post_read(sges, segment.address, segment.rkey, ++wr_id_);
                posted_.push_back({wr_id_, "RDMA READ", sges, segment.address, segment.rkey});
                offset += segment.length;
            }
            wait_for(held.source_exposure.segments().size());
            return;
        }
        case Operation::Send: {
            held.source_lease = source_region.translate(source, length, max_sge_);
            held.target_lease = target_region.translate(target, length, max_sge_);
            const auto recv_sges = held.target_lease.sges();
            const auto send_sges = held.source_lease.sges();
            qp_->post_recv(recv_sges, ++wr_id_);
            posted_.push_back({wr_id_, "RECV", {recv_sges.begin(), recv_sges.end()}, 0, 0});
            qp_->post_send(send_sges, ++wr_id_);
            posted_.push_back({wr_id_, "SEND", {send_sges.begin(), send_sges.end()}, 0, 0});
            wait_for(2);
            return;
        }
    }
}

}  // namespace odp::stress
