#include "session.hpp"

#include <algorithm>
#include <cstring>
#include <future>
#include <iostream>
#include <mutex>
#include <odp/error.hpp>
#include <odp/lease.hpp>

namespace odp_perf {
namespace {

namespace asio = oob::asio;

constexpr odp::Access kBufferAccess =
    odp::Access::LocalWrite | odp::Access::RemoteWrite | odp::Access::RemoteRead;

// Runs one coroutine step of the synchronous client to completion.
template <typename T>
T run_sync(asio::io_context& io, asio::awaitable<T> step) {
    auto result = asio::co_spawn(io, std::move(step), asio::use_future);
    io.restart();
    io.run();
    return result.get();
}

// co_spawn(use_future) needs a default-constructible result: hand the Channel over on the heap.
asio::awaitable<std::unique_ptr<oob::Channel>> connect_owned(std::string_view host,
                                                             std::uint16_t port,
                                                             std::chrono::milliseconds timeout) {
    oob::Channel channel = co_await oob::connect(host, port, timeout);
    co_return std::make_unique<oob::Channel>(std::move(channel));
}

std::size_t slot_stride(std::uint64_t message_size) {
    return next_power_of_two(static_cast<std::size_t>(message_size));
}

odp::verbs::RcQueuePair::Options qp_options(std::uint32_t depth) {
    odp::verbs::RcQueuePair::Options options;
    options.max_send_wr = depth + 4;
    options.max_recv_wr = depth + 4;
    options.max_send_sge = 4;
    options.max_recv_sge = 4;
    options.max_rd_atomic = 16;  // RDMA READ bandwidth needs several reads in flight
    return options;
}

// The server side of one client's test. Objects are declared in the order
// that makes their destruction safe: the poller stops first, then leases,
// QP, CQ, exposure, region and buffer go.
class ServerSession {
  public:
    // `local_address`: where the client reached this server, where an RDMA
    // CM client connects too.
    ServerSession(odp::Device& device, const ServerConfig& config, const oob::Hello& hello,
                  const std::string& local_address)
        : device_(device),
          hello_(hello),
          stride_(slot_stride(hello.message_size)),
          depth_(std::max<std::uint32_t>(hello.receive_depth, 16)) {
        if (hello.buffer_size > config.max_buffer_bytes) {
            odp::throw_error(EMSGSIZE, "client asks for a " + odp::format_bytes(hello.buffer_size) +
                                           " buffer; this server allows " +
                                           odp::format_bytes(config.max_buffer_bytes) +
                                           " (start it with a larger --max-buffer)");
        }
        if (hello.buffer_size % stride_ != 0) {
            odp::throw_error(EINVAL, "buffer_size " + std::to_string(hello.buffer_size) +
                                         " is not a multiple of the slot stride " +
                                         std::to_string(stride_));
        }
        const odp::Mode mode = device.resolve(to_mode(hello.server_mode), kBufferAccess);
        const odp::RegionOptions options = region_options(mode, stride_, config.fault_ahead);
        const auto size = static_cast<std::size_t>(hello.buffer_size);
        memory_.buffer = MappedBuffer(size, options.chunk_size, true);
        // Read test: the client fetches the pattern. Otherwise the complement,
        // so that a byte the client failed to deliver cannot match.
        fill_pattern(memory_.buffer.bytes(), hello.pattern_seed, 0,
                     hello.test != oob::TestKind::Read);
        if (hello.test != oob::TestKind::Read) {
            expected_ = MappedBuffer(size, page_size(), false);
            fill_pattern(expected_.bytes(), hello.pattern_seed, 0);
        }
        memory_.region =
            device.register_region(memory_.buffer.data(), size, kBufferAccess, options);
        exposure_ = memory_.region.expose(memory_.buffer.data(), size);
        cq_ = odp::verbs::create_cq(*device.context(), static_cast<int>(depth_ * 2 + 16));
        if (hello.credit_rkey != 0) {
            credit_source_.assign(1, 0);
            credit_source_mr_ = odp::verbs::reg_mr(*device.pd(), credit_source_.data(),
                                                   sizeof(std::uint64_t), IBV_ACCESS_LOCAL_WRITE);
        }
        if (hello.client.connection == oob::Connection::RdmaCm) {
            // A listener of this session's own, on a free port (Welcome
            // names it): on iWARP it is a TCP port beside this server's.
            listener_.emplace(local_address, 0);
            return;
        }
        if (is_iwarp(device)) {
            odp::throw_error(EPROTONOSUPPORT,
                             std::string(device.name()) +
                                 " is an iWARP device, which connects only through RDMA CM: "
                                 "connect the client with --cm (odp-perf does by itself when its "
                                 "own device is iWARP)");
        }
        qp_.emplace(*device.pd(), *cq_, *cq_, qp_options(depth_));
        qp_->connect(from_wire(hello.client));
        if (hello.test == oob::TestKind::Send) {
            post_receives(*qp_);
            report_receives(*qp_);
            start_polling();
        }
    }

    ~ServerSession() { stop_receiving(); }
    ServerSession(const ServerSession&) = delete;
    ServerSession& operator=(const ServerSession&) = delete;

    // With RDMA CM: waits for the client's connection request (it comes
    // once Welcome is out) and accepts it.
    void accept_connection(std::chrono::milliseconds timeout) {
        if (!listener_) {
            return;
        }
        odp::verbs::CmOptions options;
        options.timeout = timeout;
        options.qp = qp_options(depth_);
        if (hello_.test == oob::TestKind::Send) {
            options.before_connect = [this](odp::verbs::RcQueuePair& qp) { post_receives(qp); };
        }
        cm_.emplace(
            listener_->next_request(timeout).accept(*device_.pd(), *cq_, *cq_, {}, options));
        listener_.reset();
        if (hello_.test == oob::TestKind::Send) {
            report_receives(cm_->qp());
            start_polling();
        }
    }

    oob::Welcome welcome() const {
        oob::Welcome welcome;
        if (listener_) {
            welcome.server.mode = to_wire(memory_.region.mode());
            welcome.server.connection = oob::Connection::RdmaCm;
            welcome.server.cm_port = listener_->port();
        } else {
            welcome.server = to_wire(qp_->local_endpoint(), memory_.region.mode());
        }
        for (const odp::RemoteSegment& segment : exposure_.segments()) {
            welcome.server.ranges.push_back(
                oob::RemoteRange{segment.address, segment.length, segment.rkey});
        }
        return welcome;
    }

    oob::Report finish(const oob::Done& done) {
        oob::Report report;
        if (hello_.test == oob::TestKind::Send) {
            // Receive completions can trail the sender's by a moment.
            const auto deadline = std::chrono::steady_clock::now() + 2s;
            while (received_.load() < done.operations &&
                   std::chrono::steady_clock::now() < deadline) {
                std::this_thread::sleep_for(1ms);
            }
            stop_receiving();
            if (receive_error_) {
                std::rethrow_exception(receive_error_);
            }
            report.received_messages = received_.load();
            report.verified_bytes = verified_bytes_;
            report.mismatched_bytes = mismatched_bytes_;
            if (report.received_messages != done.operations) {
                odp::throw_error(EIO, "client sent " + std::to_string(done.operations) +
                                          " messages, server received " +
                                          std::to_string(report.received_messages));
            }
        } else if (done.verify != 0) {
            const std::uint64_t slots = hello_.buffer_size / stride_;
            const std::uint64_t written = std::min(done.operations, slots);
            for (std::uint64_t slot = 0; slot < written; ++slot) {
                const auto [verified, mismatched] = compare_slot(slot * stride_, slot * stride_);
                report.verified_bytes += verified;
                report.mismatched_bytes += mismatched;
            }
        }
        if (exposure_.release()) {
            std::cerr << "odp-perf server: the mapping under the exposed buffer changed during the "
                         "test\n";
        }
        const odp::Stats stats = memory_.region.stats();
        report.pinned_bytes_peak = stats.peak_pinned_bytes;
        report.faults = stats.chunk_faults;
        report.invalidations = stats.total_invalidations();
        return report;
    }

  private:
    std::pair<std::uint64_t, std::uint64_t> compare_slot(std::uint64_t local_offset,
                                                         std::uint64_t client_offset) const {
        const auto size = static_cast<std::size_t>(hello_.message_size);
        const std::uint8_t* got = memory_.buffer.data() + local_offset;
        const std::uint8_t* want = expected_.data() + client_offset;
        if (std::memcmp(got, want, size) == 0) {
            return {size, 0};
        }
        std::uint64_t mismatched = 0;
        for (std::size_t i = 0; i < size; ++i) {
            mismatched += got[i] != want[i] ? 1 : 0;
        }
        return {size, mismatched};
    }

    odp::verbs::RcQueuePair& queue_pair() { return cm_ ? cm_->qp() : *qp_; }

    void post_receive(odp::verbs::RcQueuePair& qp, std::uint32_t slot) {
        const std::uintptr_t address = memory_.buffer.address() + std::uintptr_t{slot} * stride_;
        odp::Lease lease = memory_.region.translate(address, hello_.message_size, 4);
        qp.post_recv(lease.sges(), slot);
        leases_[slot] = std::move(lease);
        ++receives_posted_;
    }

    // Send test on iWARP: tells the client how many receives are posted in
    // all (an RDMA WRITE into its credit word), a few writes in flight at most.
    void report_receives(odp::verbs::RcQueuePair& qp) {
        credit_pending_ = credit_source_mr_ != nullptr;
        if (!credit_pending_ || credit_writes_in_flight_ >= kMaxCreditWrites) {
            return;
        }
        // A write still in flight may read the word now: any value it reads
        // was true when it was stored (the count only grows).
        std::atomic_ref<std::uint64_t>(credit_source_.front())
            .store(receives_posted_, std::memory_order_release);
        const ibv_sge sge{reinterpret_cast<std::uintptr_t>(credit_source_.data()),
                          sizeof(std::uint64_t), credit_source_mr_->lkey};
        qp.post_write({&sge, 1}, hello_.credit_address, hello_.credit_rkey, kCreditWrite);
        ++credit_writes_in_flight_;
        credit_pending_ = false;
    }

    std::uint32_t receive_slots() const {
        return std::min<std::uint32_t>(hello_.receive_depth,
                                       static_cast<std::uint32_t>(hello_.buffer_size / stride_));
    }

    // A receive for every slot, before the client may send.
    void post_receives(odp::verbs::RcQueuePair& qp) {
        leases_.resize(receive_slots());
        for (std::uint32_t slot = 0; slot < leases_.size(); ++slot) {
            post_receive(qp, slot);
        }
    }

    void start_polling() {
        const std::uint32_t slots = receive_slots();
        const std::uint64_t client_slots = hello_.buffer_size / stride_;
        poller_ = std::jthread([this, slots, client_slots](std::stop_token stop) {
            try {
                std::array<ibv_wc, 16> completions{};
                while (!stop.stop_requested()) {
                    const int n = ibv_poll_cq(cq_.get(), static_cast<int>(completions.size()),
                                              completions.data());
                    if (n < 0) {
                        odp::throw_error(EIO, "ibv_poll_cq on the server's receive queue failed");
                    }
                    for (int i = 0; i < n; ++i) {
                        const ibv_wc& wc = completions[static_cast<std::size_t>(i)];
                        if (wc.status != IBV_WC_SUCCESS) {
                            odp::throw_error(
                                EIO, std::string(wc.wr_id == kCreditWrite ? "receive count write"
                                                                          : "receive completion") +
                                         " failed: " + ibv_wc_status_str(wc.status));
                        }
                        if (wc.wr_id == kCreditWrite) {
                            --credit_writes_in_flight_;
                            continue;
                        }
                        const auto slot = static_cast<std::uint32_t>(wc.wr_id);
                        // RC delivers in order: message n came from client slot n % client_slots.
                        const std::uint64_t n_th = received_.load();
                        const auto [verified, mismatched] = compare_slot(
                            std::uint64_t{slot} * stride_, (n_th % client_slots) * stride_);
                        verified_bytes_ += verified;
                        mismatched_bytes_ += mismatched;
                        leases_[slot].release();
                        received_.store(n_th + 1);
                        post_receive(queue_pair(), slot % slots);
                        credit_pending_ = credit_source_mr_ != nullptr;
                    }
                    if (credit_pending_) {
                        report_receives(queue_pair());
                    }
                }
            } catch (...) {
                receive_error_ = std::current_exception();
            }
        });
    }

    void stop_receiving() {
        if (poller_.joinable()) {
            poller_.request_stop();
            poller_.join();
        }
    }

    odp::Device& device_;
    oob::Hello hello_;
    std::size_t stride_;
    std::uint32_t depth_;  // receives and work requests per queue
    TestMemory memory_;
    MappedBuffer expected_;
    odp::Exposure exposure_;
    odp::verbs::CqPtr cq_;
    std::optional<odp::verbs::RcQueuePair> qp_;       // Endpoints
    std::optional<odp::verbs::CmListener> listener_;  // RdmaCm, until accepted
    std::optional<odp::verbs::CmConnection> cm_;      // RdmaCm
    // Send test on iWARP: the count of posted receives, written to the client.
    static constexpr std::uint64_t kCreditWrite = UINT64_MAX;  // its wr_id
    static constexpr std::uint32_t kMaxCreditWrites = 4;
    std::vector<std::uint64_t> credit_source_;
    odp::verbs::MrPtr credit_source_mr_;
    std::uint64_t receives_posted_ = 0;
    std::uint32_t credit_writes_in_flight_ = 0;
    bool credit_pending_ = false;
    std::vector<odp::Lease> leases_;
    std::atomic<std::uint64_t> received_{0};
    std::uint64_t verified_bytes_ = 0;
    std::uint64_t mismatched_bytes_ = 0;
    std::exception_ptr receive_error_;
    std::jthread poller_;
};

asio::awaitable<void> serve(std::shared_ptr<odp::Device> device, ServerConfig config,
                            oob::Channel& channel) {
    const oob::Hello hello = co_await channel.receive_as<oob::Hello>();
    if (config.verbose) {
        std::cerr << "odp-perf server: " << channel.peer() << " asks for " << to_string(hello.test)
                  << " " << hello.message_size << " B, server mode " << to_string(hello.server_mode)
                  << "\n";
    }
    ServerSession session(*device, config, hello, channel.local_address());
    const oob::Message welcome = session.welcome();
    co_await channel.send(welcome);
    // Blocks this server's other sessions until the client connected (it
    // does so at once) or the step timeout passed.
    session.accept_connection(config.step_timeout);
    const oob::Done done = co_await channel.receive_as<oob::Done>(config.traffic_timeout);
    const oob::Message report = session.finish(done);
    co_await channel.send(report);
}

}  // namespace

odp::Mode to_mode(oob::WireMode mode) {
    switch (mode) {
        case oob::WireMode::Pinned:
            return odp::Mode::Pinned;
        case oob::WireMode::Native:
            return odp::Mode::Native;
        case oob::WireMode::Emulated:
            return odp::Mode::Emulated;
        case oob::WireMode::Auto:
            return odp::Mode::Auto;
    }
    return odp::Mode::Auto;
}

oob::WireMode to_wire(odp::Mode mode) {
    switch (mode) {
        case odp::Mode::Pinned:
            return oob::WireMode::Pinned;
        case odp::Mode::Native:
            return oob::WireMode::Native;
        case odp::Mode::Emulated:
            return oob::WireMode::Emulated;
        case odp::Mode::Auto:
            return oob::WireMode::Auto;
    }
    return oob::WireMode::Auto;
}

oob::Endpoint to_wire(const odp::verbs::Endpoint& endpoint, odp::Mode mode) {
    oob::Endpoint wire;
    wire.qp_num = endpoint.qp_num;
    wire.psn = endpoint.psn;
    std::memcpy(wire.gid.data(), endpoint.gid.raw, wire.gid.size());
    wire.lid = endpoint.lid;
    wire.gid_index = endpoint.gid_index;
    wire.mtu = static_cast<std::uint8_t>(endpoint.mtu);
    wire.mode = to_wire(mode);
    return wire;
}

odp::verbs::Endpoint from_wire(const oob::Endpoint& wire) {
    odp::verbs::Endpoint endpoint;
    endpoint.qp_num = wire.qp_num;
    endpoint.psn = wire.psn;
    std::memcpy(endpoint.gid.raw, wire.gid.data(), wire.gid.size());
    endpoint.lid = wire.lid;
    endpoint.gid_index = wire.gid_index;
    endpoint.mtu = static_cast<ibv_mtu>(wire.mtu);  // 1..5, checked by the codec
    return endpoint;
}

oob::Connection choose_connection(bool cm_asked, bool iwarp_device) {
    return cm_asked || iwarp_device ? oob::Connection::RdmaCm : oob::Connection::Endpoints;
}

bool is_iwarp(const odp::Device& device) {
    return device.context() != nullptr &&
           device.context()->device->transport_type == IBV_TRANSPORT_IWARP;
}

std::string describe_choice(const odp::Device& device, odp::Mode requested, odp::Access access) {
    const odp::Mode chosen = device.resolve(requested, access);
    if (requested != odp::Mode::Auto) {
        return std::string(odp::to_string(chosen));
    }
    const std::string name(device.name());
    std::string why;
    if (chosen == odp::Mode::Native) {
        why = name + " has native ODP for " + odp::to_string(access);
    } else if (device.native_covers(access)) {
        why = name + "'s native ODP " + device.caps().native_data_check;
    } else {
        why = name + " has no native ODP for " + odp::to_string(access);
    }
    return "auto -> " + std::string(odp::to_string(chosen)) + " (" + why + ")";
}

std::vector<odp::Mode> supported_modes(const odp::Device& device, odp::Access access) {
    std::vector<odp::Mode> modes{odp::Mode::Pinned};
    if (device.native_covers(access)) {
        modes.push_back(odp::Mode::Native);
    }
    modes.push_back(odp::Mode::Emulated);
    return modes;
}

std::string native_absence(const odp::Device& device, odp::Access access) {
    if (device.native_covers(access)) {
        return {};
    }
    const std::string name(device.name());
    if (!device.caps().odp) {
        return name + " has no native ODP (Auto picks emulated)";
    }
    return name + "'s native ODP does not cover RC " + odp::to_string(access) +
           " (Auto picks emulated)";
}

odp::RegionOptions region_options(odp::Mode mode, std::size_t stride, std::size_t fault_ahead) {
    odp::RegionOptions options;
    options.mode = mode;
    options.chunk_size = std::max(options.chunk_size, next_power_of_two(stride));
    options.fault_ahead = mode == odp::Mode::Emulated ? fault_ahead : 0;
    return options;
}

oob::SessionHandler make_server_session(std::shared_ptr<odp::Device> device,
                                        const ServerConfig& config) {
    return [device = std::move(device), config](oob::Channel& channel) {
        return serve(device, config, channel);
    };
}

bool run_server(const ServerConfig& config, const std::atomic<bool>& stop,
                std::function<void(std::uint16_t)> on_listening) {
    const std::shared_ptr<odp::Device> device = odp::Device::open({config.device, std::nullopt});
    asio::io_context io;
    oob::ServerOptions options;
    options.step_timeout = config.step_timeout;
    if (config.quiet) {
        options.log = [](const std::string&) {};
    }
    oob::Server server(io, oob::tcp::endpoint(oob::tcp::v4(), config.port),
                       make_server_session(device, config), options);
    server.start();
    if (on_listening) {
        on_listening(server.port());
    }
    while (!stop.load()) {
        const oob::ServerCounters& counters = server.counters();
        if (config.exit_after != 0 && counters.completed + counters.failed >= config.exit_after &&
            counters.active == 0) {
            break;
        }
        io.run_for(100ms);
        if (io.stopped()) {
            io.restart();
        }
    }
    server.stop();
    io.run_for(1s);  // let the sessions see their sockets close
    return server.counters().failed != 0;
}

PeerLink::PeerLink(odp::Device& device, const LinkSpec& spec, odp::Mode local_mode) {
    channel_ = run_sync(io_, connect_owned(spec.host, spec.port, spec.step_timeout));
    cq_ = odp::verbs::create_cq(*device.context(), static_cast<int>(spec.depth * 2 + 16));
    connection_ = choose_connection(spec.cm, is_iwarp(device));

    oob::Hello hello;
    hello.test = spec.test;
    hello.server_mode = to_wire(spec.server_mode);
    hello.message_size = spec.message_size;
    hello.buffer_size = spec.buffer_size;
    hello.receive_depth = spec.depth;
    hello.pattern_seed = spec.pattern_seed;
    if (spec.test == oob::TestKind::Send && is_iwarp(device)) {
        credit_.assign(1, 0);
        credit_mr_ = odp::verbs::reg_mr(*device.pd(), credit_.data(), sizeof(std::uint64_t),
                                        IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
        hello.credit_address = reinterpret_cast<std::uintptr_t>(credit_.data());
        hello.credit_rkey = credit_mr_->rkey;
    }
    if (connection_ == oob::Connection::Endpoints) {
        qp_.emplace(*device.pd(), *cq_, *cq_, qp_options(spec.depth));
        hello.client = to_wire(qp_->local_endpoint(), local_mode);
    } else {
        hello.client.mode = to_wire(local_mode);
        hello.client.connection = connection_;
    }
    const oob::Message hello_message = hello;
    run_sync(io_, channel_->send(hello_message));
    const oob::Welcome welcome = run_sync(io_, channel_->receive_as<oob::Welcome>());
    if (welcome.server.ranges.empty()) {
        odp::throw_error(EPROTO, "server " + channel_->peer() + " exposed no memory");
    }
    ranges_ = welcome.server.ranges;
    remote_base_ = ranges_.front().address;
    for (const oob::RemoteRange& range : ranges_) {
        if (range.address != remote_base_ + remote_size_) {
            odp::throw_error(
                EPROTO, "server " + channel_->peer() + " exposed ranges that are not contiguous");
        }
        remote_size_ += range.length;
    }
    if (remote_size_ < spec.buffer_size) {
        odp::throw_error(EPROTO, "server exposed " + odp::format_bytes(remote_size_) +
                                     ", asked for " + odp::format_bytes(spec.buffer_size));
    }
    server_mode_ = to_mode(welcome.server.mode);
    if (welcome.server.connection != connection_) {
        odp::throw_error(EPROTO, "server " + channel_->peer() + " answered a connection through " +
                                     to_string(connection_) + " with one through " +
                                     to_string(welcome.server.connection));
    }
    if (connection_ == oob::Connection::Endpoints) {
        qp_->connect(from_wire(welcome.server));
        return;
    }
    odp::verbs::CmOptions options;
    options.timeout = spec.step_timeout;
    options.qp = qp_options(spec.depth);
    cm_.emplace(odp::verbs::cm_connect(*device.pd(), *cq_, *cq_, spec.host, welcome.server.cm_port,
                                       {}, options));
}

void PeerLink::await_receive(std::chrono::milliseconds timeout) {
    if (!credit_mr_) {
        return;
    }
    ++sends_;
    const std::atomic_ref<std::uint64_t> posted(credit_.front());  // the server's NIC writes it
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (std::uint64_t spins = 1; posted.load(std::memory_order_acquire) < sends_; ++spins) {
        if (spins % 1024 == 0 && std::chrono::steady_clock::now() >= deadline) {
            odp::throw_error(ETIMEDOUT,
                             "SEND #" + std::to_string(sends_) + ": server " + channel_->peer() +
                                 " posted " + std::to_string(posted.load()) +
                                 " receives in all and no more within " +
                                 std::to_string(timeout.count()) +
                                 " ms (iWARP has no receiver-not-ready retry: odp-perf sends only "
                                 "into posted receives)");
        }
    }
}

PeerLink::~PeerLink() {
    if (channel_) {
        channel_->close();
    }
}

RemoteTarget PeerLink::remote(std::uint64_t offset, std::uint64_t length) const {
    const std::uint64_t address = remote_base_ + offset;
    auto it =
        std::upper_bound(ranges_.begin(), ranges_.end(), address,
                         [](std::uint64_t a, const oob::RemoteRange& r) { return a < r.address; });
    if (it == ranges_.begin() || offset + length > remote_size_) {
        odp::throw_error(ERANGE, "remote offset " + std::to_string(offset) + " + " +
                                     std::to_string(length) + " outside the server's " +
                                     odp::format_bytes(remote_size_));
    }
    --it;
    if (address + length > it->address + it->length) {
        odp::throw_error(ERANGE, "remote range at offset " + std::to_string(offset) + " (" +
                                     std::to_string(length) + " B) straddles two exposed segments");
    }
    return RemoteTarget{address, it->rkey};
}

oob::Report PeerLink::finish(const oob::Done& done, std::chrono::milliseconds timeout) {
    const oob::Message message = done;
    run_sync(io_, channel_->send(message));
    return run_sync(io_, channel_->receive_as<oob::Report>(timeout));
}

}  // namespace odp_perf
