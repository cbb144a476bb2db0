// The odp-perf out-of-band server over loopback TCP (127.0.0.1 only): several
// clients at once, hostile ones among them, and the server keeps serving.
#include <gtest/gtest.h>

#include <mutex>
#include <vector>

#include "oob_channel.hpp"

namespace odp_perf::oob {
namespace {

using namespace std::chrono_literals;

Endpoint endpoint_for(std::uint32_t qp_num) {
    Endpoint endpoint;
    endpoint.qp_num = qp_num;
    endpoint.psn = qp_num * 3 % kMaxQpNum;
    endpoint.mtu = 3;
    endpoint.mode = WireMode::Pinned;
    endpoint.ranges.push_back(RemoteRange{0x1000ULL * qp_num, 4096, qp_num + 100});
    return endpoint;
}

// A stand-in for the perf session: Hello -> Welcome, Done -> Report, with
// the server's answer derived from what the client sent so mixing up
// concurrent sessions would show.
asio::awaitable<void> fake_session(Channel& channel) {
    const Hello hello = co_await channel.receive_as<Hello>();
    const Message welcome = Welcome{endpoint_for(hello.client.qp_num + 1)};
    co_await channel.send(welcome);
    const Done done = co_await channel.receive_as<Done>();
    Report report;
    report.verified_bytes = done.bytes;
    report.received_messages = done.operations;
    report.faults = hello.client.qp_num;
    const Message reply = report;
    co_await channel.send(reply);
}

Hello hello_from(std::uint32_t qp_num) {
    Hello hello;
    hello.test = TestKind::Write;
    hello.message_size = 64;
    hello.buffer_size = 4096;
    hello.client = endpoint_for(qp_num);
    return hello;
}

struct ServerFixture : ::testing::Test {
    asio::io_context io;
    std::mutex log_mutex;
    std::vector<std::string> log;
    std::unique_ptr<Server> server;

    void start(std::chrono::milliseconds step_timeout, std::size_t max_sessions = 64) {
        ServerOptions options;
        options.step_timeout = step_timeout;
        options.max_sessions = max_sessions;
        options.log = [this](const std::string& line) {
            const std::scoped_lock lock(log_mutex);
            log.push_back(line);
        };
        server = std::make_unique<Server>(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0),
                                          fake_session, options);
        server->start();
    }

    bool logged(const std::string& needle) {
        const std::scoped_lock lock(log_mutex);
        for (const auto& line : log) {
            if (line.find(needle) != std::string::npos) {
                return true;
            }
        }
        return false;
    }

    // A well-behaved client: the whole exchange, checking the answers.
    asio::awaitable<void> good_client(std::uint32_t qp_num, int& successes) {
        Channel channel = co_await connect("127.0.0.1", server->port(), 2000ms);
        const Message hello = hello_from(qp_num);
        co_await channel.send(hello);
        const Welcome welcome = co_await channel.receive_as<Welcome>();
        EXPECT_EQ(welcome.server, endpoint_for(qp_num + 1));
        const Message done = Done{qp_num, qp_num * 64ULL, 1, 1};
        co_await channel.send(done);
        const Report report = co_await channel.receive_as<Report>();
        EXPECT_EQ(report.verified_bytes, qp_num * 64ULL);
        EXPECT_EQ(report.received_messages, qp_num);
        EXPECT_EQ(report.faults, qp_num);
        ++successes;
    }

    // A hostile client: sends raw bytes (optionally closes its sending side),
    // then reads what the server answers until the server closes.
    asio::awaitable<void> hostile_client(std::vector<std::byte> bytes, bool half_close,
                                         std::string& answer) {
        tcp::socket socket(io);
        const tcp::endpoint target(asio::ip::address_v4::loopback(), server->port());
        co_await socket.async_connect(target, asio::use_awaitable);
        co_await asio::async_write(socket, asio::buffer(bytes.data(), bytes.size()),
                                   asio::use_awaitable);
        if (half_close) {
            socket.shutdown(tcp::socket::shutdown_send);
        }
        std::vector<std::byte> reply(kHeaderSize + kMaxPayload);
        boost::system::error_code ec;
        const std::size_t got =
            co_await asio::async_read(socket, asio::buffer(reply.data(), reply.size()),
                                      asio::redirect_error(asio::use_awaitable, ec));
        EXPECT_EQ(ec, asio::error::eof) << "the server must close a hostile connection";
        reply.resize(got);
        try {
            const Message message = decode(reply);
            answer = std::get<ErrorMessage>(message).text;
        } catch (const std::exception& error) {
            answer = std::string("no Error message: ") + error.what();
        }
    }

    void run_all(std::chrono::seconds limit) {
        io.run_for(limit);
        ASSERT_TRUE(io.stopped()) << "the exchange did not finish within " << limit.count() << " s";
    }
};

TEST_F(ServerFixture, ServesManyClientsAtOnce) {
    start(2000ms);
    int successes = 0;
    constexpr std::uint32_t kClients = 12;
    int finished = 0;
    for (std::uint32_t i = 1; i <= kClients; ++i) {
        asio::co_spawn(io, good_client(i * 10, successes), [&](std::exception_ptr failure) {
            if (failure) {
                try {
                    std::rethrow_exception(failure);
                } catch (const std::exception& error) {
                    ADD_FAILURE() << "client failed: " << error.what();
                }
            }
            if (++finished == static_cast<int>(kClients)) {
                server->stop();
            }
        });
    }
    run_all(20s);
    EXPECT_EQ(successes, static_cast<int>(kClients));
    EXPECT_EQ(server->counters().accepted, kClients);
    EXPECT_EQ(server->counters().completed, kClients);
    EXPECT_EQ(server->counters().failed, 0U);
    EXPECT_EQ(server->counters().active, 0U);
}

TEST_F(ServerFixture, HostileClientsGetClearErrorsAndOthersAreServed) {
    start(300ms);
    int successes = 0;
    std::string bad_magic, oversized, truncated, silent, hostile_count, out_of_step;

    auto garbage = std::vector<std::byte>(32, std::byte{'G'});
    auto huge = encode(Done{});
    huge[8] = huge[9] = huge[10] = huge[11] = std::byte{0xff};
    huge.resize(kHeaderSize);
    auto cut = encode(hello_from(5));
    cut.resize(cut.size() / 2);
    auto count = encode(hello_from(6));
    count[kHeaderSize + 51] = count[kHeaderSize + 52] = count[kHeaderSize + 53] =
        count[kHeaderSize + 54] = std::byte{0xff};
    auto done_first = encode(Done{});

    int finished = 0;
    constexpr int kTasks = 6 + 4;
    auto on_done = [&](std::exception_ptr failure) {
        if (failure) {
            try {
                std::rethrow_exception(failure);
            } catch (const std::exception& error) {
                ADD_FAILURE() << "task failed: " << error.what();
            }
        }
        if (++finished == kTasks) {
            server->stop();
        }
    };
    asio::co_spawn(io, hostile_client(garbage, false, bad_magic), on_done);
    asio::co_spawn(io, hostile_client(huge, false, oversized), on_done);
    asio::co_spawn(io, hostile_client(cut, true, truncated), on_done);
    asio::co_spawn(io, hostile_client({}, false, silent), on_done);
    asio::co_spawn(io, hostile_client(count, false, hostile_count), on_done);
    asio::co_spawn(io, hostile_client(done_first, false, out_of_step), on_done);
    for (std::uint32_t i = 1; i <= 4; ++i) {
        asio::co_spawn(io, good_client(i, successes), on_done);
    }
    run_all(20s);

    EXPECT_NE(bad_magic.find("bad magic"), std::string::npos) << bad_magic;
    EXPECT_NE(oversized.find("oversized Done message: 4294967295 bytes"), std::string::npos)
        << oversized;
    EXPECT_NE(truncated.find("truncated message"), std::string::npos) << truncated;
    EXPECT_NE(silent.find("timed out after 300 ms waiting for a message header"), std::string::npos)
        << silent;
    EXPECT_NE(hostile_count.find("ranges exceed the limit of 1024"), std::string::npos)
        << hostile_count;
    EXPECT_NE(out_of_step.find("unexpected Done message"), std::string::npos) << out_of_step;
    EXPECT_EQ(successes, 4);
    EXPECT_EQ(server->counters().completed, 4U);
    EXPECT_EQ(server->counters().failed, 6U);
    EXPECT_EQ(server->counters().active, 0U);
    EXPECT_TRUE(logged("bad magic"));

    // Still serving after all that.
    io.restart();
    start(300ms);
    int later = 0;
    asio::co_spawn(io, good_client(77, later), [&](std::exception_ptr failure) {
        EXPECT_FALSE(failure);
        server->stop();
    });
    run_all(10s);
    EXPECT_EQ(later, 1);
}

TEST_F(ServerFixture, ClientSeesServerErrorAsPeerError) {
    start(2000ms);
    std::string seen;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            Channel channel = co_await connect("127.0.0.1", server->port(), 2000ms);
            const Message done = Done{};  // out of step: the server expects Hello
            co_await channel.send(done);
            try {
                co_await channel.receive_as<Welcome>();
            } catch (const PeerError& error) {
                seen = error.what();
            }
        },
        [&](std::exception_ptr) { server->stop(); });
    run_all(10s);
    EXPECT_NE(seen.find("reported: unexpected Done message"), std::string::npos) << seen;
}

TEST_F(ServerFixture, RefusesClientsBeyondTheSessionLimit) {
    start(500ms, 1);
    std::string first, second;
    int finished = 0;
    auto on_done = [&](std::exception_ptr) {
        if (++finished == 2) {
            server->stop();
        }
    };
    // The first holds the only slot until its deadline; the second is refused.
    asio::co_spawn(io, hostile_client({}, false, first), on_done);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            asio::steady_timer wait(io, 100ms);
            co_await wait.async_wait(asio::use_awaitable);
            std::vector<std::byte> nothing;
            co_await hostile_client(nothing, false, second);
        },
        on_done);
    run_all(10s);
    EXPECT_NE(first.find("timed out"), std::string::npos) << first;
    EXPECT_NE(second.find("server busy"), std::string::npos) << second;
    EXPECT_EQ(server->counters().refused, 1U);
}

TEST(OobConnect, RefusedConnectionSaysWhatToDo) {
    asio::io_context io;
    // Bind and close to find a port nobody listens on.
    tcp::acceptor probe(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    const auto port = probe.local_endpoint().port();
    probe.close();
    std::string error_text;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            try {
                co_await connect("127.0.0.1", port, 1000ms);
            } catch (const ProtocolError& error) {
                error_text = error.what();
            }
        },
        asio::detached);
    io.run_for(5s);
    EXPECT_NE(error_text.find("is `odp-perf server` running there?"), std::string::npos)
        << error_text;
}

}  // namespace
}  // namespace odp_perf::oob
