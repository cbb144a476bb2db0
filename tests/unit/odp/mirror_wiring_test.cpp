// Emulated regions and the per-process Mirror (a Fake source here).
#include <gtest/gtest.h>

#include <odp/device.hpp>
#include <odp/mirror.hpp>
#include <odp/region.hpp>
#include <thread>

#include "test_support.hpp"

namespace odp {
namespace {

using test::MiB;

class MirrorWiring : public ::testing::Test {
  protected:
    void SetUp() override {
        MirrorOptions options;
        options.kind = MonitorKind::Fake;
        mirror = Mirror::acquire(options);
    }
    std::shared_ptr<Mirror> mirror;
    test::FakeDevice dev = test::make_device();
    test::Mapping buffer{8 * MiB};

    Region make_region() {
        RegionOptions options = test::emulated();
        options.mirror = mirror;
        return dev.device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                           options);
    }
};

TEST_F(MirrorWiring, RegionWatchesItsRangeAndSaysWhich) {
    Region region = make_region();
    EXPECT_EQ(mirror->stats().watches, 1U);
    EXPECT_NE(region.monitor().find("fake"), std::string::npos) << region.monitor();
    region = Region{};
    EXPECT_EQ(mirror->stats().watches, 0U) << "closing the region ends its watch";
}

TEST_F(MirrorWiring, InjectedEventMakesTheChunkStale) {
    Region region = make_region();
    Lease held = region.translate(buffer.data(), 4096);
    const std::uint32_t old_key = held.sges()[0].lkey;
    mirror->inject(Range::from_length(buffer.address() + 8192, 4096), InvalidationReason::Unmap);
    // translate() waits for recorded events itself: no synchronize() needed.
    Lease fresh = region.translate(buffer.data(), 4096);
    EXPECT_NE(fresh.sges()[0].lkey, old_key);
    EXPECT_EQ(region.stats().invalidations_of(InvalidationReason::Unmap), 1U);
    EXPECT_EQ(region.stats().stale_while_leased, 1U);
    EXPECT_TRUE(held.release());
    EXPECT_EQ(dev.fake->live_registrations().size(), 1U);
}

TEST_F(MirrorWiring, OverflowReachesEveryRegion) {
    Region a = make_region();
    Region b = make_region();
    { Lease lease = a.translate(buffer.data(), 6 * MiB); }
    { Lease lease = b.translate(buffer.data(), 2 * MiB); }
    mirror->inject_overflow();
    mirror->synchronize();
    EXPECT_EQ(a.stats().invalidations_of(InvalidationReason::Overflow), 1U);
    EXPECT_EQ(a.stats().chunks_invalidated, 3U);
    EXPECT_EQ(b.stats().chunks_invalidated, 1U);
}

TEST_F(MirrorWiring, ExposureCallbackRunsOnTheMirrorThread) {
    RegionOptions options = test::emulated();
    options.mirror = mirror;
    Region region = dev.device->register_region(buffer.data(), buffer.size(),
                                                Access::LocalWrite | Access::RemoteWrite, options);
    std::thread::id ran_on;
    Exposure exposure = region.expose(buffer.data(), MiB, [&](Range, InvalidationReason) {
        ran_on = std::this_thread::get_id();
    });
    mirror->inject(Range::from_length(buffer.address(), 4096), InvalidationReason::Clear);
    mirror->synchronize();
    EXPECT_NE(ran_on, std::thread::id{});
    EXPECT_NE(ran_on, std::this_thread::get_id());
    EXPECT_TRUE(exposure.release());
}

TEST_F(MirrorWiring, LeaseKeepsTheMirrorAlive) {
    Region region = make_region();
    Lease lease = region.translate(buffer.data(), 4096);
    const std::weak_ptr<Mirror> weak = mirror;
    mirror.reset();
    region = Region{};
    EXPECT_FALSE(weak.expired()) << "the lease holds the region core, which holds the mirror";
    lease.release();
    EXPECT_TRUE(weak.expired());
}

}  // namespace
}  // namespace odp
