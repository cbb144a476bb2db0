// RDMA CM connection setup (odp/verbs_cm.hpp) on a real device in a guest:
// ODP_CM_DEVICE (rxe0 or siw0) at its address ODP_CM_ADDR, loopback (server
// and client in one process, the client in a thread).  ODP_CM_OTHER_DEVICE,
// when set, is another device of the guest (the PD-on-the-wrong-device case).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <odp/error.hpp>
#include <odp/verbs.hpp>
#include <odp/verbs_cm.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace odp::verbs {
namespace {

using odp::test::expect_error;

using namespace std::chrono_literals;

// A bound for a hang, not a timing: the guests are emulated, and a loaded host
// slows them (a SEND's completion once took over 10 s on siw0).
constexpr auto kHang = 60s;

std::string env(const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr ? value : "";
}

std::vector<std::uint8_t> text_bytes(std::string_view text) {
    return {text.begin(), text.end()};
}

// One side's verbs objects on a device.
// One side's verbs objects on a device, with a 64 KiB buffer registered for
// everything: it is also an RDMA READ sink, which iWARP writes into as a
// remote write, so it needs remote-write access.
struct Side {
    explicit Side(const std::string& device)
        : context(open_device(device)),
          pd(alloc_pd(*context)),
          cq(create_cq(*context, 64)),
          buffer(1 << 16),
          mr(reg_mr(*pd, buffer.data(), buffer.size(),
                    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ)) {}
    [[nodiscard]] std::uint64_t address(std::size_t offset) const {
        return reinterpret_cast<std::uintptr_t>(buffer.data() + offset);
    }
    ContextPtr context;
    PdPtr pd;
    CqPtr cq;
    std::vector<std::uint8_t> buffer;
    MrPtr mr;
};

class CmLoopback : public ::testing::Test {
  protected:
    void SetUp() override {
        device_ = env("ODP_CM_DEVICE");
        address_ = env("ODP_CM_ADDR");
        if (device_.empty() || address_.empty()) {
            GTEST_SKIP() << "ODP_CM_DEVICE and ODP_CM_ADDR name the device under test "
                            "(run-cm.sh sets them in the guest)";
        }
    }
    std::string device_;
    std::string address_;
};

CmOptions with_timeout(std::chrono::milliseconds timeout) {
    CmOptions options;
    options.timeout = timeout;
    return options;
}

TEST_F(CmLoopback, ConnectsWithPrivateDataAndMovesData) {
    EXPECT_EQ(cm_resolve_device(address_, 1, kHang), device_);
    CmListener listener(address_, 0);
    ASSERT_NE(listener.port(), 0);
    Side server(device_);
    Side client(device_);

    auto connecting = std::async(std::launch::async, [&] {
        return cm_connect(*client.pd, *client.cq, *client.cq, address_, listener.port(),
                          text_bytes("hello from the client"));
    });
    CmRequest request = listener.next_request(kHang);
    EXPECT_EQ(request.device(), device_);
    EXPECT_EQ(std::vector<std::uint8_t>(request.payload().begin(), request.payload().end()),
              text_bytes("hello from the client"));
    // The out-of-band values: where the server's buffer is and its rkey.
    struct Remote {
        std::uint64_t address;
        std::uint32_t rkey;
    } remote{server.address(0), server.mr->rkey};
    std::vector<std::uint8_t> reply(sizeof remote);
    std::memcpy(reply.data(), &remote, sizeof remote);
    CmConnection server_side = request.accept(*server.pd, *server.cq, *server.cq, reply);
    CmConnection client_side = connecting.get();
    EXPECT_EQ(client_side.device(), device_);
    EXPECT_EQ(server_side.device(), device_);
    ASSERT_EQ(client_side.peer_payload().size(), sizeof remote);
    Remote got{};
    std::memcpy(&got, client_side.peer_payload().data(), sizeof got);
    EXPECT_EQ(got.address, remote.address);
    EXPECT_EQ(got.rkey, remote.rkey);

    // WRITE a pattern into the server, READ it back, SEND a message.
    constexpr std::uint32_t kLength = 8192;
    for (std::uint32_t i = 0; i < kLength; ++i) {
        client.buffer[i] = static_cast<std::uint8_t>(i * 13 + 5);
    }
    const ibv_sge write_sge{client.address(0), kLength, client.mr->lkey};
    client_side.qp().post_write({&write_sge, 1}, got.address, got.rkey, 1);
    EXPECT_EQ(wait_completion(*client.cq, kHang).opcode, IBV_WC_RDMA_WRITE);
    EXPECT_EQ(0, std::memcmp(server.buffer.data(), client.buffer.data(), kLength));

    const ibv_sge read_sge{client.address(kLength), kLength, client.mr->lkey};
    client_side.qp().post_read({&read_sge, 1}, got.address, got.rkey, 2);
    EXPECT_EQ(wait_completion(*client.cq, kHang).opcode, IBV_WC_RDMA_READ);
    EXPECT_EQ(0, std::memcmp(client.buffer.data() + kLength, server.buffer.data(), kLength));

    const ibv_sge recv_sge{server.address(32768), 64, server.mr->lkey};
    server_side.qp().post_recv({&recv_sge, 1}, 3);
    std::memcpy(client.buffer.data() + 32768, "sent through RDMA CM", 21);
    const ibv_sge send_sge{client.address(32768), 21, client.mr->lkey};
    client_side.qp().post_send({&send_sge, 1}, 4);
    EXPECT_EQ(wait_completion(*client.cq, kHang).opcode, IBV_WC_SEND);
    const ibv_wc received = wait_completion(*server.cq, kHang);
    EXPECT_EQ(received.opcode, IBV_WC_RECV);
    EXPECT_EQ(received.byte_len, 21U);
    EXPECT_STREQ(reinterpret_cast<const char*>(server.buffer.data() + 32768),
                 "sent through RDMA CM");
}

// siw takes one SGE per RDMA READ (iWARP's sink is one tagged buffer):
// RcQueuePair splits a READ into as many work requests as the device needs.
TEST_F(CmLoopback, ReadIntoSeveralSgesLandsInEach) {
    CmListener listener(address_, 0);
    Side server(device_);
    Side client(device_);
    for (std::size_t i = 0; i < server.buffer.size(); ++i) {
        server.buffer[i] = static_cast<std::uint8_t>(i * 7 + 3);
    }
    auto connecting = std::async(std::launch::async, [&] {
        return cm_connect(*client.pd, *client.cq, *client.cq, address_, listener.port(), {});
    });
    CmConnection server_side =
        listener.next_request(kHang).accept(*server.pd, *server.cq, *server.cq, {});
    CmConnection client_side = connecting.get();
    // Three pieces of 3000 bytes, scattered in the client's buffer.
    const std::uint64_t base = client.address(0);
    const ibv_sge sges[3] = {{base + 40000, 3000, client.mr->lkey},
                             {base + 10000, 3000, client.mr->lkey},
                             {base + 20000, 3000, client.mr->lkey}};
    client_side.qp().post_read(sges, server.address(100), server.mr->rkey, 9);
    const ibv_wc done = wait_completion(*client.cq, kHang);
    EXPECT_EQ(done.wr_id, 9U);
    EXPECT_EQ(done.opcode, IBV_WC_RDMA_READ);
    EXPECT_EQ(0, std::memcmp(client.buffer.data() + 40000, server.buffer.data() + 100, 3000));
    EXPECT_EQ(0, std::memcmp(client.buffer.data() + 10000, server.buffer.data() + 3100, 3000));
    EXPECT_EQ(0, std::memcmp(client.buffer.data() + 20000, server.buffer.data() + 6100, 3000));
    // One completion for the whole READ: nothing else is left on the CQ.
    EXPECT_TRUE(poll(*client.cq, 1, 200ms).empty());
}

// Receives posted in before_connect are there before the peer can send: the
// client sends the moment cm_connect returns (iWARP would break the
// connection on a SEND without a receive; RoCE would retry it).
TEST_F(CmLoopback, ReceivesPostedBeforeConnectCatchTheFirstSend) {
    CmListener listener(address_, 0);
    Side server(device_);
    Side client(device_);
    auto connecting = std::async(std::launch::async, [&] {
        CmConnection connection =
            cm_connect(*client.pd, *client.cq, *client.cq, address_, listener.port(), {});
        std::memcpy(client.buffer.data(), "first", 6);
        const ibv_sge sge{client.address(0), 6, client.mr->lkey};
        connection.qp().post_send({&sge, 1}, 1);
        EXPECT_EQ(wait_completion(*client.cq, kHang).opcode, IBV_WC_SEND);
        return connection;
    });
    CmOptions options;
    ibv_qp_state state_when_called = IBV_QPS_ERR;
    options.before_connect = [&](RcQueuePair& qp) {
        ibv_qp_attr attr{};
        ibv_qp_init_attr init{};
        ASSERT_EQ(ibv_query_qp(&qp.qp(), &attr, IBV_QP_STATE, &init), 0);
        state_when_called = attr.qp_state;
        const ibv_sge sge{server.address(4096), 64, server.mr->lkey};
        qp.post_recv({&sge, 1}, 7);
    };
    CmConnection server_side =
        listener.next_request(kHang).accept(*server.pd, *server.cq, *server.cq, {}, options);
    CmConnection client_side = connecting.get();
    // INIT, before the connection. siw's query_qp of 5.10 and 6.1 fills no
    // qp_state (it reads 0, RESET; 6.12's and 7.3's fill it): there the
    // receive it took and filled proves the order.
    EXPECT_TRUE(state_when_called == IBV_QPS_INIT || state_when_called == IBV_QPS_RESET)
        << "before_connect ran after the connection (QP state " << state_when_called << ")";
    const ibv_wc received = wait_completion(*server.cq, kHang);
    EXPECT_EQ(received.wr_id, 7U);
    EXPECT_EQ(received.opcode, IBV_WC_RECV);
    EXPECT_STREQ(reinterpret_cast<const char*>(server.buffer.data() + 4096), "first");
}

// The device's own address, and a connection from the device to itself on it:
// RDMA WRITE and READ from qp() into the same PD's memory, SEND from qp()
// into receives on peer() (one QP on rxe0, two through RDMA CM on siw0).
TEST_F(CmLoopback, LoopbackConnectionMovesDataOnOneDevice) {
    EXPECT_EQ(cm_device_address(device_, kHang), address_);
    Side side(device_);
    LoopbackConnection loopback(*side.pd, *side.cq, *side.cq);
    const bool iwarp = side.context->device->transport_type == IBV_TRANSPORT_IWARP;
    EXPECT_EQ(loopback.through_cm(), iwarp);
    EXPECT_EQ(&loopback.qp() == &loopback.peer(), !iwarp);
    for (std::size_t i = 0; i < 4096; ++i) {
        side.buffer[i] = static_cast<std::uint8_t>(i * 31 + 1);
    }
    const ibv_sge write_sge{side.address(0), 4096, side.mr->lkey};
    loopback.qp().post_write({&write_sge, 1}, side.address(8192), side.mr->rkey, 1);
    EXPECT_EQ(wait_completion(*side.cq, kHang).opcode, IBV_WC_RDMA_WRITE);
    EXPECT_EQ(0, std::memcmp(side.buffer.data() + 8192, side.buffer.data(), 4096));
    const ibv_sge read_sge{side.address(16384), 4096, side.mr->lkey};
    loopback.qp().post_read({&read_sge, 1}, side.address(0), side.mr->rkey, 2);
    EXPECT_EQ(wait_completion(*side.cq, kHang).opcode, IBV_WC_RDMA_READ);
    EXPECT_EQ(0, std::memcmp(side.buffer.data() + 16384, side.buffer.data(), 4096));
    const ibv_sge recv_sge{side.address(32768), 64, side.mr->lkey};
    loopback.peer().post_recv({&recv_sge, 1}, 3);
    const ibv_sge send_sge{side.address(0), 64, side.mr->lkey};
    loopback.qp().post_send({&send_sge, 1}, 4);
    const std::vector<ibv_wc> done = poll(*side.cq, 2, kHang);
    ASSERT_EQ(done.size(), 2U);
    EXPECT_EQ(0, std::memcmp(side.buffer.data() + 32768, side.buffer.data(), 64));
}

// /proc/sys/net/ipv4/ip_local_port_range narrowed to [first, first + count)
// for the test's lifetime (restored after).  RDMA CM draws "port 0" ports
// from this range, like TCP.
class LocalPortRange {
  public:
    LocalPortRange(int first, int count) {
        std::ifstream(kPath) >> saved_low_ >> saved_high_;
        write(first, first + count - 1);
    }
    LocalPortRange(const LocalPortRange&) = delete;
    LocalPortRange& operator=(const LocalPortRange&) = delete;
    ~LocalPortRange() { write(saved_low_, saved_high_); }

  private:
    static constexpr const char* kPath = "/proc/sys/net/ipv4/ip_local_port_range";
    static void write(int low, int high) {
        std::ofstream out(kPath);
        out << low << ' ' << high << '\n';
        out.flush();
        if (!out) {
            throw_errno(std::string("writing ") + kPath + " (the guest test runs as root)");
        }
    }
    int saved_low_ = 0;
    int saved_high_ = 0;
};

// A plain TCP socket listening on address:port: a port RDMA CM does not know
// is taken.
struct TcpListener {
    TcpListener(const std::string& address, std::uint16_t port)
        : fd(socket(AF_INET, SOCK_STREAM, 0)) {
        if (fd < 0) {
            throw_errno("socket");
        }
        sockaddr_in where{};
        where.sin_family = AF_INET;
        where.sin_port = htons(port);
        inet_pton(AF_INET, address.c_str(), &where.sin_addr);
        if (bind(fd, reinterpret_cast<const sockaddr*>(&where), sizeof where) != 0 ||
            listen(fd, 1) != 0) {
            const int err = errno;
            close(fd);
            throw_error(err, "bind/listen " + address + ":" + std::to_string(port));
        }
    }
    TcpListener(const TcpListener&) = delete;
    TcpListener& operator=(const TcpListener&) = delete;
    ~TcpListener() { close(fd); }
    int fd;
};

// RDMA CM picks "port 0" ports from its own port space only; on iWARP the
// kernel then binds a TCP socket to that port (the listener's, and the
// connecting end's local one), which fails when a TCP socket RDMA CM knows
// nothing of has it.  These tests narrow the port range to kCount ports and
// take every other one with a plain TCP listener: every listen on port 0 and
// every connection must still succeed (odp retries with a fresh CM id).  On
// InfiniBand and RoCE the CM's ports are its own and nothing collides.  The
// port range is the guest's own (its tests run one at a time).
class CmTakenPorts : public CmLoopback {
  protected:
    static constexpr int kFirst = 41000;
    static constexpr int kCount = 24;
    void SetUp() override {
        CmLoopback::SetUp();
        if (IsSkipped()) {
            return;
        }
        range_.emplace(kFirst, kCount);
        for (int port = kFirst; port < kFirst + kCount; port += 2) {
            taken_.push_back(
                std::make_unique<TcpListener>(address_, static_cast<std::uint16_t>(port)));
            taken_ports_.insert(static_cast<std::uint16_t>(port));
        }
    }
    void TearDown() override {
        taken_.clear();
        range_.reset();
    }
    std::optional<LocalPortRange> range_;
    std::vector<std::unique_ptr<TcpListener>> taken_;
    std::set<std::uint16_t> taken_ports_;
};

TEST_F(CmTakenPorts, ListensOnPortZeroSkipPortsTakenOutsideRdmaCm) {
    const Side side(device_);
    // Only iWARP's ports are TCP's: InfiniBand and RoCE may share them.
    const bool iwarp = side.context->device->transport_type == IBV_TRANSPORT_IWARP;
    for (int i = 0; i < 20; ++i) {
        const CmListener listener(address_, 0);
        EXPECT_GE(listener.port(), kFirst);
        EXPECT_LT(listener.port(), kFirst + kCount);
        if (iwarp) {
            EXPECT_EQ(taken_ports_.count(listener.port()), 0U) << listener.port();
        }
    }
}

// The listener is outside the range: only the connecting end's local port
// (port 0, from the range) can be taken.
TEST_F(CmTakenPorts, ConnectionsSkipLocalPortsTakenOutsideRdmaCm) {
    CmListener listener(address_, kFirst + 2 * kCount);
    Side server(device_);
    Side client(device_);
    for (int i = 0; i < 20; ++i) {
        SCOPED_TRACE("connection " + std::to_string(i));
        const std::string hello = "connection " + std::to_string(i);
        // The connecting end runs here, so that its error is the one reported.
        auto accepting = std::async(std::launch::async, [&] {
            CmRequest request = listener.next_request(kHang);
            EXPECT_EQ(std::vector<std::uint8_t>(request.payload().begin(), request.payload().end()),
                      text_bytes(hello));
            return request.accept(*server.pd, *server.cq, *server.cq,
                                  text_bytes("accepted " + hello));
        });
        const CmConnection client_side =
            cm_connect(*client.pd, *client.cq, *client.cq, address_, listener.port(),
                       text_bytes(hello), with_timeout(kHang));
        const CmConnection server_side = accepting.get();
        EXPECT_EQ(std::vector<std::uint8_t>(client_side.peer_payload().begin(),
                                            client_side.peer_payload().end()),
                  text_bytes("accepted " + hello));
    }
}

TEST_F(CmLoopback, NoListenerIsRefusedAtConnect) {
    Side client(device_);
    // A port nobody listens on: the listener's, once it is gone.
    const std::uint16_t port = CmListener(address_, 0).port();
    const std::string error = expect_error(ECONNREFUSED, [&] {
        (void)cm_connect(*client.pd, *client.cq, *client.cq, address_, port, {},
                         with_timeout(kHang));
    });
    EXPECT_NE(error.find("rdma_connect(" + address_ + ":"), std::string::npos) << error;
    EXPECT_NE(error.find("is an RDMA CM server listening"), std::string::npos) << error;
}

TEST_F(CmLoopback, UnacceptedRequestIsRejected) {
    CmListener listener(address_, 0);
    Side client(device_);
    auto connecting = std::async(std::launch::async, [&] {
        return expect_error(ECONNREFUSED, [&] {
            (void)cm_connect(*client.pd, *client.cq, *client.cq, address_, listener.port(),
                             text_bytes("refuse me"), with_timeout(kHang));
        });
    });
    {
        const CmRequest request = listener.next_request(kHang);
        EXPECT_EQ(std::vector<std::uint8_t>(request.payload().begin(), request.payload().end()),
                  text_bytes("refuse me"));
    }  // not accepted: the destructor rejects it
    const std::string error = connecting.get();
    EXPECT_NE(error.find("got RDMA_CM_EVENT_REJECTED"), std::string::npos) << error;
}

TEST_F(CmLoopback, AddressNoDeviceReachesFailsAtResolve) {
    Side client(device_);
    // TEST-NET-3: routed nowhere in the guest.
    // The kernel refuses it at once (ENETUNREACH) or reports ADDR_ERROR
    // (EHOSTUNREACH), depending on the version; either way the step is named.
    try {
        (void)cm_connect(*client.pd, *client.cq, *client.cq, "203.0.113.7", 18515, {},
                         with_timeout(3s));
        ADD_FAILURE() << "connected to an address no device reaches";
    } catch (const Error& error) {
        EXPECT_TRUE(error.errno_value() == ENETUNREACH || error.errno_value() == EHOSTUNREACH)
            << error.what();
        EXPECT_NE(std::string(error.what()).find("rdma_resolve_addr(203.0.113.7:18515)"),
                  std::string::npos)
            << error.what();
    }
}

TEST_F(CmLoopback, PdOnAnotherDeviceIsRefused) {
    const std::string other = env("ODP_CM_OTHER_DEVICE");
    if (other.empty()) {
        GTEST_SKIP() << "the guest has no second RDMA device (ODP_CM_OTHER_DEVICE)";
    }
    CmListener listener(address_, 0);
    Side wrong(other);
    const std::string error = expect_error(EINVAL, [&] {
        (void)cm_connect(*wrong.pd, *wrong.cq, *wrong.cq, address_, listener.port(), {});
    });
    EXPECT_NE(error.find("is on RDMA device " + device_ + ", but the PD is on " + other),
              std::string::npos)
        << error;
}

}  // namespace
}  // namespace odp::verbs
