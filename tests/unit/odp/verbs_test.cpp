// The verbs helpers that need no device: endpoint wire form, device errors.
#include <gtest/gtest.h>

#include <cstring>
#include <odp/error.hpp>
#include <odp/verbs.hpp>

#include "test_support.hpp"

namespace odp::verbs {
namespace {

TEST(Endpoint, WireFormRoundTrips) {
    Endpoint endpoint;
    endpoint.qp_num = 0x123456;
    endpoint.psn = 0xabcdef;
    endpoint.lid = 0x1234;
    endpoint.port = 2;
    endpoint.gid_index = 3;
    endpoint.mtu = IBV_MTU_4096;
    for (int i = 0; i < 16; ++i) {
        endpoint.gid.raw[i] = static_cast<std::uint8_t>(i * 7);
    }
    const auto wire = to_wire(endpoint);
    EXPECT_EQ(wire[0], 0x00);  // network byte order
    EXPECT_EQ(wire[1], 0x12);
    const Endpoint back = from_wire(wire);
    EXPECT_EQ(back.qp_num, endpoint.qp_num);
    EXPECT_EQ(back.psn, endpoint.psn);
    EXPECT_EQ(back.lid, endpoint.lid);
    EXPECT_EQ(back.port, endpoint.port);
    EXPECT_EQ(back.gid_index, endpoint.gid_index);
    EXPECT_EQ(back.mtu, endpoint.mtu);
    EXPECT_EQ(0, std::memcmp(back.gid.raw, endpoint.gid.raw, 16));
    EXPECT_NE(to_string(back).find("qp 1193046"), std::string::npos) << to_string(back);
}

TEST(Endpoint, MalformedWireIsRejected) {
    auto wire = to_wire(Endpoint{});
    wire[28] = 9;  // no such MTU
    const std::string message = test::expect_error(EPROTO, [&] { (void)from_wire(wire); });
    EXPECT_NE(message.find("MTU code 9"), std::string::npos) << message;
}

TEST(VerbsDevice, UnknownDeviceIsAClearError) {
    try {
        (void)open_device("no-such-rdma-device");
        FAIL() << "opened a device that does not exist";
    } catch (const Error& error) {
        const std::string message = error.what();
        // Without ib_uverbs (a host without RDMA) listing itself fails;
        // otherwise the device is not among those present.
        const bool listed = message.find("not found (devices present:") != std::string::npos;
        const bool no_verbs = message.find("cannot list RDMA devices") != std::string::npos;
        EXPECT_TRUE(listed || no_verbs) << message;
        if (listed) {
            EXPECT_EQ(error.errno_value(), ENODEV);
            EXPECT_NE(message.find("no-such-rdma-device"), std::string::npos) << message;
        }
    }
}

}  // namespace
}  // namespace odp::verbs
