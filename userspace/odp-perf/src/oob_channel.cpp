#include "oob_channel.hpp"

#include <iostream>
#include <optional>

namespace odp_perf::oob {
namespace {

std::string describe(const tcp::socket& socket) {
    boost::system::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    if (ec) {
        return "an unconnected peer";
    }
    return remote.address().to_string() + ":" + std::to_string(remote.port());
}

std::string milliseconds(std::chrono::milliseconds ms) {
    return std::to_string(ms.count()) + " ms";
}

}  // namespace

Channel::Channel(tcp::socket socket, std::chrono::milliseconds step_timeout)
    : socket_(std::move(socket)),
      timer_(socket_.get_executor()),
      timeout_(step_timeout),
      generation_(std::make_shared<std::uint64_t>(0)),
      peer_(describe(socket_)) {
    boost::system::error_code ignored;
    local_address_ = socket_.local_endpoint(ignored).address().to_string();
    socket_.set_option(tcp::no_delay(true), ignored);  // small messages, latency matters
}

Channel::~Channel() {
    if (generation_) {
        ++*generation_;  // a deadline still queued must not touch this object
    }
}

void Channel::arm(std::chrono::milliseconds timeout) {
    timed_out_ = false;
    const std::uint64_t armed = ++*generation_;
    timer_.expires_after(timeout);
    timer_.async_wait([generation = generation_, armed, socket = &socket_,
                       timed_out = &timed_out_](const boost::system::error_code& ec) {
        // Only the deadline that is still current may cancel: the operation
        // it guarded may have completed and a new one started since.
        if (ec || *generation != armed) {
            return;
        }
        *timed_out = true;
        boost::system::error_code ignored;
        socket->cancel(ignored);
    });
}

bool Channel::disarm() {
    ++*generation_;
    timer_.cancel();
    return timed_out_;
}

void Channel::close() {
    ++*generation_;
    boost::system::error_code ignored;
    timer_.cancel();
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
}

asio::awaitable<void> Channel::read_exact(std::span<std::byte> out,
                                          std::chrono::milliseconds timeout, const char* what) {
    boost::system::error_code ec;
    arm(timeout);
    const std::size_t got =
        co_await asio::async_read(socket_, asio::buffer(out.data(), out.size()),
                                  asio::redirect_error(asio::use_awaitable, ec));
    const bool timed_out = disarm();
    if (timed_out) {
        throw ProtocolError(std::errc::timed_out,
                            "timed out after " + milliseconds(timeout) + " waiting for " + what +
                                " from " + peer_ + " (" + std::to_string(got) + " of " +
                                std::to_string(out.size()) + " bytes arrived)");
    }
    if (ec == asio::error::eof && got == 0 && out.size() == kHeaderSize) {
        throw ProtocolError(std::errc::connection_aborted,
                            "connection closed by " + peer_ + " while waiting for " + what);
    }
    if (ec) {
        throw ProtocolError(std::errc::bad_message, "truncated message from " + peer_ + ": " +
                                                        std::to_string(got) + " of " +
                                                        std::to_string(out.size()) + " bytes of " +
                                                        what + " arrived (" + ec.message() + ")");
    }
}

asio::awaitable<void> Channel::send(const Message& message) {
    const std::vector<std::byte> bytes = encode(message);
    boost::system::error_code ec;
    arm(timeout_);
    co_await asio::async_write(socket_, asio::buffer(bytes.data(), bytes.size()),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (disarm()) {
        throw ProtocolError(std::errc::timed_out, std::string("timed out after ") +
                                                      milliseconds(timeout_) + " sending " +
                                                      to_string(type_of(message)) + " to " + peer_ +
                                                      " (the peer does not read)");
    }
    if (ec) {
        throw ProtocolError(std::errc::connection_aborted,
                            std::string("sending ") + to_string(type_of(message)) + " to " + peer_ +
                                " failed: " + ec.message());
    }
}

asio::awaitable<Message> Channel::receive() {
    return receive(timeout_);
}

asio::awaitable<Message> Channel::receive(std::chrono::milliseconds timeout) {
    std::array<std::byte, kHeaderSize> header_bytes{};
    co_await read_exact(header_bytes, timeout, "a message header");
    // The size is validated here, before the payload buffer is allocated.
    const Header header = decode_header(header_bytes);
    std::vector<std::byte> payload(header.payload_size);
    co_await read_exact(payload, timeout_, "a message payload");
    Message message = decode_payload(header, payload);
    if (const auto* error = std::get_if<ErrorMessage>(&message)) {
        throw PeerError(static_cast<int>(error->code),
                        "peer " + peer_ + " reported: " + error->text);
    }
    co_return message;
}

asio::awaitable<void> send_error(Channel& channel, const std::system_error& error) {
    try {
        const Message message =
            ErrorMessage{static_cast<std::uint32_t>(error.code().value()), error.what()};
        co_await channel.send(message);
    } catch (const std::exception&) {
        // The peer is gone or does not read: nothing more to tell it.
    }
}

Server::Server(asio::io_context& io, const tcp::endpoint& listen_on, SessionHandler handler,
               ServerOptions options)
    : io_(io), acceptor_(io), handler_(std::move(handler)), options_(std::move(options)) {
    if (!options_.log) {
        options_.log = [](const std::string& line) { std::cerr << line << '\n'; };
    }
    boost::system::error_code ec;
    acceptor_.open(listen_on.protocol(), ec);
    if (!ec) {
        acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    }
    if (!ec) {
        acceptor_.bind(listen_on, ec);
    }
    if (!ec) {
        acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        throw std::system_error(ec.value(), std::generic_category(),
                                "listening on " + listen_on.address().to_string() + ":" +
                                    std::to_string(listen_on.port()) + ": " + ec.message() +
                                    " (pick another --port)");
    }
    port_ = acceptor_.local_endpoint().port();
}

void Server::start() {
    asio::co_spawn(io_, accept_loop(), asio::detached);
}

void Server::stop() {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
}

asio::awaitable<void> Server::accept_loop() {
    while (acceptor_.is_open()) {
        boost::system::error_code ec;
        tcp::socket socket =
            co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec == asio::error::operation_aborted) {
            break;
        }
        if (ec) {
            options_.log("odp-perf server: accept failed: " + ec.message());
            continue;
        }
        ++counters_.accepted;
        asio::co_spawn(io_, run_session(std::move(socket)), asio::detached);
    }
}

asio::awaitable<void> Server::run_session(tcp::socket socket) {
    Channel channel(std::move(socket), options_.step_timeout);
    if (counters_.active >= options_.max_sessions) {
        ++counters_.refused;
        const std::string why = "server busy: " + std::to_string(counters_.active) +
                                " sessions already running, retry later";
        options_.log("odp-perf server: refusing " + channel.peer() + ": " + why);
        const std::system_error busy(
            std::make_error_code(std::errc::resource_unavailable_try_again), why);
        co_await send_error(channel, busy);
        co_return;
    }
    ++counters_.active;
    // A failing session must neither kill the server nor leak the count.
    std::exception_ptr failure;
    try {
        co_await handler_(channel);
        ++counters_.completed;
    } catch (...) {
        failure = std::current_exception();
    }
    --counters_.active;
    if (!failure) {
        co_return;
    }
    ++counters_.failed;
    // The peer learns why (unless it sent the error itself); co_await is not
    // allowed inside a catch block, hence the error is taken out first.
    std::optional<std::system_error> to_send;
    try {
        std::rethrow_exception(failure);
    } catch (const PeerError& error) {
        options_.log("odp-perf server: session with " + channel.peer() + " ended: " + error.what());
    } catch (const std::system_error& error) {
        options_.log("odp-perf server: session with " + channel.peer() +
                     " failed: " + error.what());
        to_send = error;
    } catch (const std::exception& error) {
        options_.log("odp-perf server: session with " + channel.peer() +
                     " failed: " + error.what());
        to_send = std::system_error(std::make_error_code(std::errc::io_error), error.what());
    }
    if (to_send) {
        co_await send_error(channel, *to_send);
    }
    channel.close();
}

asio::awaitable<Channel> connect(std::string_view host_name, std::uint16_t port,
                                 std::chrono::milliseconds step_timeout) {
    const std::string host(host_name);
    const auto executor = co_await asio::this_coro::executor;
    tcp::resolver resolver(executor);
    boost::system::error_code ec;
    const std::string service = std::to_string(port);
    const auto endpoints = co_await resolver.async_resolve(
        host, service, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
        throw ProtocolError(std::errc::host_unreachable,
                            "cannot resolve " + host + ": " + ec.message());
    }
    tcp::socket socket(executor);
    asio::steady_timer deadline(executor);
    // Shared with the timer handler so a late handler never touches this frame.
    struct DeadlineState {
        bool done = false;
        bool timed_out = false;
    };
    const auto state = std::make_shared<DeadlineState>();
    deadline.expires_after(step_timeout);
    deadline.async_wait([state, socket_ptr = &socket](const boost::system::error_code& wait_ec) {
        if (wait_ec || state->done) {
            return;
        }
        state->timed_out = true;
        boost::system::error_code ignored;
        socket_ptr->cancel(ignored);
    });
    co_await asio::async_connect(socket, endpoints, asio::redirect_error(asio::use_awaitable, ec));
    state->done = true;
    deadline.cancel();
    const bool timed_out = state->timed_out;
    if (timed_out) {
        throw ProtocolError(std::errc::timed_out, "connecting to " + host + ":" +
                                                      std::to_string(port) + " timed out after " +
                                                      milliseconds(step_timeout));
    }
    if (ec) {
        throw ProtocolError(std::errc::connection_refused,
                            "connecting to " + host + ":" + std::to_string(port) + ": " +
                                ec.message() + " (is `odp-perf server` running there?)");
    }
    co_return Channel(std::move(socket), step_timeout);
}

}  // namespace odp_perf::oob
