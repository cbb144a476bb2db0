#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <odp/error.hpp>
#include <odp/verbs_cm.hpp>

namespace odp::verbs {

void EventChannelDeleter::operator()(rdma_event_channel* channel) const noexcept {
    rdma_destroy_event_channel(channel);
}

void CmIdDeleter::operator()(rdma_cm_id* id) const noexcept {
    if (rdma_destroy_id(id) != 0) {
        log_error("rdma_destroy_id failed: " + std::string(std::strerror(errno)));
    }
}

namespace {

constexpr std::uint8_t kMagic[2] = {'O', 'D'};
constexpr std::uint8_t kVersion = 1;

std::string address_text(std::string_view host, std::uint16_t port) {
    return std::string(host) + ":" + std::to_string(port);
}

EventChannelPtr create_channel(const std::string& purpose) {
    errno = 0;
    EventChannelPtr channel(rdma_create_event_channel());
    if (!channel) {
        throw_errno("rdma_create_event_channel for " + purpose +
                    " (RDMA CM needs an RDMA device and /dev/infiniband/rdma_cm: add a device, "
                    "load the rdma_ucm module)");
    }
    return channel;
}

CmIdPtr create_id(rdma_event_channel& channel, const std::string& purpose) {
    rdma_cm_id* id = nullptr;
    check_rc(rdma_create_id(&channel, &id, nullptr, RDMA_PS_TCP), "rdma_create_id for " + purpose);
    return CmIdPtr(id);
}

struct AddrInfoDeleter {
    void operator()(addrinfo* info) const noexcept { freeaddrinfo(info); }
};

// The first IPv4 or IPv6 address of host:port (numeric or a name).
sockaddr_storage resolve_ip(std::string_view host, std::uint16_t port, bool passive) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    addrinfo* found = nullptr;
    const std::string name(host);
    const std::string service = std::to_string(port);
    if (const int rc = getaddrinfo(name.c_str(), service.c_str(), &hints, &found); rc != 0) {
        throw_error(EHOSTUNREACH, "getaddrinfo(" + address_text(host, port) +
                                      "): " + gai_strerror(rc) + ": give an IP address or a name");
    }
    const std::unique_ptr<addrinfo, AddrInfoDeleter> owner(found);
    sockaddr_storage address{};
    std::memcpy(&address, found->ai_addr, std::min<std::size_t>(found->ai_addrlen, sizeof address));
    return address;
}

std::string_view hint_for(rdma_cm_event_type got) {
    switch (got) {
        case RDMA_CM_EVENT_ADDR_ERROR:
            return "no RDMA device reaches that address: it must be on the network interface of "
                   "an RDMA device (`rdma link show`) or routed through one";
        case RDMA_CM_EVENT_ROUTE_ERROR:
            return "no route to that address over the RDMA device it resolved to";
        case RDMA_CM_EVENT_UNREACHABLE:
            return "the peer did not answer: is it up, and is its RDMA device on the same wire?";
        case RDMA_CM_EVENT_REJECTED:
            return "the peer refused: is an RDMA CM server listening on that address and port?";
        case RDMA_CM_EVENT_CONNECT_ERROR:
            return "the connection failed while it was set up";
        case RDMA_CM_EVENT_DEVICE_REMOVAL:
            return "the RDMA device went away";
        case RDMA_CM_EVENT_DISCONNECTED:
            return "the peer disconnected";
        default:
            return "";
    }
}

int errno_for(rdma_cm_event_type got, int status) {
    switch (got) {
        case RDMA_CM_EVENT_REJECTED:
            return ECONNREFUSED;
        case RDMA_CM_EVENT_ADDR_ERROR:
        case RDMA_CM_EVENT_ROUTE_ERROR:
        case RDMA_CM_EVENT_UNREACHABLE:
            return EHOSTUNREACH;
        case RDMA_CM_EVENT_DEVICE_REMOVAL:
            return ENODEV;
        case RDMA_CM_EVENT_DISCONNECTED:
            return ECONNRESET;
        default:
            return status < 0 ? -status : EPROTO;
    }
}

struct CmEvent {
    rdma_cm_event_type type{};
    int status = 0;
    rdma_cm_id* id = nullptr;  // a new id for CONNECT_REQUEST
    std::vector<std::uint8_t> private_data;
};

// The next event on `channel`, acknowledged, within `timeout`.
CmEvent next_event(rdma_event_channel& channel, std::chrono::milliseconds timeout,
                   const std::string& step) {
    pollfd ready{channel.fd, POLLIN, 0};
    int rc = 0;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    do {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        rc = poll(&ready, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        throw_errno(step + ": poll on the RDMA CM event channel");
    }
    if (rc == 0) {
        throw_error(ETIMEDOUT,
                    step + ": no RDMA CM event within " + std::to_string(timeout.count()) + " ms");
    }
    rdma_cm_event* event = nullptr;
    check_rc(rdma_get_cm_event(&channel, &event), step + ": rdma_get_cm_event");
    CmEvent copy{event->event, event->status, event->id, {}};
    const auto* data = static_cast<const std::uint8_t*>(event->param.conn.private_data);
    if (data != nullptr) {
        copy.private_data.assign(data, data + event->param.conn.private_data_len);
    }
    rdma_ack_cm_event(event);
    return copy;
}

CmEvent expect_event(rdma_event_channel& channel, rdma_cm_event_type expected,
                     std::chrono::milliseconds timeout, const std::string& step) {
    CmEvent event = next_event(channel, timeout, step);
    if (event.type != expected || event.status != 0) {
        throw_error(errno_for(event.type, event.status),
                    describe_cm_event_failure(step, expected, event.type, event.status));
    }
    return event;
}

// RDMA CM gives "port 0" a port from its own port space, which knows nothing
// of TCP.  iWARP then binds a kernel TCP socket to that port (a listener's,
// and a connecting end's local port), and a TCP socket RDMA CM does not know
// of (another program's, one in TIME_WAIT) may hold it: EADDRINUSE, or for a
// connecting end EADDRNOTAVAIL when the four-tuple is still in use.  Both
// fail at once, before anything reached the peer, so another CM id (another
// port) is tried.  The ids that failed are held until the end: RDMA CM then
// does not hand out their ports again, and every attempt is a new port.
constexpr int kPortAttempts = 32;

bool is_port_taken(int err) {
    return err == EADDRINUSE || err == EADDRNOTAVAIL;
}

std::string taken_ports_advice(const std::string& ports) {
    return "RDMA CM picked local ports " + ports +
           " (one fresh CM id each), and TCP sockets it does not know of held every one: "
           "fewer TCP sockets in net.ipv4.ip_local_port_range (`ss -tan`), or a wider range";
}

std::uint16_t local_port(rdma_cm_id& id) {
    return ntohs(rdma_get_src_port(&id));
}

int timeout_ms(std::chrono::milliseconds timeout) {
    return static_cast<int>(std::clamp<std::int64_t>(timeout.count(), 1, 1'000'000));
}

std::string id_device(const rdma_cm_id& id) {
    return id.verbs != nullptr ? ibv_get_device_name(id.verbs->device) : "(no device)";
}

bool is_iwarp(const rdma_cm_id& id) {
    return id.verbs != nullptr && id.verbs->device->transport_type == IBV_TRANSPORT_IWARP;
}

// The QP is the caller's (on its PD, so its registrations work), not the
// CM's: it must be on the device the CM id is bound to.
RcQueuePair create_qp(rdma_cm_id& id, ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq,
                      const CmOptions& options, const std::string& where) {
    const std::string cm_device = id_device(id);
    const std::string pd_device = device_name(*pd.context);
    if (cm_device != pd_device) {
        throw_error(EINVAL, where + " is on RDMA device " + cm_device + ", but the PD is on " +
                                pd_device + ": open " + cm_device +
                                " (cm_resolve_device() or CmRequest::device() says which)");
    }
    RcQueuePair::Options qp_options = options.qp;
    qp_options.port = id.port_num;
    return RcQueuePair(pd, send_cq, recv_cq, qp_options);
}

// InfiniBand and RoCE: the QP takes the path the CM resolved (RTR, then
// RTS).  iWARP's QP stays in INIT: the kernel moves it to RTS when the
// connection is up.
void move_to_rts(rdma_cm_id& id, RcQueuePair& qp, const std::string& where) {
    if (is_iwarp(id)) {
        return;
    }
    for (const ibv_qp_state state : {IBV_QPS_RTR, IBV_QPS_RTS}) {
        const char* name = state == IBV_QPS_RTR ? "RTR" : "RTS";
        ibv_qp_attr attr{};
        int mask = 0;
        attr.qp_state = state;
        check_rc(rdma_init_qp_attr(&id, &attr, &mask),
                 std::string("rdma_init_qp_attr(") + name + ") for " + where);
        check_rc(
            ibv_modify_qp(&qp.qp(), &attr, mask),
            std::string("ibv_modify_qp(-> ") + name + ") for " + where + " on " + id_device(id));
    }
}

rdma_conn_param conn_param(const RcQueuePair& qp, const CmOptions& options,
                           std::span<const std::uint8_t> private_data) {
    rdma_conn_param param{};
    param.private_data = private_data.data();
    param.private_data_len = static_cast<std::uint8_t>(private_data.size());
    param.responder_resources = options.qp.max_rd_atomic;
    param.initiator_depth = options.qp.max_rd_atomic;
    param.retry_count = std::min<std::uint8_t>(options.qp.retry_cnt, 7);
    param.rnr_retry_count = std::min<std::uint8_t>(options.qp.rnr_retry, 7);
    param.flow_control = 1;
    param.qp_num = qp.qp().qp_num;
    return param;
}

}  // namespace

std::vector<std::uint8_t> encode_cm_private_data(std::span<const std::uint8_t> payload) {
    if (payload.size() > cm_payload_max) {
        throw_error(EMSGSIZE, "RDMA CM private data payload of " + std::to_string(payload.size()) +
                                  " bytes: at most " + std::to_string(cm_payload_max) +
                                  " fit every transport's connect request; exchange more over "
                                  "the connection");
    }
    std::vector<std::uint8_t> data(cm_private_data_header + payload.size());
    data[0] = kMagic[0];
    data[1] = kMagic[1];
    data[2] = kVersion;
    data[3] = static_cast<std::uint8_t>(payload.size());
    std::copy(payload.begin(), payload.end(), data.begin() + cm_private_data_header);
    return data;
}

std::vector<std::uint8_t> decode_cm_private_data(std::span<const std::uint8_t> data) {
    if (data.size() < cm_private_data_header) {
        throw_error(EPROTO, "RDMA CM private data of " + std::to_string(data.size()) +
                                " bytes: shorter than odp-layer's " +
                                std::to_string(cm_private_data_header) +
                                "-byte header (the peer is not an odp-layer program)");
    }
    if (data[0] != kMagic[0] || data[1] != kMagic[1]) {
        throw_error(EPROTO,
                    "RDMA CM private data does not start with \"OD\": the peer is not an "
                    "odp-layer program");
    }
    if (data[2] != kVersion) {
        throw_error(EPROTO, "RDMA CM private data of version " + std::to_string(data[2]) +
                                "; this library speaks version " + std::to_string(kVersion) +
                                ": use the same odp-layer release on both sides");
    }
    const std::size_t length = data[3];
    if (length > cm_payload_max || cm_private_data_header + length > data.size()) {
        throw_error(EPROTO, "RDMA CM private data announces a " + std::to_string(length) +
                                "-byte payload but carries " +
                                std::to_string(data.size() - cm_private_data_header) +
                                " bytes (truncated)");
    }
    return {data.begin() + cm_private_data_header,
            data.begin() + static_cast<std::ptrdiff_t>(cm_private_data_header + length)};
}

std::string describe_cm_event_failure(std::string_view step, rdma_cm_event_type expected,
                                      rdma_cm_event_type got, int status) {
    std::string text = std::string(step) + ": expected " + rdma_event_str(expected) + ", got " +
                       rdma_event_str(got);
    if (status != 0) {
        text += " (status " + std::to_string(status);
        if (status < 0) {
            text += std::string(": ") + std::strerror(-status);
        }
        text += ")";
    }
    const std::string_view hint = hint_for(got);
    if (!hint.empty()) {
        text += ": ";
        text += hint;
    }
    return text;
}

CmConnection::CmConnection(EventChannelPtr channel, CmIdPtr id, RcQueuePair qp,
                           std::vector<std::uint8_t> peer_payload)
    : channel_(std::move(channel)),
      qp_(std::move(qp)),
      id_(std::move(id)),
      peer_payload_(std::move(peer_payload)) {}

CmConnection::~CmConnection() {
    // Tells the peer; a peer that left already makes this fail, which is fine.
    if (id_) {
        rdma_disconnect(id_.get());
    }
}

std::string CmConnection::device() const {
    return id_device(*id_);
}

std::string cm_resolve_device(std::string_view host, std::uint16_t port,
                              std::chrono::milliseconds timeout) {
    const std::string where = address_text(host, port);
    EventChannelPtr channel = create_channel(where);
    CmIdPtr id = create_id(*channel, where);
    sockaddr_storage address = resolve_ip(host, port, false);
    check_rc(rdma_resolve_addr(id.get(), nullptr, reinterpret_cast<sockaddr*>(&address),
                               timeout_ms(timeout)),
             "rdma_resolve_addr(" + where + ")");
    expect_event(*channel, RDMA_CM_EVENT_ADDR_RESOLVED, timeout,
                 "rdma_resolve_addr(" + where + ")");
    return id_device(*id);
}

std::string cm_device_address(std::string_view device, std::chrono::milliseconds timeout) {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) {
        throw_errno("getifaddrs (looking for the address of " + std::string(device) + ")");
    }
    const std::unique_ptr<ifaddrs, decltype(&freeifaddrs)> owner(list, &freeifaddrs);
    std::string tried;
    for (const ifaddrs* entry = list; entry != nullptr; entry = entry->ifa_next) {
        if (entry->ifa_addr == nullptr || entry->ifa_addr->sa_family != AF_INET ||
            (entry->ifa_flags & IFF_LOOPBACK) != 0) {
            continue;
        }
        char text[INET_ADDRSTRLEN] = {};
        inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(entry->ifa_addr)->sin_addr, text,
                  sizeof text);
        std::string leads_to;
        try {
            leads_to = cm_resolve_device(text, 1, timeout);
        } catch (const Error&) {
            leads_to = "no RDMA device";
        }
        if (leads_to == device) {
            return text;
        }
        tried += (tried.empty() ? "" : ", ") + std::string(text) + " on " + entry->ifa_name +
                 " -> " + leads_to;
    }
    throw_error(EADDRNOTAVAIL, "no IPv4 address of this host leads RDMA CM to " +
                                   std::string(device) + " (" +
                                   (tried.empty() ? "none but loopback" : tried) +
                                   "): give the network interface under " + std::string(device) +
                                   " an address (`rdma link show` names it)");
}

CmConnection cm_connect(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq, std::string_view host,
                        std::uint16_t port, std::span<const std::uint8_t> payload,
                        const CmOptions& options) {
    const std::vector<std::uint8_t> private_data = encode_cm_private_data(payload);
    const std::string where = address_text(host, port);
    EventChannelPtr channel = create_channel(where);
    std::vector<CmIdPtr> taken;  // ids whose local port was taken (see kPortAttempts)
    std::string taken_ports;
    const sockaddr_storage peer_address = resolve_ip(host, port, false);
    for (int attempt = 1;; ++attempt) {
        CmIdPtr id = create_id(*channel, where);
        sockaddr_storage address = peer_address;
        const std::string resolve_addr = "rdma_resolve_addr(" + where + ")";
        check_rc(rdma_resolve_addr(id.get(), nullptr, reinterpret_cast<sockaddr*>(&address),
                                   timeout_ms(options.timeout)),
                 resolve_addr);
        expect_event(*channel, RDMA_CM_EVENT_ADDR_RESOLVED, options.timeout, resolve_addr);
        const std::string resolve_route = "rdma_resolve_route(" + where + ")";
        check_rc(rdma_resolve_route(id.get(), timeout_ms(options.timeout)), resolve_route);
        expect_event(*channel, RDMA_CM_EVENT_ROUTE_RESOLVED, options.timeout, resolve_route);

        RcQueuePair qp = create_qp(*id, pd, send_cq, recv_cq, options, where);
        if (options.before_connect) {
            options.before_connect(qp);
        }
        rdma_conn_param param = conn_param(qp, options, private_data);
        const std::string connect = "rdma_connect(" + where + ") on " + id_device(*id);
        if (rdma_connect(id.get(), &param) != 0) {
            // iWARP opens its TCP connection right here: no listener fails
            // now, and so does a local port held outside RDMA CM.
            const int err = errno != 0 ? errno : EIO;
            if (is_port_taken(err)) {
                taken_ports += (taken_ports.empty() ? "" : ", ") + std::to_string(local_port(*id));
                if (attempt < kPortAttempts) {
                    taken.push_back(std::move(id));
                    continue;
                }
                throw_error(err, connect + ": " + taken_ports_advice(taken_ports));
            }
            throw_error(err,
                        connect + (err == ECONNREFUSED
                                       ? " (" + std::string(hint_for(RDMA_CM_EVENT_REJECTED)) + ")"
                                       : std::string()));
        }
        // iWARP connects in the kernel; InfiniBand and RoCE hand the reply
        // to the owner of the QP, which takes it to RTS and confirms.
        const rdma_cm_event_type expected =
            is_iwarp(*id) ? RDMA_CM_EVENT_ESTABLISHED : RDMA_CM_EVENT_CONNECT_RESPONSE;
        CmEvent reply = expect_event(*channel, expected, options.timeout, connect);
        std::vector<std::uint8_t> peer_payload = decode_cm_private_data(reply.private_data);
        if (!is_iwarp(*id)) {
            move_to_rts(*id, qp, where);
            check_rc(rdma_establish(id.get()), "rdma_establish(" + where + ")");
        }
        taken.clear();  // before the channel they are on moves away
        return CmConnection(std::move(channel), std::move(id), std::move(qp),
                            std::move(peer_payload));
    }
}

CmRequest::CmRequest(EventChannelPtr channel, CmIdPtr id, std::vector<std::uint8_t> payload)
    : channel_(std::move(channel)), id_(std::move(id)), payload_(std::move(payload)) {}

CmRequest::~CmRequest() {
    if (id_) {
        rdma_reject(id_.get(), nullptr, 0);
    }
}

std::string CmRequest::device() const {
    return id_device(*id_);
}

CmConnection CmRequest::accept(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq,
                               std::span<const std::uint8_t> reply, const CmOptions& options) {
    if (!id_) {
        throw_error(EINVAL, "CmRequest::accept: this request was accepted already");
    }
    const std::vector<std::uint8_t> private_data = encode_cm_private_data(reply);
    const std::string where = "the connection request on " + id_device(*id_);
    RcQueuePair qp = create_qp(*id_, pd, send_cq, recv_cq, options, where);
    if (options.before_connect) {
        options.before_connect(qp);
    }
    move_to_rts(*id_, qp, where);
    rdma_conn_param param = conn_param(qp, options, private_data);
    const std::string accept = "rdma_accept(" + where + ")";
    check_rc(rdma_accept(id_.get(), &param), accept);
    expect_event(*channel_, RDMA_CM_EVENT_ESTABLISHED, options.timeout, accept);
    return CmConnection(std::move(channel_), std::move(id_), std::move(qp), payload_);
}

LoopbackConnection::LoopbackConnection(ibv_pd& pd, ibv_cq& send_cq, ibv_cq& recv_cq,
                                       const CmOptions& options) {
    if (pd.context->device->transport_type != IBV_TRANSPORT_IWARP) {
        self_.emplace(pd, send_cq, recv_cq, options.qp);
        self_->connect(self_->local_endpoint());
        return;
    }
    const std::string address = cm_device_address(device_name(*pd.context), options.timeout);
    CmListener listener(address, 0);
    // The connecting end waits for the accepting one: it runs beside it.  If
    // accepting fails, the future's destructor waits for cm_connect, which
    // then fails within its own timeout.
    auto connecting = std::async(std::launch::async, [&] {
        return cm_connect(pd, send_cq, recv_cq, address, listener.port(), {}, options);
    });
    passive_.emplace(
        listener.next_request(options.timeout).accept(pd, send_cq, recv_cq, {}, options));
    active_.emplace(connecting.get());
}

RcQueuePair& LoopbackConnection::qp() noexcept {
    return active_ ? active_->qp() : *self_;
}

RcQueuePair& LoopbackConnection::peer() noexcept {
    return passive_ ? passive_->qp() : *self_;
}

CmListener::CmListener(std::string_view address, std::uint16_t port, int backlog)
    : address_(address_text(address, port)) {
    channel_ = create_channel("listening on " + address_);
    sockaddr_storage bind_address = resolve_ip(address, port, true);
    std::vector<CmIdPtr> taken;  // ids whose port was taken (see kPortAttempts)
    std::string taken_ports;
    for (int attempt = 1;; ++attempt) {
        CmIdPtr id = create_id(*channel_, "listening on " + address_);
        check_rc(rdma_bind_addr(id.get(), reinterpret_cast<sockaddr*>(&bind_address)),
                 "rdma_bind_addr(" + address_ + ") (EADDRINUSE: another server has that port)");
        if (rdma_listen(id.get(), backlog) == 0) {
            id_ = std::move(id);
            return;
        }
        const int err = errno != 0 ? errno : EIO;
        const std::string listen = "rdma_listen(" + address_ + ")";
        if (port != 0 || !is_port_taken(err)) {
            throw_error(err, listen + (err == EADDRINUSE
                                           ? " (another server has that port; on iWARP also any "
                                             "TCP socket on it)"
                                           : std::string()));
        }
        taken_ports += (taken_ports.empty() ? "" : ", ") + std::to_string(local_port(*id));
        if (attempt == kPortAttempts) {
            throw_error(err, listen + ": " + taken_ports_advice(taken_ports));
        }
        taken.push_back(std::move(id));
    }
}

std::uint16_t CmListener::port() const {
    return ntohs(rdma_get_src_port(id_.get()));
}

CmRequest CmListener::next_request(std::chrono::milliseconds timeout) {
    const std::string step = "waiting for a connection request on " + address_;
    CmEvent event = expect_event(*channel_, RDMA_CM_EVENT_CONNECT_REQUEST, timeout, step);
    CmIdPtr id(event.id);
    std::vector<std::uint8_t> payload;
    try {
        payload = decode_cm_private_data(event.private_data);
    } catch (const Error&) {
        rdma_reject(id.get(), nullptr, 0);
        throw;
    }
    // The request gets its own channel, so that it and its connection live
    // on independently of the listener.
    EventChannelPtr channel = create_channel("a connection request on " + address_);
    check_rc(rdma_migrate_id(id.get(), channel.get()),
             "rdma_migrate_id(a connection request on " + address_ + ")");
    return CmRequest(std::move(channel), std::move(id), std::move(payload));
}

}  // namespace odp::verbs
