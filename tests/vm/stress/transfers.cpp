#include "transfers.hpp"

#include <algorithm>
#include <odp/error.hpp>
#include <string>
#include <thread>

namespace odp::stress {

namespace {

using namespace std::chrono_literals;

// Under software emulation a transfer of 512 KiB takes milliseconds; a
// minute without its completion means the QP is stuck.
constexpr auto completion_timeout = 60s;

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

Loopback::Loopback(Device& device, std::uint32_t max_sge) : max_sge_(max_sge) {
    cq_ = verbs::create_cq(*device.context(), 64);
    verbs::RcQueuePair::Options options;
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
            throw_error(EIO, "work request " + std::to_string(wc.wr_id) + " completed with " +
                                 ibv_wc_status_str(wc.status) + " (vendor error " +
                                 std::to_string(wc.vendor_err) + ")");
        }
        ++done;
    }
}

void Loopback::run(Operation operation, Region& source_region, const unsigned char* source,
                   Region& target_region, unsigned char* target, std::size_t length, Held& held) {
    switch (operation) {
        case Operation::Write: {
            held.source_lease = source_region.translate(source, length, max_sge_);
            held.target_exposure = target_region.expose(target, length);
            std::size_t offset = 0;
            for (const RemoteSegment& segment : held.target_exposure.segments()) {
                const std::vector<ibv_sge> sges =
                    slice_sges(held.source_lease.sges(), offset, segment.length);
                qp_->post_write(sges, segment.address, segment.rkey, ++wr_id_);
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
                offset += segment.length;
            }
            wait_for(held.source_exposure.segments().size());
            return;
        }
        case Operation::Send: {
            held.source_lease = source_region.translate(source, length, max_sge_);
            held.target_lease = target_region.translate(target, length, max_sge_);
            qp_->post_recv(held.target_lease.sges(), ++wr_id_);
            qp_->post_send(held.source_lease.sges(), ++wr_id_);
            wait_for(2);
            return;
        }
    }
}

}  // namespace odp::stress
