// Fuzz-style test of the odp-perf out-of-band parser without libFuzzer: random
// bytes and mutated valid messages, a bounded number of iterations with fixed
// seeds (reproducible).  The parser must either return a message that survives
// a re-encode/decode round trip or throw ProtocolError; nothing else.
#include <gtest/gtest.h>

#include <random>

#include "oob_codec.hpp"

namespace odp_perf::oob {
namespace {

struct Outcome {
    int accepted = 0;
    int rejected = 0;
};

void feed(const std::vector<std::byte>& bytes, Outcome& outcome) {
    Message message;
    try {
        message = decode(bytes);
    } catch (const ProtocolError&) {
        ++outcome.rejected;
        return;
    }
    ++outcome.accepted;
    // Whatever the parser accepts is a valid message: it encodes again to the
    // same bytes (the encoding is canonical, except that an Error text has its
    // unprintable bytes replaced) and decodes to the same value.
    const auto again = encode(message);
    if (type_of(message) != MessageType::Error) {
        EXPECT_EQ(again, bytes);
    }
    EXPECT_EQ(decode(again), message);
}

std::vector<std::vector<std::byte>> seeds() {
    Hello hello;
    hello.test = TestKind::Read;
    hello.message_size = 8;
    hello.buffer_size = 8;
    hello.client.qp_num = 17;
    hello.client.mtu = 1;
    hello.client.ranges = {{4096, 8192, 9}};
    Welcome welcome{hello.client};
    return {encode(hello), encode(welcome), encode(Done{1, 2, 3, 0}), encode(Report{}),
            encode(ErrorMessage{4, "oops"})};
}

TEST(OobFuzz, RandomBytesNeverCrashTheParser) {
    std::mt19937_64 random(0x0dd9e2f);
    Outcome outcome;
    for (int i = 0; i < 20000; ++i) {
        std::vector<std::byte> bytes(random() % 96);
        for (auto& b : bytes) {
            b = static_cast<std::byte>(random() & 0xffU);
        }
        // Give half of them a valid magic and version so the payload parsers are reached.
        if (i % 2 == 0 && bytes.size() >= kHeaderSize) {
            const auto valid = encode(Done{});
            std::copy(valid.begin(), valid.begin() + 6, bytes.begin());
            bytes[6] = static_cast<std::byte>(1 + random() % 5);
            bytes[7] = std::byte{0};
            const auto payload = static_cast<std::uint32_t>(bytes.size() - kHeaderSize);
            for (std::size_t k = 0; k < 4; ++k) {
                bytes[8 + k] = static_cast<std::byte>((payload >> (8 * k)) & 0xffU);
            }
        }
        feed(bytes, outcome);
    }
    EXPECT_EQ(outcome.accepted + outcome.rejected, 20000);
    EXPECT_GT(outcome.rejected, 0);
}

TEST(OobFuzz, MutatedValidMessagesAreAcceptedOrRejectedCleanly) {
    std::mt19937_64 random(42);
    Outcome outcome;
    const auto originals = seeds();
    for (int i = 0; i < 50000; ++i) {
        auto bytes = originals[static_cast<std::size_t>(i) % originals.size()];
        const int mutations = 1 + static_cast<int>(random() % 4);
        for (int m = 0; m < mutations; ++m) {
            switch (random() % 3) {
                case 0:  // flip a bit
                    bytes[random() % bytes.size()] ^= static_cast<std::byte>(1U << (random() % 8));
                    break;
                case 1:  // cut
                    bytes.resize(random() % (bytes.size() + 1));
                    break;
                default:  // append garbage
                    bytes.push_back(static_cast<std::byte>(random() & 0xffU));
                    break;
            }
            if (bytes.empty()) {
                break;
            }
        }
        feed(bytes, outcome);
    }
    // Both outcomes happen: the mutations reach accepting and rejecting paths.
    EXPECT_GT(outcome.accepted, 0);
    EXPECT_GT(outcome.rejected, 0);
}

}  // namespace
}  // namespace odp_perf::oob
