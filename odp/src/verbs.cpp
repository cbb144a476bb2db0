#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <odp/error.hpp>
#include <odp/verbs.hpp>
#include <random>
#include <thread>

namespace odp::verbs {

void ContextDeleter::operator()(ibv_context* context) const noexcept {
    if (const int rc = ibv_close_device(context); rc != 0) {
        log_error("ibv_close_device failed: " + std::string(std::strerror(errno)));
    }
}
void PdDeleter::operator()(ibv_pd* pd) const noexcept {
    if (const int rc = ibv_dealloc_pd(pd); rc != 0) {
        log_error("ibv_dealloc_pd failed (objects still use the PD?): " +
                  std::string(std::strerror(rc > 0 ? rc : errno)));
    }
}
void MrDeleter::operator()(ibv_mr* mr) const noexcept {
    if (const int rc = ibv_dereg_mr(mr); rc != 0) {
        log_error("ibv_dereg_mr failed: " + std::string(std::strerror(rc > 0 ? rc : errno)));
    }
}
void CqDeleter::operator()(ibv_cq* cq) const noexcept {
    if (const int rc = ibv_destroy_cq(cq); rc != 0) {
        log_error("ibv_destroy_cq failed (QPs still use it?): " +
                  std::string(std::strerror(rc > 0 ? rc : errno)));
    }
}
void QpDeleter::operator()(ibv_qp* qp) const noexcept {
    if (const int rc = ibv_destroy_qp(qp); rc != 0) {
        log_error("ibv_destroy_qp failed: " + std::string(std::strerror(rc > 0 ? rc : errno)));
    }
}
void CompChannelDeleter::operator()(ibv_comp_channel* channel) const noexcept {
    if (const int rc = ibv_destroy_comp_channel(channel); rc != 0) {
        log_error("ibv_destroy_comp_channel failed: " +
                  std::string(std::strerror(rc > 0 ? rc : errno)));
    }
}

namespace {

struct DeviceListDeleter {
    void operator()(ibv_device** list) const noexcept { ibv_free_device_list(list); }
};
using DeviceList = std::unique_ptr<ibv_device*, DeviceListDeleter>;

DeviceList get_device_list(int& count) {
    errno = 0;
    DeviceList list(ibv_get_device_list(&count));
    if (!list) {
        throw_errno(
            "ibv_get_device_list: cannot list RDMA devices (is the ib_uverbs module loaded?)");
    }
    return list;
}

std::string join(const std::vector<std::string>& names) {
    std::string text;
    for (const auto& name : names) {
        text += text.empty() ? "" : ", ";
        text += name;
    }
    return text.empty() ? "none" : text;
}

std::string gid_to_string(const ibv_gid& gid) {
    char text[INET6_ADDRSTRLEN] = {};
    inet_ntop(AF_INET6, gid.raw, text, sizeof text);
    return text;
}

int mtu_bytes(ibv_mtu mtu) {
    switch (mtu) {
        case IBV_MTU_256:
            return 256;
        case IBV_MTU_512:
            return 512;
        case IBV_MTU_1024:
            return 1024;
        case IBV_MTU_2048:
            return 2048;
        case IBV_MTU_4096:
            return 4096;
    }
    return 0;
}

}  // namespace

std::vector<std::string> device_names() {
    int count = 0;
    const DeviceList list = get_device_list(count);
    std::vector<std::string> names;
    for (int i = 0; i < count; ++i) {
        names.emplace_back(ibv_get_device_name(list.get()[i]));
    }
    return names;
}

ContextPtr open_device(std::string_view name) {
    int count = 0;
    const DeviceList list = get_device_list(count);
    ibv_device* chosen = nullptr;
    std::vector<std::string> present;
    for (int i = 0; i < count; ++i) {
        present.emplace_back(ibv_get_device_name(list.get()[i]));
        if (chosen == nullptr && (name.empty() || present.back() == name)) {
            chosen = list.get()[i];
        }
    }
    if (chosen == nullptr) {
        if (name.empty()) {
            throw_error(ENODEV,
                        "no RDMA device found: load a driver or add a soft-RoCE device "
                        "(`rdma link add rxe0 type rxe netdev <if>`)");
        }
        throw_error(ENODEV, "RDMA device '" + std::string(name) +
                                "' not found (devices present: " + join(present) + ")");
    }
    const std::string chosen_name = ibv_get_device_name(chosen);
    errno = 0;
    ContextPtr context(ibv_open_device(chosen));
    if (!context) {
        const int err = errno != 0 ? errno : EIO;
        throw_error(err, "ibv_open_device(" + chosen_name + ")" +
                             (err == EACCES || err == EPERM
                                  ? ": no permission to open /dev/infiniband/uverbs*; run as a "
                                    "user with access (group rdma) or as root"
                                  : ""));
    }
    return context;
}

std::string device_name(ibv_context& context) {
    return ibv_get_device_name(context.device);
}

PdPtr alloc_pd(ibv_context& context) {
    errno = 0;
    PdPtr pd(ibv_alloc_pd(&context));
    if (!pd) {
        throw_errno("ibv_alloc_pd on " + device_name(context));
    }
    return pd;
}

MrPtr reg_mr(ibv_pd& pd, void* address, std::size_t length, int ibv_access) {
    errno = 0;
    MrPtr mr(ibv_reg_mr(&pd, address, length, ibv_access));
    if (!mr) {
        throw_errno("ibv_reg_mr(" + format_address(reinterpret_cast<std::uintptr_t>(address)) +
                    ", " + format_bytes(length) + ") on " + device_name(*pd.context));
    }
    return mr;
}

CqPtr create_cq(ibv_context& context, int min_entries) {
    errno = 0;
    CqPtr cq(ibv_create_cq(&context, min_entries, nullptr, nullptr, 0));
    if (!cq) {
        throw_errno("ibv_create_cq(" + std::to_string(min_entries) + " entries) on " +
                    device_name(context));
    }
    return cq;
}

std::string to_string(const Endpoint& e) {
    char psn[16];
    std::snprintf(psn, sizeof psn, "0x%06x", e.psn);
    return "qp " + std::to_string(e.qp_num) + " psn " + psn + " lid " + std::to_string(e.lid) +
           " gid " + gid_to_string(e.gid) + " (index " + std::to_string(e.gid_index) + ") port " +
           std::to_string(e.port) + " mtu " + std::to_string(mtu_bytes(e.mtu));
}

std::array<std::uint8_t, endpoint_wire_size> to_wire(const Endpoint& e) {
    std::array<std::uint8_t, endpoint_wire_size> wire{};
    const std::uint32_t qp_num = htonl(e.qp_num);
    const std::uint32_t psn = htonl(e.psn);
    const std::uint16_t lid = htons(e.lid);
    std::memcpy(&wire[0], &qp_num, 4);
    std::memcpy(&wire[4], &psn, 4);
    std::memcpy(&wire[8], e.gid.raw, 16);
    std::memcpy(&wire[24], &lid, 2);
    wire[26] = e.port;
    wire[27] = e.gid_index;
    wire[28] = static_cast<std::uint8_t>(e.mtu);
    return wire;
}

Endpoint from_wire(std::span<const std::uint8_t, endpoint_wire_size> wire) {
    Endpoint e;
    std::uint32_t qp_num = 0;
    std::uint32_t psn = 0;
    std::uint16_t lid = 0;
    std::memcpy(&qp_num, &wire[0], 4);
    std::memcpy(&psn, &wire[4], 4);
    std::memcpy(e.gid.raw, &wire[8], 16);
    std::memcpy(&lid, &wire[24], 2);
    e.qp_num = ntohl(qp_num);
    e.psn = ntohl(psn);
    e.lid = ntohs(lid);
    e.port = wire[26];
    e.gid_index = wire[27];
    if (wire[28] < IBV_MTU_256 || wire[28] > IBV_MTU_4096) {
        throw_error(EPROTO, "endpoint message has MTU code " + std::to_string(wire[28]) +
                                " (valid: 1..5): the peer speaks another protocol version");
    }
    e.mtu = static_cast<ibv_mtu>(wire[28]);
    return e;
}

std::uint8_t choose_gid_index(ibv_context& context, std::uint8_t port) {
    ibv_port_attr port_attr{};
    check_rc(ibv_query_port(&context, port, &port_attr),
             "ibv_query_port(" + std::to_string(port) + ") on " + device_name(context));
    if (port_attr.link_layer != IBV_LINK_LAYER_ETHERNET) {
        return 0;  // InfiniBand: routed by LID, GID 0 is the port GID.
    }
    int first_v2 = -1;
    int first_nonzero = -1;
    for (int index = 0; index < port_attr.gid_tbl_len && index < 256; ++index) {
        ibv_gid_entry entry{};
        if (ibv_query_gid_ex(&context, port, static_cast<std::uint32_t>(index), &entry, 0) != 0) {
            continue;  // empty slot (ENODATA) or unreadable: skip it
        }
        const ibv_gid& gid = reinterpret_cast<const ibv_gid&>(entry.gid);
        static constexpr std::uint8_t zero[16] = {};
        if (std::memcmp(gid.raw, zero, sizeof zero) == 0) {
            continue;
        }
        if (first_nonzero < 0) {
            first_nonzero = index;
        }
        if (entry.gid_type == IBV_GID_TYPE_ROCE_V2) {
            static constexpr std::uint8_t v4_mapped[12] = {0, 0, 0, 0, 0,    0,
                                                           0, 0, 0, 0, 0xff, 0xff};
            if (std::memcmp(gid.raw, v4_mapped, sizeof v4_mapped) == 0) {
                return static_cast<std::uint8_t>(index);
            }
            if (first_v2 < 0) {
                first_v2 = index;
            }
        }
    }
    if (first_v2 >= 0) {
        return static_cast<std::uint8_t>(first_v2);
    }
    if (first_nonzero >= 0) {
        return static_cast<std::uint8_t>(first_nonzero);
    }
    throw_error(ENOENT, "no usable GID on " + device_name(context) + " port " +
                            std::to_string(port) +
                            ": give its network interface an IP address (`ip addr add`)");
}

RcQueuePair::RcQueuePair(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq)
    : RcQueuePair(pd, send_cq, recv_cq, Options{}) {}

RcQueuePair::RcQueuePair(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq, const Options& options)
    : options_(options), device_(device_name(*pd.context)) {
    ibv_qp_init_attr init{};
    init.send_cq = &send_cq;
    init.recv_cq = &recv_cq;
    init.qp_type = IBV_QPT_RC;
    init.cap.max_send_wr = options.max_send_wr;
    init.cap.max_recv_wr = options.max_recv_wr;
    init.cap.max_send_sge = options.max_send_sge;
    init.cap.max_recv_sge = options.max_recv_sge;
    init.cap.max_inline_data = options.max_inline_data;
    errno = 0;
    qp_.reset(ibv_create_qp(&pd, &init));
    if (!qp_) {
        throw_errno("ibv_create_qp(RC, " + std::to_string(options.max_send_wr) + " send / " +
                    std::to_string(options.max_recv_wr) + " recv WRs, " +
                    std::to_string(options.max_send_sge) + " SGEs) on " + device_ +
                    ": lower the queue sizes to the device's limits");
    }

    ibv_context& context = *pd.context;
    ibv_device_attr device_attr{};
    check_rc(ibv_query_device(&context, &device_attr), "ibv_query_device on " + device_);
    max_read_sge_ = static_cast<std::size_t>(std::max(device_attr.max_sge_rd, 1));
    ibv_port_attr port_attr{};
    check_rc(ibv_query_port(&context, options.port, &port_attr),
             "ibv_query_port(" + std::to_string(options.port) + ") on " + device_);
    local_.qp_num = qp_->qp_num;
    local_.port = options.port;
    local_.lid = port_attr.lid;
    local_.mtu = std::min(port_attr.active_mtu, options.max_mtu);
    // iWARP (siw) routes by IP address through RDMA CM: no GID to exchange.
    if (context.device->transport_type != IBV_TRANSPORT_IWARP) {
        local_.gid_index = options.gid_index >= 0 ? static_cast<std::uint8_t>(options.gid_index)
                                                  : choose_gid_index(context, options.port);
        check_rc(ibv_query_gid(&context, options.port, local_.gid_index, &local_.gid),
                 "ibv_query_gid(port " + std::to_string(options.port) + ", index " +
                     std::to_string(local_.gid_index) + ") on " + device_);
    }
    if (options.psn != 0) {
        local_.psn = options.psn & 0xffffffU;
    } else {
        std::random_device random;
        local_.psn = random() & 0xffffffU;
    }

    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_INIT;
    attr.pkey_index = 0;
    attr.port_num = options.port;
    attr.qp_access_flags = static_cast<unsigned>(options.access);
    check_rc(ibv_modify_qp(qp_.get(), &attr,
                           IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
             "ibv_modify_qp(RESET -> INIT) on " + device_);
}

void RcQueuePair::connect(const Endpoint& peer) {
    const bool roce = peer.lid == 0;  // RoCE has no LIDs: route by GID
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_RTR;
    attr.path_mtu = std::min(local_.mtu, peer.mtu);
    attr.dest_qp_num = peer.qp_num;
    attr.rq_psn = peer.psn;
    attr.max_dest_rd_atomic = options_.max_rd_atomic;
    attr.min_rnr_timer = options_.min_rnr_timer;
    attr.ah_attr.port_num = local_.port;
    attr.ah_attr.dlid = peer.lid;
    attr.ah_attr.sl = 0;
    attr.ah_attr.src_path_bits = 0;
    if (roce || local_.lid == 0) {
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh.dgid = peer.gid;
        attr.ah_attr.grh.sgid_index = local_.gid_index;
        attr.ah_attr.grh.hop_limit = 64;
        attr.ah_attr.grh.traffic_class = 0;
        attr.ah_attr.grh.flow_label = 0;
    }
    check_rc(ibv_modify_qp(qp_.get(), &attr,
                           IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                               IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER),
             "ibv_modify_qp(INIT -> RTR) on " + device_ + " to peer " + to_string(peer) +
                 ": check the peer's endpoint and that both sides use the same GID type");

    attr = ibv_qp_attr{};
    attr.qp_state = IBV_QPS_RTS;
    attr.sq_psn = local_.psn;
    attr.timeout = options_.timeout;
    attr.retry_cnt = options_.retry_cnt;
    attr.rnr_retry = options_.rnr_retry;
    attr.max_rd_atomic = options_.max_rd_atomic;
    check_rc(ibv_modify_qp(qp_.get(), &attr,
                           IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                               IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC),
             "ibv_modify_qp(RTR -> RTS) on " + device_);
}

void RcQueuePair::post(ibv_send_wr& wr, const char* what) {
    ibv_send_wr* bad = nullptr;
    check_rc(ibv_post_send(qp_.get(), &wr, &bad),
             std::string("ibv_post_send(") + what + ", " + std::to_string(wr.num_sge) +
                 " SGEs) on " + device_ + " QP " + std::to_string(qp_->qp_num) +
                 " (ENOMEM: send queue full, poll completions first)");
}

void RcQueuePair::post_write(std::span<const ibv_sge> sges, std::uint64_t remote_address,
                             std::uint32_t rkey, std::uint64_t wr_id, bool signaled) {
    ibv_send_wr wr{};
    wr.wr_id = wr_id;
    wr.sg_list = const_cast<ibv_sge*>(sges.data());  // verbs does not write the list
    wr.num_sge = static_cast<int>(sges.size());
    wr.opcode = IBV_WR_RDMA_WRITE;
    wr.send_flags = signaled ? static_cast<unsigned>(IBV_SEND_SIGNALED) : 0U;
    wr.wr.rdma.remote_addr = remote_address;
    wr.wr.rdma.rkey = rkey;
    post(wr, "RDMA WRITE");
}

void RcQueuePair::post_read(std::span<const ibv_sge> sges, std::uint64_t remote_address,
                            std::uint32_t rkey, std::uint64_t wr_id, bool signaled) {
    // A device may take fewer SGEs per READ than per WRITE (siw: one, as an
    // iWARP READ sink is one tagged buffer): then the READ goes as a chain of
    // work requests over consecutive remote bytes, only the last signaled.
    const std::size_t pieces = sges.empty() ? 1 : (sges.size() + max_read_sge_ - 1) / max_read_sge_;
    std::vector<ibv_send_wr> wrs(pieces);
    std::uint64_t offset = 0;
    for (std::size_t i = 0; i < pieces; ++i) {
        const std::size_t first = i * max_read_sge_;  // < sges.size(), or 0 for none
        const std::span<const ibv_sge> part =
            sges.subspan(first, std::min(max_read_sge_, sges.size() - first));
        ibv_send_wr& wr = wrs[i];
        wr.wr_id = wr_id;
        wr.sg_list = const_cast<ibv_sge*>(part.data());
        wr.num_sge = static_cast<int>(part.size());
        wr.opcode = IBV_WR_RDMA_READ;
        wr.wr.rdma.remote_addr = remote_address + offset;
        wr.wr.rdma.rkey = rkey;
        wr.next = i + 1 < pieces ? &wrs[i + 1] : nullptr;
        for (const ibv_sge& sge : part) {
            offset += sge.length;
        }
    }
    wrs.back().send_flags = signaled ? static_cast<unsigned>(IBV_SEND_SIGNALED) : 0U;
    post(wrs.front(), pieces == 1 ? "RDMA READ" : "RDMA READ, split by the device's max_sge_rd");
}

void RcQueuePair::post_send(std::span<const ibv_sge> sges, std::uint64_t wr_id, bool signaled) {
    ibv_send_wr wr{};
    wr.wr_id = wr_id;
    wr.sg_list = const_cast<ibv_sge*>(sges.data());
    wr.num_sge = static_cast<int>(sges.size());
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = signaled ? static_cast<unsigned>(IBV_SEND_SIGNALED) : 0U;
    post(wr, "SEND");
}

void RcQueuePair::post_recv(std::span<const ibv_sge> sges, std::uint64_t wr_id) {
    ibv_recv_wr wr{};
    wr.wr_id = wr_id;
    wr.sg_list = const_cast<ibv_sge*>(sges.data());
    wr.num_sge = static_cast<int>(sges.size());
    ibv_recv_wr* bad = nullptr;
    check_rc(ibv_post_recv(qp_.get(), &wr, &bad),
             "ibv_post_recv(" + std::to_string(wr.num_sge) + " SGEs) on " + device_ + " QP " +
                 std::to_string(qp_->qp_num) + " (ENOMEM: receive queue full)");
}

std::vector<ibv_wc> poll(ibv_cq& cq, std::size_t count, std::chrono::milliseconds timeout) {
    std::vector<ibv_wc> completions;
    completions.reserve(count);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::uint64_t empty_polls = 0;
    while (completions.size() < count) {
        ibv_wc batch[16];
        const int wanted = static_cast<int>(std::min<std::size_t>(16, count - completions.size()));
        const int got = ibv_poll_cq(&cq, wanted, batch);
        if (got < 0) {
            throw_error(EIO, "ibv_poll_cq failed: the CQ overran or the device is in error");
        }
        completions.insert(completions.end(), batch, batch + got);
        // Busy polling, as latency tools do; the clock is read only now and
        // then, because where it is not in the vDSO (an emulated guest's
        // clocksource) every read is a system call that slows the device.
        if (got == 0 && ++empty_polls % 256 == 0 && std::chrono::steady_clock::now() >= deadline) {
            break;
        }
    }
    return completions;
}

ibv_wc wait_completion(ibv_cq& cq, std::chrono::milliseconds timeout) {
    const std::vector<ibv_wc> completions = poll(cq, 1, timeout);
    if (completions.empty()) {
        throw_error(ETIMEDOUT, "no completion within " + std::to_string(timeout.count()) +
                                   " ms: the peer is not connected or the QP is in error");
    }
    const ibv_wc& wc = completions.front();
    if (wc.status != IBV_WC_SUCCESS) {
        throw_error(EIO, std::string("work request ") + std::to_string(wc.wr_id) +
                             " completed with status " + ibv_wc_status_str(wc.status) +
                             " (vendor error " + std::to_string(wc.vendor_err) + ")");
    }
    return wc;
}

}  // namespace odp::verbs
