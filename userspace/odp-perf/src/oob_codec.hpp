// Out-of-band protocol of odp-perf: message types and their wire encoding.
//
// Pure functions over bytes, no I/O, so the parser can be fed hostile input
// on its own (tests/unit/perf/oob_codec_test.cpp, oob_fuzz_test.cpp).
//
// Wire format (all integers little-endian):
//   header  (12 bytes): magic u32 "ODPP" | version u16 | type u16 | payload_size u32
//   payload (payload_size bytes, at most kMaxPayload): the message body
// The header is decoded and its size checked against kMaxPayload before
// anything is allocated for the payload.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <system_error>
#include <variant>
#include <vector>

namespace odp_perf::oob {

inline constexpr std::uint32_t kMagic = 0x5050444fU;  // "ODPP" read as little-endian
inline constexpr std::uint16_t kVersion = 2;          // 2: connection, cm_port, receive credits
inline constexpr std::size_t kHeaderSize = 12;
inline constexpr std::uint32_t kMaxPayload = 64U * 1024U;
inline constexpr std::size_t kMaxRanges = 1024;
inline constexpr std::size_t kMaxText = 1024;
inline constexpr std::uint32_t kMaxQpNum = (1U << 24) - 1;  // QP numbers and PSNs are 24 bits

// Every protocol violation: what was wrong with which field, as errno
// EPROTO/EMSGSIZE/EBADMSG so callers can treat it like any system error.
class ProtocolError : public std::system_error {
  public:
    ProtocolError(std::errc code, const std::string& what)
        : std::system_error(std::make_error_code(code), what) {}
};

enum class MessageType : std::uint16_t {
    Hello = 1,    // client -> server: the test it wants and its endpoint
    Welcome = 2,  // server -> client: the server's endpoint and exposed ranges
    Done = 3,     // client -> server: traffic finished, what to verify
    Report = 4,   // server -> client: verification and server-side counters
    Error = 5,    // either way: the peer gave up on this connection, and why
};

// Memory-registration modes as carried on the wire (mirrors odp::Mode).
enum class WireMode : std::uint8_t { Pinned = 0, Native = 1, Emulated = 2, Auto = 3 };
enum class TestKind : std::uint8_t { Write = 0, Read = 1, Send = 2 };

// One range a peer may access remotely: address, length and the rkey.
struct RemoteRange {
    std::uint64_t address = 0;
    std::uint64_t length = 0;
    std::uint32_t rkey = 0;
    friend bool operator==(const RemoteRange&, const RemoteRange&) = default;
};

// How the two RC queue pairs of a test get connected.
enum class Connection : std::uint8_t {
    // Each side's QP values (qp_num, psn, gid, lid, mtu) travel in its
    // Endpoint and each side moves its QP to RTS itself.
    Endpoints = 0,
    // Through RDMA CM (iWARP devices connect no other way): the Endpoints
    // carry no QP values (all 0), the server's Welcome names the port where
    // its RDMA CM listener waits, at the address the client reached it at.
    RdmaCm = 1,
};

// What the peer needs to connect an RC QP to us and to access our memory.
struct Endpoint {
    std::uint32_t qp_num = 0;
    std::uint32_t psn = 0;
    std::array<std::uint8_t, 16> gid{};
    std::uint16_t lid = 0;
    std::uint8_t gid_index = 0;
    std::uint8_t mtu = 0;              // enum ibv_mtu value (1..5)
    WireMode mode = WireMode::Pinned;  // the mode this side actually uses (never Auto)
    std::vector<RemoteRange> ranges;
    Connection connection = Connection::Endpoints;  // the same on both sides
    std::uint16_t cm_port = 0;                      // the server's, with RdmaCm; 0 otherwise
    friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

struct Hello {
    TestKind test = TestKind::Write;
    WireMode server_mode = WireMode::Pinned;  // the mode the client asks the server to use
    std::uint64_t message_size = 0;
    std::uint64_t buffer_size = 0;    // bytes the server must provide (>= message_size)
    std::uint32_t receive_depth = 0;  // receives the server keeps posted (send test)
    Endpoint client;
    std::uint32_t pattern_seed = 0;  // read test: the server fills its buffer with this pattern
    // Send test on iWARP, which has no receiver-not-ready retry: where the
    // server RDMA-WRITEs how many receives it has posted so far (a u64), so
    // that the client never sends a message no receive waits for. rkey 0:
    // no such count (RoCE and InfiniBand retry instead).
    std::uint64_t credit_address = 0;
    std::uint32_t credit_rkey = 0;
    friend bool operator==(const Hello&, const Hello&) = default;
};

struct Welcome {
    Endpoint server;
    friend bool operator==(const Welcome&, const Welcome&) = default;
};

struct Done {
    std::uint64_t operations = 0;
    std::uint64_t bytes = 0;
    std::uint32_t pattern_seed = 0;  // the server checks its buffer against this pattern
    std::uint8_t verify = 0;         // 1: the server must verify its buffer (write/send)
    friend bool operator==(const Done&, const Done&) = default;
};

struct Report {
    std::uint64_t verified_bytes = 0;
    std::uint64_t mismatched_bytes = 0;
    std::uint64_t received_messages = 0;
    std::uint64_t pinned_bytes_peak = 0;
    std::uint64_t faults = 0;
    std::uint64_t invalidations = 0;
    friend bool operator==(const Report&, const Report&) = default;
};

struct ErrorMessage {
    std::uint32_t code = 0;  // errno value
    std::string text;
    friend bool operator==(const ErrorMessage&, const ErrorMessage&) = default;
};

using Message = std::variant<Hello, Welcome, Done, Report, ErrorMessage>;

struct Header {
    std::uint16_t version = kVersion;
    MessageType type = MessageType::Hello;
    std::uint32_t payload_size = 0;
};

// Serialises a message (header + payload).  Throws ProtocolError if the
// message itself is invalid (e.g. too many ranges), so nothing invalid is sent.
std::vector<std::byte> encode(const Message& message);

// Checks magic, version, type and the payload size limit.  Throws ProtocolError.
Header decode_header(std::span<const std::byte> header_bytes);

// Decodes and validates a payload whose header was accepted by decode_header.
// Rejects short or trailing bytes and out-of-range fields.  Throws ProtocolError.
Message decode_payload(const Header& header, std::span<const std::byte> payload);

// decode_header + decode_payload on one contiguous buffer holding exactly one message.
Message decode(std::span<const std::byte> bytes);

MessageType type_of(const Message& message);
const char* to_string(MessageType type);
const char* to_string(WireMode mode);
const char* to_string(TestKind test);
const char* to_string(Connection connection);

}  // namespace odp_perf::oob
