// Exposure: segments for a peer, change detection, the callback.
#include <gtest/gtest.h>

#include <atomic>
#include <odp/device.hpp>
#include <odp/region.hpp>
#include <thread>

#include "test_support.hpp"

namespace odp {
namespace {

using test::expect_error;
using test::MiB;

class Expose : public ::testing::Test {
  protected:
    test::FakeDevice dev = test::make_device();
    test::Mapping buffer{8 * MiB};
    Region region = dev.device->register_region(
        buffer.data(), buffer.size(), Access::LocalWrite | Access::RemoteWrite | Access::RemoteRead,
        test::emulated());
};

TEST_F(Expose, SegmentsCarryAddressesLengthsAndRkeys) {
    Exposure exposure = region.expose(buffer.data() + MiB, 2 * MiB);
    ASSERT_EQ(exposure.segments().size(), 2U);
    EXPECT_EQ(exposure.segments()[0].address, buffer.address() + MiB);
    EXPECT_EQ(exposure.segments()[0].length, MiB);
    EXPECT_EQ(exposure.segments()[1].address, buffer.address() + 2 * MiB);
    EXPECT_EQ(exposure.segments()[1].length, MiB);
    for (const RemoteSegment& segment : exposure.segments()) {
        EXPECT_TRUE(dev.fake->covers(segment.rkey, segment.address, segment.length));
    }
    EXPECT_EQ(exposure.range(), Range::from_length(buffer.address() + MiB, 2 * MiB));
    EXPECT_FALSE(exposure.changed());
    EXPECT_FALSE(exposure.release());
    EXPECT_FALSE(exposure.held());
}

TEST_F(Expose, ChangeUnderTheRangeIsReportedAndCallbackFiresOnce) {
    std::atomic<int> calls{0};
    Range seen{};
    Exposure exposure =
        region.expose(buffer.data(), MiB, [&](Range changed, InvalidationReason why) {
            ++calls;
            seen = changed;
            EXPECT_EQ(why, InvalidationReason::Unmap);
        });
    const std::uint32_t rkey = exposure.segments()[0].rkey;
    region.invalidate(Range::from_length(buffer.address() + 4096, 4096), InvalidationReason::Unmap);
    EXPECT_EQ(calls.load(), 1);
    EXPECT_EQ(seen, Range::from_length(buffer.address() + 4096, 4096));
    EXPECT_TRUE(exposure.changed());
    region.invalidate(Range::from_length(buffer.address(), 4096), InvalidationReason::Unmap);
    EXPECT_EQ(calls.load(), 1) << "fires once";
    EXPECT_TRUE(dev.fake->covers(rkey, buffer.address(), MiB)) << "still registered while exposed";
    EXPECT_TRUE(exposure.release());
    EXPECT_FALSE(dev.fake->covers(rkey, buffer.address(), MiB));
}

TEST_F(Expose, ChangeOutsideTheExposedBytesIsNotReported) {
    Exposure exposure = region.expose(buffer.data(), MiB);
    // Same chunk, other bytes: the chunk is re-registered, the exposure is fine.
    region.invalidate(Range::from_length(buffer.address() + MiB + 4096, 4096),
                      InvalidationReason::Clear);
    EXPECT_FALSE(exposure.changed());
    EXPECT_FALSE(exposure.release());
}

TEST_F(Expose, OverflowChangesEveryExposure) {
    Exposure a = region.expose(buffer.data(), 4096);
    Exposure b = region.expose(buffer.data() + 6 * MiB, 4096);
    region.invalidate_all(InvalidationReason::Overflow);
    EXPECT_TRUE(a.release());
    EXPECT_TRUE(b.release());
}

TEST_F(Expose, CallbackMayReleaseItsOwnExposure) {
    Exposure exposure;
    bool released_inside = false;
    exposure = region.expose(buffer.data(), 4096, [&](Range, InvalidationReason) {
        released_inside = exposure.release();
    });
    region.invalidate(Range::from_length(buffer.address(), 1), InvalidationReason::Unmap);
    EXPECT_TRUE(released_inside);
    EXPECT_FALSE(exposure.held());
    EXPECT_EQ(dev.fake->live_registrations().size(), 0U);
}

TEST_F(Expose, NoCallbackAfterRelease) {
    std::atomic<int> calls{0};
    Exposure exposure =
        region.expose(buffer.data(), 4096, [&](Range, InvalidationReason) { ++calls; });
    EXPECT_FALSE(exposure.release());
    region.invalidate(Range::from_length(buffer.address(), 1), InvalidationReason::Unmap);
    EXPECT_EQ(calls.load(), 0);
}

TEST_F(Expose, ReleaseWaitsForARunningCallback) {
    std::atomic<bool> entered{false};
    std::atomic<bool> finished{false};
    Exposure exposure = region.expose(buffer.data(), 4096, [&](Range, InvalidationReason) {
        entered = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        finished = true;
    });
    std::thread mirror([&] {
        region.invalidate(Range::from_length(buffer.address(), 1), InvalidationReason::Unmap);
    });
    while (!entered) {
        std::this_thread::yield();
    }
    EXPECT_TRUE(exposure.release());
    EXPECT_TRUE(finished.load()) << "release returned while the callback ran";
    mirror.join();
}

TEST_F(Expose, NeedsRemoteAccess) {
    Region local = dev.device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                               test::emulated());
    const std::string message = expect_error(EACCES, [&] { (void)local.expose(buffer.data(), 1); });
    EXPECT_NE(message.find("no remote access"), std::string::npos) << message;
}

TEST_F(Expose, NativeExposureIsOneSegment) {
    auto native = test::make_device(64 * MiB, test::native_caps());
    Region region_native = native.device->register_region(buffer.data(), buffer.size(),
                                                          Access::LocalWrite | Access::RemoteWrite);
    Exposure exposure = region_native.expose(buffer.data(), 8 * MiB);
    ASSERT_EQ(exposure.segments().size(), 1U);
    EXPECT_EQ(exposure.segments()[0].length, 8 * MiB);
    EXPECT_FALSE(exposure.release());
}

}  // namespace
}  // namespace odp
