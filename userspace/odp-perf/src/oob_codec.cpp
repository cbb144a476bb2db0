#include "oob_codec.hpp"

#include <algorithm>
#include <limits>
#include <string_view>
#include <type_traits>

namespace odp_perf::oob {
namespace {

// Appends little-endian integers and raw bytes.
class Writer {
  public:
    template <typename T>
    requires std::is_unsigned_v<T>
    void put(T value) {
        for (std::size_t i = 0; i < sizeof(T); ++i) {
            bytes_.push_back(static_cast<std::byte>((value >> (8 * i)) & 0xffU));
        }
    }
    void put_enum(auto value) { put(static_cast<std::underlying_type_t<decltype(value)>>(value)); }
    void put_bytes(std::span<const std::uint8_t> data) {
        for (const std::uint8_t b : data) {
            bytes_.push_back(static_cast<std::byte>(b));
        }
    }
    std::vector<std::byte> take() { return std::move(bytes_); }
    std::size_t size() const { return bytes_.size(); }
    std::vector<std::byte>& bytes() { return bytes_; }

  private:
    std::vector<std::byte> bytes_;
};

// Reads little-endian integers, never past the end: a short buffer is a
// truncated message, reported with the field that was being read.
class Reader {
  public:
    Reader(std::span<const std::byte> bytes, MessageType type) : bytes_(bytes), type_(type) {}

    template <typename T>
    requires std::is_unsigned_v<T> T get(const char* field) {
        need(sizeof(T), field);
        T value = 0;
        for (std::size_t i = 0; i < sizeof(T); ++i) {
            value = static_cast<T>(value | (static_cast<T>(bytes_[offset_ + i]) << (8 * i)));
        }
        offset_ += sizeof(T);
        return value;
    }
    void get_bytes(std::span<std::uint8_t> out, const char* field) {
        need(out.size(), field);
        for (std::size_t i = 0; i < out.size(); ++i) {
            out[i] = static_cast<std::uint8_t>(bytes_[offset_ + i]);
        }
        offset_ += out.size();
    }
    std::size_t remaining() const { return bytes_.size() - offset_; }
    void expect_end() const {
        if (offset_ != bytes_.size()) {
            fail(std::errc::bad_message,
                 std::to_string(bytes_.size() - offset_) + " trailing bytes after the last field");
        }
    }
    [[noreturn]] void fail(std::errc code, const std::string& what) const {
        throw ProtocolError(code,
                            std::string("malformed ") + to_string(type_) + " message: " + what);
    }

  private:
    void need(std::size_t count, const char* field) const {
        if (remaining() < count) {
            fail(std::errc::bad_message, std::string("truncated at field '") + field + "' (needs " +
                                             std::to_string(count) + " bytes, " +
                                             std::to_string(remaining()) + " left)");
        }
    }

    std::span<const std::byte> bytes_;
    std::size_t offset_ = 0;
    MessageType type_;
};

WireMode read_mode(Reader& in, const char* field, bool allow_auto) {
    const auto raw = in.get<std::uint8_t>(field);
    const auto max = static_cast<std::uint8_t>(allow_auto ? WireMode::Auto : WireMode::Emulated);
    if (raw > max) {
        in.fail(std::errc::protocol_error, std::string("field '") + field + "' holds mode " +
                                               std::to_string(raw) + ", expected 0.." +
                                               std::to_string(max));
    }
    return static_cast<WireMode>(raw);
}

void check_range(const RemoteRange& range, std::size_t index, const auto& fail) {
    if (range.length == 0) {
        fail("range " + std::to_string(index) + " has length 0");
    }
    if (range.address > std::numeric_limits<std::uint64_t>::max() - range.length) {
        fail("range " + std::to_string(index) + " wraps around the address space");
    }
}

void check_queue_pair_values(const Endpoint& endpoint, const auto& fail) {
    if (endpoint.connection == Connection::RdmaCm) {
        const bool gid_zero = std::all_of(endpoint.gid.begin(), endpoint.gid.end(),
                                          [](std::uint8_t b) { return b == 0; });
        if (endpoint.qp_num != 0 || endpoint.psn != 0 || endpoint.lid != 0 ||
            endpoint.gid_index != 0 || endpoint.mtu != 0 || !gid_zero) {
            fail("an RDMA CM endpoint carries QP values (qp_num " +
                 std::to_string(endpoint.qp_num) +
                 "): RDMA CM connects the queue pairs, they "
                 "must be 0");
        }
        return;
    }
    if (endpoint.qp_num == 0 || endpoint.qp_num > kMaxQpNum) {
        fail("qp_num " + std::to_string(endpoint.qp_num) + " is not a valid 24-bit QP number");
    }
    if (endpoint.psn > kMaxQpNum) {
        fail("psn " + std::to_string(endpoint.psn) + " does not fit in 24 bits");
    }
    if (endpoint.mtu < 1 || endpoint.mtu > 5) {
        fail("mtu " + std::to_string(endpoint.mtu) + " is not an ibv_mtu value (1..5)");
    }
    if (endpoint.cm_port != 0) {
        fail("cm_port " + std::to_string(endpoint.cm_port) +
             " in an endpoint that does not connect through RDMA CM");
    }
}

void check_endpoint(const Endpoint& endpoint, const auto& fail) {
    check_queue_pair_values(endpoint, fail);
    if (endpoint.mode == WireMode::Auto) {
        fail("an endpoint must state the mode it uses, not Auto");
    }
    if (endpoint.ranges.size() > kMaxRanges) {
        fail(std::to_string(endpoint.ranges.size()) + " ranges exceed the limit of " +
             std::to_string(kMaxRanges));
    }
    for (std::size_t i = 0; i < endpoint.ranges.size(); ++i) {
        check_range(endpoint.ranges[i], i, fail);
    }
}

void put_endpoint(Writer& out, const Endpoint& endpoint) {
    out.put(endpoint.qp_num);
    out.put(endpoint.psn);
    out.put_bytes(endpoint.gid);
    out.put(endpoint.lid);
    out.put(endpoint.gid_index);
    out.put(endpoint.mtu);
    out.put_enum(endpoint.mode);
    out.put(static_cast<std::uint32_t>(endpoint.ranges.size()));
    for (const RemoteRange& range : endpoint.ranges) {
        out.put(range.address);
        out.put(range.length);
        out.put(range.rkey);
    }
    out.put_enum(endpoint.connection);
    out.put(endpoint.cm_port);
}

Endpoint get_endpoint(Reader& in) {
    Endpoint endpoint;
    endpoint.qp_num = in.get<std::uint32_t>("qp_num");
    endpoint.psn = in.get<std::uint32_t>("psn");
    in.get_bytes(endpoint.gid, "gid");
    endpoint.lid = in.get<std::uint16_t>("lid");
    endpoint.gid_index = in.get<std::uint8_t>("gid_index");
    endpoint.mtu = in.get<std::uint8_t>("mtu");
    endpoint.mode = read_mode(in, "mode", true);  // Auto rejected by check_endpoint with a reason
    const auto count = in.get<std::uint32_t>("range_count");
    constexpr std::size_t kRangeBytes = 20;
    // Checked before reserving: a hostile count must not allocate.
    if (count > kMaxRanges) {
        in.fail(std::errc::message_size, std::to_string(count) + " ranges exceed the limit of " +
                                             std::to_string(kMaxRanges));
    }
    if (in.remaining() < count * kRangeBytes) {
        in.fail(std::errc::bad_message, "range_count " + std::to_string(count) + " needs " +
                                            std::to_string(count * kRangeBytes) + " bytes, " +
                                            std::to_string(in.remaining()) + " left");
    }
    endpoint.ranges.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        RemoteRange range;
        range.address = in.get<std::uint64_t>("range.address");
        range.length = in.get<std::uint64_t>("range.length");
        range.rkey = in.get<std::uint32_t>("range.rkey");
        endpoint.ranges.push_back(range);
    }
    const auto connection = in.get<std::uint8_t>("connection");
    if (connection > static_cast<std::uint8_t>(Connection::RdmaCm)) {
        in.fail(std::errc::protocol_error, "unknown connection " + std::to_string(connection));
    }
    endpoint.connection = static_cast<Connection>(connection);
    endpoint.cm_port = in.get<std::uint16_t>("cm_port");
    check_endpoint(endpoint,
                   [&](const std::string& what) { in.fail(std::errc::protocol_error, what); });
    return endpoint;
}

void check_hello(const Hello& hello, const auto& fail) {
    if (hello.message_size == 0) {
        fail("message_size is 0");
    }
    if (hello.buffer_size < hello.message_size) {
        fail("buffer_size " + std::to_string(hello.buffer_size) + " is smaller than message_size " +
             std::to_string(hello.message_size));
    }
    if (hello.test == TestKind::Send && hello.receive_depth == 0) {
        fail("a send test needs receive_depth > 0");
    }
    if (hello.credit_rkey != 0 && hello.test != TestKind::Send) {
        fail("a receive count (credit_rkey " + std::to_string(hello.credit_rkey) +
             ") is for the send test only");
    }
    if (hello.client.cm_port != 0) {
        fail("the client's cm_port is " + std::to_string(hello.client.cm_port) +
             ": only the server listens");
    }
}

void check_welcome(const Welcome& welcome, const auto& fail) {
    if (welcome.server.connection == Connection::RdmaCm && welcome.server.cm_port == 0) {
        fail("an RDMA CM Welcome without the port of the server's listener (cm_port 0)");
    }
}

void put_payload(Writer& out, const Hello& hello) {
    auto fail = [](const std::string& what) {
        throw ProtocolError(std::errc::invalid_argument, "refusing to send Hello: " + what);
    };
    check_hello(hello, fail);
    check_endpoint(hello.client, fail);
    out.put_enum(hello.test);
    out.put_enum(hello.server_mode);
    out.put(hello.message_size);
    out.put(hello.buffer_size);
    out.put(hello.receive_depth);
    put_endpoint(out, hello.client);
    out.put(hello.pattern_seed);
    out.put(hello.credit_address);
    out.put(hello.credit_rkey);
}

void put_payload(Writer& out, const Welcome& welcome) {
    const auto fail = [](const std::string& what) {
        throw ProtocolError(std::errc::invalid_argument, "refusing to send Welcome: " + what);
    };
    check_endpoint(welcome.server, fail);
    check_welcome(welcome, fail);
    put_endpoint(out, welcome.server);
}

void put_payload(Writer& out, const Done& done) {
    out.put(done.operations);
    out.put(done.bytes);
    out.put(done.pattern_seed);
    out.put(done.verify);
}

void put_payload(Writer& out, const Report& report) {
    out.put(report.verified_bytes);
    out.put(report.mismatched_bytes);
    out.put(report.received_messages);
    out.put(report.pinned_bytes_peak);
    out.put(report.faults);
    out.put(report.invalidations);
}

void put_payload(Writer& out, const ErrorMessage& error) {
    // Long texts are cut rather than refused: an error report must always go out.
    const std::string_view text(error.text.data(), std::min(error.text.size(), kMaxText));
    out.put(error.code);
    out.put(static_cast<std::uint16_t>(text.size()));
    for (const char c : text) {
        out.put(static_cast<std::uint8_t>(c));
    }
}

Hello get_hello(Reader& in) {
    Hello hello;
    const auto test = in.get<std::uint8_t>("test");
    if (test > static_cast<std::uint8_t>(TestKind::Send)) {
        in.fail(std::errc::protocol_error, "unknown test " + std::to_string(test));
    }
    hello.test = static_cast<TestKind>(test);
    hello.server_mode = read_mode(in, "server_mode", true);
    hello.message_size = in.get<std::uint64_t>("message_size");
    hello.buffer_size = in.get<std::uint64_t>("buffer_size");
    hello.receive_depth = in.get<std::uint32_t>("receive_depth");
    hello.client = get_endpoint(in);
    hello.pattern_seed = in.get<std::uint32_t>("pattern_seed");
    hello.credit_address = in.get<std::uint64_t>("credit_address");
    hello.credit_rkey = in.get<std::uint32_t>("credit_rkey");
    check_hello(hello, [&](const std::string& what) { in.fail(std::errc::protocol_error, what); });
    return hello;
}

Welcome get_welcome(Reader& in) {
    Welcome welcome{get_endpoint(in)};
    check_welcome(welcome,
                  [&](const std::string& what) { in.fail(std::errc::protocol_error, what); });
    return welcome;
}

Done get_done(Reader& in) {
    Done done;
    done.operations = in.get<std::uint64_t>("operations");
    done.bytes = in.get<std::uint64_t>("bytes");
    done.pattern_seed = in.get<std::uint32_t>("pattern_seed");
    done.verify = in.get<std::uint8_t>("verify");
    if (done.verify > 1) {
        in.fail(std::errc::protocol_error,
                "verify flag " + std::to_string(done.verify) + " is not 0 or 1");
    }
    return done;
}

Report get_report(Reader& in) {
    Report report;
    report.verified_bytes = in.get<std::uint64_t>("verified_bytes");
    report.mismatched_bytes = in.get<std::uint64_t>("mismatched_bytes");
    report.received_messages = in.get<std::uint64_t>("received_messages");
    report.pinned_bytes_peak = in.get<std::uint64_t>("pinned_bytes_peak");
    report.faults = in.get<std::uint64_t>("faults");
    report.invalidations = in.get<std::uint64_t>("invalidations");
    return report;
}

ErrorMessage get_error(Reader& in) {
    ErrorMessage error;
    error.code = in.get<std::uint32_t>("code");
    const auto length = in.get<std::uint16_t>("text_length");
    if (length > kMaxText) {
        in.fail(std::errc::message_size, "text of " + std::to_string(length) +
                                             " bytes exceeds the limit of " +
                                             std::to_string(kMaxText));
    }
    std::vector<std::uint8_t> text(length);
    in.get_bytes(text, "text");
    for (std::uint8_t& c : text) {
        // The text ends up on a terminal: keep it printable.
        if (c < 0x20 || c > 0x7e) {
            c = '?';
        }
    }
    error.text.assign(text.begin(), text.end());
    return error;
}

}  // namespace

MessageType type_of(const Message& message) {
    return static_cast<MessageType>(message.index() + 1);
}

const char* to_string(MessageType type) {
    switch (type) {
        case MessageType::Hello:
            return "Hello";
        case MessageType::Welcome:
            return "Welcome";
        case MessageType::Done:
            return "Done";
        case MessageType::Report:
            return "Report";
        case MessageType::Error:
            return "Error";
    }
    return "unknown";
}

const char* to_string(WireMode mode) {
    switch (mode) {
        case WireMode::Pinned:
            return "pinned";
        case WireMode::Native:
            return "native";
        case WireMode::Emulated:
            return "emulated";
        case WireMode::Auto:
            return "auto";
    }
    return "unknown";
}

const char* to_string(TestKind test) {
    switch (test) {
        case TestKind::Write:
            return "write";
        case TestKind::Read:
            return "read";
        case TestKind::Send:
            return "send";
    }
    return "unknown";
}

const char* to_string(Connection connection) {
    switch (connection) {
        case Connection::Endpoints:
            return "endpoint exchange";
        case Connection::RdmaCm:
            return "RDMA CM";
    }
    return "unknown";
}

std::vector<std::byte> encode(const Message& message) {
    Writer out;
    out.put(kMagic);
    out.put(kVersion);
    out.put_enum(type_of(message));
    out.put(std::uint32_t{0});  // payload size, patched below
    std::visit([&](const auto& body) { put_payload(out, body); }, message);
    const std::size_t payload_size = out.size() - kHeaderSize;
    if (payload_size > kMaxPayload) {
        throw ProtocolError(std::errc::message_size,
                            std::string("refusing to send ") + to_string(type_of(message)) +
                                ": payload of " + std::to_string(payload_size) +
                                " bytes exceeds the limit of " + std::to_string(kMaxPayload));
    }
    std::vector<std::byte> bytes = out.take();
    for (std::size_t i = 0; i < 4; ++i) {
        bytes[8 + i] = static_cast<std::byte>((payload_size >> (8 * i)) & 0xffU);
    }
    return bytes;
}

Header decode_header(std::span<const std::byte> header_bytes) {
    if (header_bytes.size() != kHeaderSize) {
        throw ProtocolError(std::errc::bad_message,
                            "malformed header: " + std::to_string(header_bytes.size()) +
                                " bytes, expected " + std::to_string(kHeaderSize));
    }
    Reader in(header_bytes, MessageType::Hello);
    const auto magic = in.get<std::uint32_t>("magic");
    if (magic != kMagic) {
        throw ProtocolError(std::errc::protocol_error,
                            "bad magic: this peer does not speak the odp-perf protocol "
                            "(is the port right?)");
    }
    Header header;
    header.version = in.get<std::uint16_t>("version");
    if (header.version != kVersion) {
        throw ProtocolError(std::errc::protocol_error,
                            "unsupported protocol version " + std::to_string(header.version) +
                                " (this odp-perf speaks " + std::to_string(kVersion) +
                                "): run the same odp-perf build on both sides");
    }
    const auto type = in.get<std::uint16_t>("type");
    if (type < static_cast<std::uint16_t>(MessageType::Hello) ||
        type > static_cast<std::uint16_t>(MessageType::Error)) {
        throw ProtocolError(std::errc::protocol_error,
                            "unknown message type " + std::to_string(type));
    }
    header.type = static_cast<MessageType>(type);
    header.payload_size = in.get<std::uint32_t>("payload_size");
    if (header.payload_size > kMaxPayload) {
        throw ProtocolError(std::errc::message_size,
                            std::string("oversized ") + to_string(header.type) +
                                " message: " + std::to_string(header.payload_size) +
                                " bytes exceed the limit of " + std::to_string(kMaxPayload));
    }
    return header;
}

Message decode_payload(const Header& header, std::span<const std::byte> payload) {
    if (payload.size() != header.payload_size) {
        throw ProtocolError(std::errc::bad_message,
                            std::string("malformed ") + to_string(header.type) + " message: " +
                                std::to_string(payload.size()) + " payload bytes, header says " +
                                std::to_string(header.payload_size));
    }
    Reader in(payload, header.type);
    Message message = [&]() -> Message {
        switch (header.type) {
            case MessageType::Hello:
                return get_hello(in);
            case MessageType::Welcome:
                return get_welcome(in);
            case MessageType::Done:
                return get_done(in);
            case MessageType::Report:
                return get_report(in);
            case MessageType::Error:
                return get_error(in);
        }
        in.fail(std::errc::protocol_error, "unknown type");
    }();
    in.expect_end();
    return message;
}

Message decode(std::span<const std::byte> bytes) {
    if (bytes.size() < kHeaderSize) {
        throw ProtocolError(std::errc::bad_message,
                            "truncated message: " + std::to_string(bytes.size()) +
                                " bytes, shorter than the " + std::to_string(kHeaderSize) +
                                "-byte header");
    }
    const Header header = decode_header(bytes.first(kHeaderSize));
    return decode_payload(header, bytes.subspan(kHeaderSize));
}

}  // namespace odp_perf::oob
