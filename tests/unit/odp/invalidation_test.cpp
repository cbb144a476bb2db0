// Leases against invalidation: ordering, deferred deregistration, overflow,
// teardown while leased.
#include <gtest/gtest.h>
#include <unistd.h>

#include <odp/device.hpp>
#include <odp/region.hpp>

#include "test_support.hpp"

namespace odp {
namespace {

using test::expect_error;
using test::MiB;

class Invalidation : public ::testing::Test {
  protected:
    test::FakeDevice dev = test::make_device();
    test::Mapping buffer{8 * MiB};
    Region region = dev.device->register_region(
        buffer.data(), buffer.size(), Access::LocalWrite | Access::RemoteWrite, test::emulated());

    Range chunk(std::size_t index) const {
        return Range::from_length(buffer.address() + index * 2 * MiB, 2 * MiB);
    }
};

TEST_F(Invalidation, UnleasedChunkIsReregisteredAndOldOneDropped) {
    std::uint32_t old_key = 0;
    {
        Lease lease = region.translate(buffer.data(), 4096);
        old_key = lease.sges()[0].lkey;
    }
    region.invalidate(Range::from_length(buffer.address() + 4096, 4096), InvalidationReason::Unmap);
    Stats stats = region.stats();
    EXPECT_EQ(stats.invalidations_of(InvalidationReason::Unmap), 1U);
    EXPECT_EQ(stats.chunks_invalidated, 1U);
    EXPECT_EQ(stats.stale_while_leased, 0U);
    // Invalidation only marks: the registration goes at the next slow path.
    EXPECT_EQ(dev.fake->counters().deregistrations, 0U);
    Lease lease = region.translate(buffer.data(), 4096);
    EXPECT_NE(lease.sges()[0].lkey, old_key);
    EXPECT_EQ(dev.fake->counters().deregistrations, 1U);
    EXPECT_EQ(dev.fake->live_registrations().size(), 1U);
    EXPECT_EQ(dev.device->pinned_bytes(), 2 * MiB);
    stats = region.stats();
    EXPECT_EQ(stats.chunk_faults, 2U);
    EXPECT_EQ(stats.misses, 2U);
}

TEST_F(Invalidation, CollectDropsStaleChunksAtOnce) {
    { Lease lease = region.translate(buffer.data(), 3 * MiB); }
    region.invalidate(chunk(0), InvalidationReason::Clear);
    EXPECT_EQ(dev.device->pinned_bytes(), 4 * MiB);
    region.collect();
    EXPECT_EQ(dev.fake->counters().deregistrations, 1U);
    EXPECT_EQ(dev.device->pinned_bytes(), 2 * MiB);
}

TEST_F(Invalidation, LeasedChunkStaysRegisteredUntilReleased) {
    Lease held = region.translate(buffer.data(), 4096);
    const std::uint32_t old_key = held.sges()[0].lkey;
    region.invalidate(Range::from_length(buffer.address(), 4096), InvalidationReason::Unmap);
    EXPECT_EQ(region.stats().stale_while_leased, 1U);
    // No new lease gets the stale chunk; it gets a fresh registration ...
    Lease fresh = region.translate(buffer.data(), 4096);
    EXPECT_NE(fresh.sges()[0].lkey, old_key);
    // ... while the old one stays registered for the work request in flight.
    EXPECT_TRUE(dev.fake->covers(old_key, buffer.address(), 4096));
    EXPECT_EQ(dev.device->pinned_bytes(), 4 * MiB);
    EXPECT_TRUE(held.release()) << "the release reports the change";
    EXPECT_FALSE(dev.fake->covers(old_key, buffer.address(), 4096))
        << "deregistered by the last release";
    EXPECT_EQ(dev.device->pinned_bytes(), 2 * MiB);
    EXPECT_FALSE(fresh.release());
}

TEST_F(Invalidation, LastOfSeveralLeasesDeregisters) {
    Lease a = region.translate(buffer.data(), 4096);
    Lease b = region.translate(buffer.data() + 8192, 4096);
    const std::uint32_t key = a.sges()[0].lkey;
    region.invalidate(chunk(0), InvalidationReason::Migration);
    EXPECT_TRUE(a.release());
    EXPECT_TRUE(dev.fake->covers(key, buffer.address(), 4096)) << "b still holds it";
    EXPECT_TRUE(b.release());
    EXPECT_FALSE(dev.fake->covers(key, buffer.address(), 4096));
    EXPECT_EQ(region.stats().invalidations_of(InvalidationReason::Migration), 1U);
}

TEST_F(Invalidation, OnlyOverlappingChunksTurnStale) {
    Lease lease = region.translate(buffer.data(), 8 * MiB);
    region.invalidate(Range::from_length(buffer.address() + 2 * MiB - 1, 2),
                      InvalidationReason::Protection);
    EXPECT_EQ(region.stats().chunks_invalidated, 2U);
    // Chunks 2 and 3 are still hits.
    Lease other = region.translate(buffer.data() + 4 * MiB, 4 * MiB);
    EXPECT_EQ(region.stats().hits, 2U);
    // Events outside the region are ignored.
    region.invalidate(Range::from_length(buffer.address() + 8 * MiB, 4096),
                      InvalidationReason::Unmap);
    EXPECT_EQ(region.stats().chunks_invalidated, 2U);
}

TEST_F(Invalidation, OverflowMarksEverythingStale) {
    Lease lease = region.translate(buffer.data(), 6 * MiB);
    region.listener().on_invalidate_all(InvalidationReason::Overflow);
    const Stats stats = region.stats();
    EXPECT_EQ(stats.invalidations_of(InvalidationReason::Overflow), 1U);
    EXPECT_EQ(stats.chunks_invalidated, 3U);
    EXPECT_EQ(stats.stale_while_leased, 3U);
    EXPECT_TRUE(lease.release());
    EXPECT_EQ(dev.fake->live_registrations().size(), 0U);
    EXPECT_EQ(dev.device->pinned_bytes(), 0U);
    // An Overflow through on_invalidate() means the same.
    { Lease again = region.translate(buffer.data(), 4096); }
    region.invalidate(chunk(3), InvalidationReason::Overflow);
    EXPECT_EQ(region.stats().chunks_invalidated, 4U);
}

// A region's last leaf has only as many slots as the region has chunks
// left: here 4096 + 3 chunks of a page, the second leaf of 3 slots. Its
// chunks fault, hit, and are reached by a range invalidation and by an
// overflow like any other.
TEST(InvalidationShortLeaf, TheLastLeafHoldsTheRegionsLastChunks) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    auto [fake, device] = test::make_device();
    test::Mapping buffer((4096 + 3) * page);
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                            test::emulated(page));
    const auto at = [&](std::size_t chunk) { return buffer.data() + chunk * page; };
    for (const std::size_t chunk :
         {std::size_t{0}, std::size_t{4095}, std::size_t{4096}, std::size_t{4098}}) {
        { Lease lease = region.translate(at(chunk), page); }
        { Lease again = region.translate(at(chunk), page); }
    }
    EXPECT_EQ(region.stats().chunk_faults, 4U);
    EXPECT_EQ(region.stats().hits, 4U);

    region.invalidate(Range::from_length(reinterpret_cast<std::uintptr_t>(at(4095)), 4 * page),
                      InvalidationReason::Unmap);
    EXPECT_EQ(region.stats().chunks_invalidated, 3U) << "chunks 4095, 4096 and 4098";
    region.listener().on_invalidate_all(InvalidationReason::Overflow);
    EXPECT_EQ(region.stats().chunks_invalidated, 4U) << "chunk 0 was the one left";
    { Lease lease = region.translate(at(4098), page); }
    EXPECT_EQ(region.stats().chunk_faults, 5U);
    region.collect();
    EXPECT_EQ(fake->live_registrations().size(), 1U);
}

TEST_F(Invalidation, InvalidationDuringFaultIsNotLost) {
    // The event arrives after ibv_reg_mr pinned the (old) pages but before
    // the chunk is published: the fault must notice and register again.
    int calls = 0;
    dev.fake->set_on_register([&](Range) {
        if (++calls == 1) {
            region.invalidate(chunk(0), InvalidationReason::Unmap);
        }
    });
    Lease lease = region.translate(buffer.data(), 4096);
    EXPECT_EQ(calls, 2);
    EXPECT_EQ(dev.fake->counters().registrations, 2U);
    EXPECT_EQ(dev.fake->counters().deregistrations, 1U) << "the racing registration is dropped";
    EXPECT_TRUE(dev.fake->covers(lease.sges()[0].lkey, buffer.address(), 4096));
    EXPECT_FALSE(lease.release()) << "the lease handed out is the fresh one";
}

TEST_F(Invalidation, EndlessInvalidationGivesUp) {
    dev.fake->set_on_register(
        [&](Range) { region.invalidate(chunk(0), InvalidationReason::Other); });
    const std::string message =
        expect_error(EAGAIN, [&] { (void)region.translate(buffer.data(), 4096); });
    EXPECT_NE(message.find("mapping changed"), std::string::npos) << message;
    dev.fake->set_on_register({});
    EXPECT_EQ(dev.fake->live_registrations().size(), 0U);
    EXPECT_EQ(dev.device->pinned_bytes(), 0U);
}

TEST_F(Invalidation, RegionDroppedWhileLeasedDefersTeardown) {
    auto fake = dev.fake;
    Lease lease = region.translate(buffer.data(), 4 * MiB);
    const std::uint32_t key = lease.sges()[0].lkey;
    region = Region{};   // close the region ...
    dev.device.reset();  // ... and drop the device
    EXPECT_EQ(fake->live_registrations().size(), 2U) << "the lease keeps its chunks";
    EXPECT_TRUE(fake->covers(key, buffer.address(), 4096));
    EXPECT_FALSE(lease.release()) << "teardown is not a mapping change";
    EXPECT_EQ(fake->live_registrations().size(), 0U);
    EXPECT_EQ(fake->counters().deregistrations, 2U);
}

TEST_F(Invalidation, RegionCloseDeregistersUnleasedAtOnce) {
    { Lease lease = region.translate(buffer.data(), 8 * MiB); }
    EXPECT_EQ(dev.fake->live_registrations().size(), 4U);
    region = Region{};
    EXPECT_EQ(dev.fake->live_registrations().size(), 0U);
    EXPECT_EQ(dev.device->pinned_bytes(), 0U);
    const Stats total = dev.device->stats();
    EXPECT_EQ(total.chunk_faults, 4U) << "closed regions stay in the device totals";
    EXPECT_EQ(total.invalidations_of(InvalidationReason::Teardown), 1U);
}

TEST_F(Invalidation, RegisterAndDeregisterOtherRegionsDuringLeases) {
    Lease lease = region.translate(buffer.data(), 4096);
    for (int i = 0; i < 20; ++i) {
        Region other = dev.device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                                   test::emulated());
        Lease mine = other.translate(buffer.data() + 2 * MiB, 4096);
        EXPECT_NE(mine.sges()[0].lkey, lease.sges()[0].lkey);
    }
    EXPECT_TRUE(dev.fake->covers(lease.sges()[0].lkey, buffer.address(), 4096));
    EXPECT_EQ(dev.fake->live_registrations().size(), 1U);
}

}  // namespace
}  // namespace odp
