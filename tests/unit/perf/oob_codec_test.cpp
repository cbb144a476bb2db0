// The odp-perf out-of-band codec: round trips and every malformed input.
#include "oob_codec.hpp"

#include <gtest/gtest.h>

#include <cstring>

namespace odp_perf::oob {
namespace {

// Payload offsets of a Hello (after the 12-byte header), see oob_codec.hpp.
constexpr std::size_t kHelloQpNum = kHeaderSize + 22;
constexpr std::size_t kHelloPsn = kHeaderSize + 26;
constexpr std::size_t kHelloMtu = kHeaderSize + 49;
constexpr std::size_t kHelloMode = kHeaderSize + 50;
constexpr std::size_t kHelloRangeCount = kHeaderSize + 51;
constexpr std::size_t kHelloFirstRangeLength = kHeaderSize + 63;
// With the two ranges of sample_hello(): the fields after them.
constexpr std::size_t kHelloConnection = kHeaderSize + 95;
constexpr std::size_t kHelloCmPort = kHeaderSize + 96;
// A Welcome's endpoint starts its payload: its connection follows its ranges.
constexpr std::size_t welcome_connection(std::size_t ranges) {
    return kHeaderSize + 33 + 20 * ranges;
}

Endpoint sample_endpoint(std::size_t ranges) {
    Endpoint endpoint;
    endpoint.qp_num = 0x123456;
    endpoint.psn = 0xabcdef;
    for (std::size_t i = 0; i < endpoint.gid.size(); ++i) {
        endpoint.gid[i] = static_cast<std::uint8_t>(0xf0 + i);
    }
    endpoint.lid = 7;
    endpoint.gid_index = 1;
    endpoint.mtu = 3;
    endpoint.mode = WireMode::Emulated;
    for (std::size_t i = 0; i < ranges; ++i) {
        endpoint.ranges.push_back(RemoteRange{0x7f0000000000ULL + i * 0x200000ULL, 0x200000ULL,
                                              0x1000U + static_cast<std::uint32_t>(i)});
    }
    return endpoint;
}

Hello sample_hello() {
    Hello hello;
    hello.test = TestKind::Send;
    hello.server_mode = WireMode::Auto;
    hello.message_size = 65536;
    hello.buffer_size = 1 << 20;
    hello.receive_depth = 64;
    hello.client = sample_endpoint(2);
    hello.pattern_seed = 0x5eed;
    return hello;
}

void put_u32(std::vector<std::byte>& bytes, std::size_t offset, std::uint32_t value) {
    for (std::size_t i = 0; i < 4; ++i) {
        bytes[offset + i] = static_cast<std::byte>((value >> (8 * i)) & 0xffU);
    }
}

void put_u64(std::vector<std::byte>& bytes, std::size_t offset, std::uint64_t value) {
    for (std::size_t i = 0; i < 8; ++i) {
        bytes[offset + i] = static_cast<std::byte>((value >> (8 * i)) & 0xffU);
    }
}

// Expects decode() to throw a ProtocolError whose text contains `needle`.
void expect_rejected(const std::vector<std::byte>& bytes, const std::string& needle,
                     std::errc code) {
    try {
        decode(bytes);
        FAIL() << "accepted a message that should be rejected for: " << needle;
    } catch (const ProtocolError& error) {
        EXPECT_NE(std::string(error.what()).find(needle), std::string::npos)
            << "error was: " << error.what();
        EXPECT_EQ(error.code(), std::make_error_code(code)) << error.what();
    }
}

TEST(OobCodec, HelloRoundTrip) {
    const Hello hello = sample_hello();
    const auto bytes = encode(hello);
    EXPECT_EQ(bytes.size(), kHeaderSize + 58 + 2 * 20 + 4 + 12);
    EXPECT_EQ(std::get<Hello>(decode(bytes)), hello);
}

TEST(OobCodec, EveryMessageTypeRoundTrips) {
    const std::vector<Message> messages = {
        sample_hello(),
        Welcome{sample_endpoint(kMaxRanges)},
        Welcome{sample_endpoint(0)},
        Done{1000, 65536000, 0xdeadbeef, 1},
        Report{65536, 0, 12, 1 << 21, 3, 1},
        ErrorMessage{22, "bad things"},
    };
    for (const Message& message : messages) {
        const auto bytes = encode(message);
        const Message decoded = decode(bytes);
        EXPECT_EQ(decoded, message) << to_string(type_of(message));
        EXPECT_EQ(type_of(decoded), type_of(message));
    }
}

TEST(OobCodec, HeaderIsLittleEndianWithMagicAndVersion) {
    const auto bytes = encode(Done{});
    ASSERT_GE(bytes.size(), kHeaderSize);
    EXPECT_EQ(static_cast<char>(bytes[0]), 'O');
    EXPECT_EQ(static_cast<char>(bytes[1]), 'D');
    EXPECT_EQ(static_cast<char>(bytes[2]), 'P');
    EXPECT_EQ(static_cast<char>(bytes[3]), 'P');
    const Header header = decode_header(std::span(bytes).first(kHeaderSize));
    EXPECT_EQ(header.version, kVersion);
    EXPECT_EQ(header.type, MessageType::Done);
    EXPECT_EQ(header.payload_size, bytes.size() - kHeaderSize);
}

TEST(OobCodec, RejectsBadMagic) {
    auto bytes = encode(Done{});
    bytes[0] = std::byte{'G'};  // e.g. an HTTP client on the wrong port
    expect_rejected(bytes, "bad magic", std::errc::protocol_error);
}

TEST(OobCodec, RejectsOtherVersion) {
    auto bytes = encode(Done{});
    bytes[4] = std::byte{3};
    expect_rejected(bytes, "unsupported protocol version 3", std::errc::protocol_error);
    // Version 1 had no connection field: an older odp-perf on the other side.
    bytes[4] = std::byte{1};
    expect_rejected(bytes, "unsupported protocol version 1", std::errc::protocol_error);
}

TEST(OobCodec, RejectsUnknownTypes) {
    for (const int type : {0, 6, 255}) {
        auto bytes = encode(Done{});
        bytes[6] = static_cast<std::byte>(type);
        expect_rejected(bytes, "unknown message type " + std::to_string(type),
                        std::errc::protocol_error);
    }
}

TEST(OobCodec, RejectsOversizedPayloadFromTheHeaderAlone) {
    auto bytes = encode(Done{});
    put_u32(bytes, 8, kMaxPayload + 1);
    // Only the header: the size check must not need (or allocate) the payload.
    const std::vector<std::byte> header(bytes.begin(), bytes.begin() + kHeaderSize);
    try {
        decode_header(header);
        FAIL() << "oversized header accepted";
    } catch (const ProtocolError& error) {
        EXPECT_NE(std::string(error.what()).find("oversized Done message: 65537 bytes"),
                  std::string::npos)
            << error.what();
    }
    put_u32(bytes, 8, 0xffffffffU);
    expect_rejected(bytes, "exceed the limit of 65536", std::errc::message_size);
}

TEST(OobCodec, RejectsWrongHeaderLength) {
    const auto bytes = encode(Done{});
    EXPECT_THROW(decode_header(std::span(bytes).first(kHeaderSize - 1)), ProtocolError);
}

TEST(OobCodec, EveryTruncationOfEveryMessageIsRejected) {
    const std::vector<Message> messages = {sample_hello(), Welcome{sample_endpoint(3)},
                                           Done{1, 2, 3, 1}, Report{1, 2, 3, 4, 5, 6},
                                           ErrorMessage{5, "x"}};
    for (const Message& message : messages) {
        const auto bytes = encode(message);
        for (std::size_t length = 0; length < bytes.size(); ++length) {
            const std::vector<std::byte> prefix(
                bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(length));
            EXPECT_THROW(decode(prefix), ProtocolError)
                << to_string(type_of(message)) << " cut to " << length << " bytes";
        }
        // The header still claims the full size: a short payload is named as such.
        const std::vector<std::byte> short_payload(bytes.begin(), bytes.end() - 1);
        expect_rejected(short_payload, "payload bytes, header says", std::errc::bad_message);
    }
}

TEST(OobCodec, TruncatedFieldIsNamed) {
    auto bytes = encode(Done{1, 2, 3, 1});
    // Claim a shorter payload so that the reader runs out inside a field.
    put_u32(bytes, 8, 10);
    bytes.resize(kHeaderSize + 10);
    expect_rejected(bytes, "truncated at field 'bytes'", std::errc::bad_message);
}

TEST(OobCodec, RejectsTrailingBytes) {
    auto bytes = encode(Report{});
    bytes.push_back(std::byte{0});
    put_u32(bytes, 8, static_cast<std::uint32_t>(bytes.size() - kHeaderSize));
    expect_rejected(bytes, "1 trailing bytes", std::errc::bad_message);
}

TEST(OobCodec, RejectsInvalidQpNumberAndPsn) {
    auto bytes = encode(sample_hello());
    put_u32(bytes, kHelloQpNum, 0);
    expect_rejected(bytes, "qp_num 0 is not a valid 24-bit QP number", std::errc::protocol_error);
    put_u32(bytes, kHelloQpNum, 1U << 24);
    expect_rejected(bytes, "qp_num 16777216", std::errc::protocol_error);
    bytes = encode(sample_hello());
    put_u32(bytes, kHelloPsn, 1U << 24);
    expect_rejected(bytes, "psn 16777216 does not fit in 24 bits", std::errc::protocol_error);
}

TEST(OobCodec, RejectsBadMtuAndModes) {
    auto bytes = encode(sample_hello());
    bytes[kHelloMtu] = std::byte{0};
    expect_rejected(bytes, "mtu 0", std::errc::protocol_error);
    bytes[kHelloMtu] = std::byte{6};
    expect_rejected(bytes, "mtu 6", std::errc::protocol_error);
    bytes = encode(sample_hello());
    bytes[kHelloMode] = std::byte{static_cast<std::uint8_t>(WireMode::Auto)};
    expect_rejected(bytes, "not Auto", std::errc::protocol_error);
    bytes[kHelloMode] = std::byte{9};
    expect_rejected(bytes, "holds mode 9", std::errc::protocol_error);
    bytes = encode(sample_hello());
    bytes[kHeaderSize + 0] = std::byte{3};  // test kind
    expect_rejected(bytes, "unknown test 3", std::errc::protocol_error);
    bytes = encode(sample_hello());
    bytes[kHeaderSize + 1] = std::byte{4};  // server_mode
    expect_rejected(bytes, "'server_mode' holds mode 4", std::errc::protocol_error);
}

TEST(OobCodec, HostileRangeCountIsRejectedBeforeAllocating) {
    auto bytes = encode(sample_hello());
    put_u32(bytes, kHelloRangeCount, 0xffffffffU);
    expect_rejected(bytes, "4294967295 ranges exceed the limit of 1024", std::errc::message_size);
    put_u32(bytes, kHelloRangeCount, 5);  // only 2 are present
    expect_rejected(bytes, "range_count 5 needs 100 bytes, 59 left", std::errc::bad_message);
}

TEST(OobCodec, RejectsEmptyAndWrappingRanges) {
    auto bytes = encode(sample_hello());
    put_u64(bytes, kHelloFirstRangeLength, 0);
    expect_rejected(bytes, "range 0 has length 0", std::errc::protocol_error);
    put_u64(bytes, kHelloFirstRangeLength, ~0ULL);
    expect_rejected(bytes, "range 0 wraps around", std::errc::protocol_error);
}

TEST(OobCodec, RejectsInconsistentTestParameters) {
    auto bytes = encode(sample_hello());
    put_u64(bytes, kHeaderSize + 2, 0);  // message_size
    expect_rejected(bytes, "message_size is 0", std::errc::protocol_error);
    bytes = encode(sample_hello());
    put_u64(bytes, kHeaderSize + 10, 100);  // buffer_size < message_size
    expect_rejected(bytes, "buffer_size 100 is smaller than message_size 65536",
                    std::errc::protocol_error);
    bytes = encode(sample_hello());
    put_u32(bytes, kHeaderSize + 18, 0);  // receive_depth of a send test
    expect_rejected(bytes, "receive_depth > 0", std::errc::protocol_error);
}

TEST(OobCodec, RejectsBadDoneFlag) {
    auto bytes = encode(Done{1, 2, 3, 1});
    bytes.back() = std::byte{2};
    expect_rejected(bytes, "verify flag 2", std::errc::protocol_error);
}

TEST(OobCodec, ErrorTextIsBoundedAndSanitised) {
    // Too long to send whole: cut, never refused.
    const auto long_error = decode(encode(ErrorMessage{1, std::string(5000, 'a')}));
    EXPECT_EQ(std::get<ErrorMessage>(long_error).text.size(), kMaxText);
    // A hostile peer claims a longer text than allowed.
    auto bytes = encode(ErrorMessage{1, "abc"});
    bytes[kHeaderSize + 4] = std::byte{0xff};
    bytes[kHeaderSize + 5] = std::byte{0xff};
    expect_rejected(bytes, "text of 65535 bytes exceeds the limit", std::errc::message_size);
    // Terminal escapes from a peer are neutralised.
    const auto escaped = decode(encode(ErrorMessage{1, "a\x1b[2Jb\n"}));
    EXPECT_EQ(std::get<ErrorMessage>(escaped).text, "a?[2Jb?");
}

// RDMA CM connects the queue pairs: the endpoints carry no QP values, the
// server's Welcome carries its listener's port.
Endpoint cm_endpoint(std::size_t ranges, std::uint16_t cm_port) {
    Endpoint endpoint;
    endpoint.mode = WireMode::Emulated;
    endpoint.connection = Connection::RdmaCm;
    endpoint.cm_port = cm_port;
    for (std::size_t i = 0; i < ranges; ++i) {
        endpoint.ranges.push_back(RemoteRange{0x7f0000000000ULL + i * 0x200000ULL, 0x200000ULL,
                                              0x2000U + static_cast<std::uint32_t>(i)});
    }
    return endpoint;
}

TEST(OobCodec, RdmaCmHelloAndWelcomeRoundTrip) {
    Hello hello = sample_hello();
    hello.client = cm_endpoint(0, 0);
    const Message hello_message = hello;
    EXPECT_EQ(decode(encode(hello_message)), hello_message);
    const Message welcome = Welcome{cm_endpoint(3, 40001)};
    const Message decoded = decode(encode(welcome));
    EXPECT_EQ(decoded, welcome);
    EXPECT_EQ(std::get<Welcome>(decoded).server.cm_port, 40001);
    EXPECT_EQ(std::get<Welcome>(decoded).server.connection, Connection::RdmaCm);
}

// A send test on iWARP: where the server counts its posted receives.
TEST(OobCodec, ReceiveCreditsRoundTripForTheSendTestOnly) {
    Hello hello = sample_hello();  // a send test
    hello.credit_address = 0x7f0000001000ULL;
    hello.credit_rkey = 0x4242;
    const Message message = hello;
    EXPECT_EQ(decode(encode(message)), message);
    hello.test = TestKind::Write;
    EXPECT_THROW(encode(hello), ProtocolError);
    auto bytes = encode(sample_hello());
    bytes[kHeaderSize] = std::byte{0};    // test: write
    put_u32(bytes, bytes.size() - 4, 9);  // credit_rkey
    expect_rejected(bytes, "a receive count (credit_rkey 9) is for the send test only",
                    std::errc::protocol_error);
}

TEST(OobCodec, RejectsConnectionFieldsThatDoNotFit) {
    // An unknown way to connect.
    auto bytes = encode(sample_hello());
    bytes[kHelloConnection] = std::byte{2};
    expect_rejected(bytes, "unknown connection 2", std::errc::protocol_error);
    // QP values exchanged by hand, yet a listener port.
    bytes = encode(sample_hello());
    bytes[kHelloCmPort] = std::byte{1};
    expect_rejected(bytes, "cm_port 1 in an endpoint that does not connect through RDMA CM",
                    std::errc::protocol_error);
    // RDMA CM, yet QP values (sample_hello's qp_num).
    bytes = encode(sample_hello());
    bytes[kHelloConnection] = std::byte{1};
    expect_rejected(bytes, "an RDMA CM endpoint carries QP values (qp_num 1193046)",
                    std::errc::protocol_error);
    // Only the server listens.
    Hello hello = sample_hello();
    hello.client = cm_endpoint(0, 0);
    bytes = encode(hello);
    bytes[bytes.size() - 18] = std::byte{7};  // cm_port, before the seed and the credits
    expect_rejected(bytes, "the client's cm_port is 7", std::errc::protocol_error);
    // An RDMA CM Welcome must say where to connect.
    bytes = encode(Welcome{cm_endpoint(2, 40001)});
    bytes[welcome_connection(2) + 1] = std::byte{0};
    bytes[welcome_connection(2) + 2] = std::byte{0};
    expect_rejected(bytes, "without the port of the server's listener", std::errc::protocol_error);
}

TEST(OobCodec, EncodeRefusesInvalidMessages) {
    Hello hello = sample_hello();
    hello.client.qp_num = 0;
    EXPECT_THROW(encode(hello), ProtocolError);
    hello = sample_hello();
    hello.client.ranges.resize(kMaxRanges + 1, RemoteRange{1, 1, 1});
    EXPECT_THROW(encode(hello), ProtocolError);
    Welcome welcome{sample_endpoint(1)};
    welcome.server.mode = WireMode::Auto;
    EXPECT_THROW(encode(welcome), ProtocolError);
    EXPECT_THROW(encode(Welcome{cm_endpoint(1, 0)}), ProtocolError);
    Endpoint with_qp = cm_endpoint(1, 40001);
    with_qp.qp_num = 5;
    EXPECT_THROW(encode(Welcome{with_qp}), ProtocolError);
}

}  // namespace
}  // namespace odp_perf::oob
