// Out-of-band transport of odp-perf: framed messages over TCP with Boost.Asio
// C++20 coroutines, a deadline on every read and write, one io_context.
#pragma once

// Boost 1.74's awaitable.hpp uses std::exchange without including <utility>.
#include <utility>
//
#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "oob_codec.hpp"

namespace odp_perf::oob {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// The peer sent an Error message: it gave up on the connection and says why.
class PeerError : public std::system_error {
  public:
    PeerError(int code, const std::string& what)
        : std::system_error(code, std::generic_category(), what) {}
};

// One connection: whole messages in and out, each step bounded by a deadline.
class Channel {
  public:
    Channel(tcp::socket socket, std::chrono::milliseconds step_timeout);
    Channel(Channel&&) = default;
    Channel& operator=(Channel&&) = delete;
    ~Channel();

    // Pass a named Message: GCC 12 destroys non-trivial temporaries inside a
    // co_await expression twice, so temporaries are refused at compile time.
    asio::awaitable<void> send(const Message& message);
    asio::awaitable<void> send(Message&& message) = delete;
    // Throws ProtocolError (malformed, truncated, oversized, timed out, closed)
    // or PeerError when the peer sends an Error message.
    asio::awaitable<Message> receive();
    asio::awaitable<Message> receive(std::chrono::milliseconds timeout);

    // Receives and requires message type T; anything else is a protocol error.
    template <typename T>
    asio::awaitable<T> receive_as(std::chrono::milliseconds timeout) {
        Message message = co_await receive(timeout);
        if (auto* body = std::get_if<T>(&message)) {
            co_return std::move(*body);
        }
        throw ProtocolError(std::errc::protocol_error,
                            std::string("unexpected ") + to_string(type_of(message)) +
                                " message from " + peer_ + " (protocol out of step)");
    }
    template <typename T>
    asio::awaitable<T> receive_as() {
        return receive_as<T>(timeout_);
    }

    const std::string& peer() const { return peer_; }
    // This side's IP address of the connection ("192.0.2.1").
    const std::string& local_address() const { return local_address_; }
    std::chrono::milliseconds step_timeout() const { return timeout_; }
    void close();

  private:
    asio::awaitable<void> read_exact(std::span<std::byte> out, std::chrono::milliseconds timeout,
                                     const char* what);
    void arm(std::chrono::milliseconds timeout);
    bool disarm();

    tcp::socket socket_;
    asio::steady_timer timer_;
    std::chrono::milliseconds timeout_;
    // Bumped whenever a deadline is armed or disarmed; a timer handler only
    // cancels the socket if its deadline is still the current one.  Shared so
    // a late handler never touches a destroyed Channel.
    std::shared_ptr<std::uint64_t> generation_;
    bool timed_out_ = false;
    std::string peer_;
    std::string local_address_;
};

struct ServerOptions {
    std::chrono::milliseconds step_timeout{10000};
    std::size_t max_sessions = 64;
    // Where per-connection failures are reported (default: stderr).
    std::function<void(const std::string&)> log;
};

struct ServerCounters {
    std::uint64_t accepted = 0;
    std::uint64_t completed = 0;
    std::uint64_t failed = 0;
    std::uint64_t refused = 0;  // over max_sessions
    std::size_t active = 0;
};

using SessionHandler = std::function<asio::awaitable<void>(Channel&)>;

// Accepts connections and runs one coroutine per client.  A client that
// misbehaves gets an Error message naming the problem and is disconnected;
// the others are unaffected.
class Server {
  public:
    Server(asio::io_context& io, const tcp::endpoint& listen_on, SessionHandler handler,
           ServerOptions options = {});
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    std::uint16_t port() const { return port_; }
    void start();
    void stop();
    const ServerCounters& counters() const { return counters_; }

  private:
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> run_session(tcp::socket socket);

    asio::io_context& io_;
    tcp::acceptor acceptor_;
    std::uint16_t port_ = 0;
    SessionHandler handler_;
    ServerOptions options_;
    ServerCounters counters_;
};

// Resolves and connects with a deadline; throws ProtocolError on failure.
// (string_view: trivially destructible, see Channel::send about GCC 12.)
asio::awaitable<Channel> connect(std::string_view host_name, std::uint16_t port,
                                 std::chrono::milliseconds step_timeout);

// Best effort: tells the peer why we give up, bounded by the channel's deadline.
asio::awaitable<void> send_error(Channel& channel, const std::system_error& error);

}  // namespace odp_perf::oob
