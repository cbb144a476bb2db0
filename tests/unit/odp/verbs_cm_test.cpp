// RDMA CM connection setup, the parts that need no device: the private-data
// frame and the errors that name the failed step.
#include <gtest/gtest.h>

#include <filesystem>
#include <odp/error.hpp>
#include <odp/verbs_cm.hpp>
#include <vector>

#include "test_support.hpp"

namespace odp::verbs {
namespace {

using odp::test::expect_error;

std::vector<std::uint8_t> bytes(std::size_t count, std::uint8_t first = 1) {
    std::vector<std::uint8_t> data(count);
    for (std::size_t i = 0; i < count; ++i) {
        data[i] = static_cast<std::uint8_t>(first + i);
    }
    return data;
}

TEST(CmPrivateData, RoundTripsEveryPayloadSizeThatFits) {
    for (std::size_t size = 0; size <= cm_payload_max; ++size) {
        const auto payload = bytes(size, 7);
        const auto frame = encode_cm_private_data(payload);
        ASSERT_EQ(frame.size(), cm_private_data_header + size);
        ASSERT_LE(frame.size(), cm_private_data_max);
        EXPECT_EQ(frame[0], 'O');
        EXPECT_EQ(frame[1], 'D');
        EXPECT_EQ(frame[3], size);
        EXPECT_EQ(decode_cm_private_data(frame), payload) << size << " bytes";
    }
}

TEST(CmPrivateData, PaddingAfterThePayloadIsIgnored) {
    // InfiniBand delivers the private data padded to its full size with zeros.
    auto frame = encode_cm_private_data(bytes(12));
    frame.resize(cm_private_data_max, 0);
    EXPECT_EQ(decode_cm_private_data(frame), bytes(12));
}

TEST(CmPrivateData, PayloadTooLargeForAConnectRequestIsRefused) {
    const std::string error =
        expect_error(EMSGSIZE, [] { (void)encode_cm_private_data(bytes(cm_payload_max + 1)); });
    EXPECT_NE(error.find("53 bytes: at most 52"), std::string::npos) << error;
}

TEST(CmPrivateData, ForeignOrDamagedFramesAreProtocolErrors) {
    const auto good = encode_cm_private_data(bytes(8));
    struct Case {
        std::vector<std::uint8_t> data;
        const char* says;
    };
    auto other_magic = good;
    other_magic[0] = 'X';
    auto other_version = good;
    other_version[2] = 9;
    auto truncated = good;
    truncated.resize(good.size() - 1);
    const Case cases[] = {
        {{}, "shorter than odp-layer's 4-byte header"},
        {{'O', 'D', 1}, "shorter than odp-layer's 4-byte header"},
        {other_magic, "does not start with \"OD\""},
        {other_version, "version 9; this library speaks version 1"},
        {truncated, "announces a 8-byte payload but carries 7 bytes"},
    };
    for (const Case& c : cases) {
        const std::string error =
            expect_error(EPROTO, [&] { (void)decode_cm_private_data(c.data); });
        EXPECT_NE(error.find(c.says), std::string::npos) << error;
    }
}

TEST(CmErrors, EventFailureNamesTheStepTheEventsAndWhatToCheck) {
    const std::string text =
        describe_cm_event_failure("rdma_resolve_addr(198.51.100.9:18515)",
                                  RDMA_CM_EVENT_ADDR_RESOLVED, RDMA_CM_EVENT_ADDR_ERROR, -ENODEV);
    EXPECT_EQ(text.rfind("rdma_resolve_addr(198.51.100.9:18515): expected "
                         "RDMA_CM_EVENT_ADDR_RESOLVED, got RDMA_CM_EVENT_ADDR_ERROR (status -19: ",
                         0),
              0U)
        << text;
    EXPECT_NE(text.find("rdma link show"), std::string::npos) << text;

    const std::string rejected =
        describe_cm_event_failure("rdma_connect(192.0.2.1:1) on rxe0",
                                  RDMA_CM_EVENT_CONNECT_RESPONSE, RDMA_CM_EVENT_REJECTED, 28);
    EXPECT_NE(rejected.find("got RDMA_CM_EVENT_REJECTED (status 28)"), std::string::npos)
        << rejected;
    EXPECT_NE(rejected.find("is an RDMA CM server listening"), std::string::npos) << rejected;
}

TEST(CmErrors, NoConnectionManagerSaysWhichModuleToLoad) {
    if (std::filesystem::exists("/dev/infiniband/rdma_cm")) {
        GTEST_SKIP() << "this host has RDMA CM (/dev/infiniband/rdma_cm): the missing-module "
                        "error cannot happen here";
    }
    const std::string error = expect_error(ENODEV, [] { CmListener listener("127.0.0.1", 0); });
    EXPECT_NE(error.find("rdma_create_event_channel for listening on 127.0.0.1:0"),
              std::string::npos)
        << error;
    EXPECT_NE(error.find("load the rdma_ucm module"), std::string::npos) << error;
}

}  // namespace
}  // namespace odp::verbs
