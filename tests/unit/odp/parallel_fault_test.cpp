// Chunk faults register outside the device's lock: while one fault is held
// inside its registration (the fake NIC's hook), other threads fault other
// chunks, fault the same chunk, invalidate, exhaust the budget or close the
// region. Run under ThreadSanitizer too (-DODP_TSAN=ON).
#include <gtest/gtest.h>

#include <chrono>
#include <odp/device.hpp>
#include <odp/region.hpp>
#include <thread>

#include "test_support.hpp"

namespace odp {
namespace {

using test::MiB;
using namespace std::chrono_literals;
using test::finished;
using test::in_background;
using test::patience;
using test::RegistrationGate;

// An emulated region whose first chunk's registration will be held by `gate`.
struct GatedRegion {
    explicit GatedRegion(std::uint64_t budget = 64 * MiB, std::size_t size = 4 * MiB)
        : devices(test::make_device(budget)),
          buffer(size),
          region(devices.device->register_region(buffer.data(), size, Access::LocalWrite,
                                                 test::emulated())),
          gate(*devices.fake, buffer.address()) {}
    test::FakeDevice devices;
    FakeNic& fake = *devices.fake;
    test::Mapping buffer;
    Region region;
    RegistrationGate gate;
};

TEST(ParallelFault, OtherChunksRegisterWhileAFaultIsInFlight) {
    auto [fake, device] = test::make_device();
    test::Mapping first_buffer(8 * MiB);
    test::Mapping second_buffer(4 * MiB);
    Region first = device->register_region(first_buffer.data(), first_buffer.size(),
                                           Access::LocalWrite, test::emulated());
    Region second = device->register_region(second_buffer.data(), second_buffer.size(),
                                            Access::LocalWrite, test::emulated());
    RegistrationGate gate(*fake, first_buffer.address());
    auto held = in_background([&] { return first.translate(first_buffer.data(), 64); });
    ASSERT_TRUE(gate.wait_held());

    // Another chunk of the same region, and a chunk of another region.
    auto same_region =
        in_background([&] { return first.translate(first_buffer.data() + 2 * MiB, 64); });
    auto other_region = in_background([&] { return second.translate(second_buffer.data(), 64); });
    const bool same_done = finished(same_region);
    const bool other_done = finished(other_region);
    EXPECT_TRUE(same_done) << "a fault of another chunk waited for the registration in flight";
    EXPECT_TRUE(other_done) << "a fault in another region waited for the registration in flight";
    EXPECT_EQ(gate.entries(), 1);
    gate.open();

    const Lease held_lease = held.get();
    const Lease same_lease = same_region.get();
    const Lease other_lease = other_region.get();
    for (const Lease* lease : {&held_lease, &same_lease, &other_lease}) {
        ASSERT_EQ(lease->sges().size(), 1U);
        EXPECT_TRUE(fake->covers(lease->sges()[0].lkey, lease->sges()[0].addr, 64));
    }
    EXPECT_EQ(fake->counters().registrations, 3U);
    EXPECT_EQ(first.stats().chunk_faults, 2U);
    EXPECT_EQ(second.stats().chunk_faults, 1U);
}

TEST(ParallelFault, SameChunkWaitsForTheFaultInFlight) {
    GatedRegion gated;
    auto& [devices, fake, buffer, region, gate] = gated;
    auto held = in_background([&] { return region.translate(buffer.data(), 64); });
    ASSERT_TRUE(gate.wait_held());
    auto waiter = in_background([&] { return region.translate(buffer.data() + 4096, 64); });
    // The waiter is in the slow path (a miss) while the first fault is held.
    const auto deadline = std::chrono::steady_clock::now() + patience;
    while (region.stats().misses < 2 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
    }
    ASSERT_EQ(region.stats().misses, 2U);
    gate.open();

    const Lease first = held.get();
    const Lease second = waiter.get();
    EXPECT_EQ(gate.entries(), 1) << "the second faulter registered the chunk again";
    EXPECT_EQ(fake.counters().registrations, 1U);
    EXPECT_EQ(region.stats().chunk_faults, 1U);
    EXPECT_EQ(first.sges()[0].lkey, second.sges()[0].lkey) << "both lease the one registration";
}

// An invalidation (lock-free) that lands while the chunk is being registered
// is seen by the fault's re-check: it registers again and hands out the new
// registration only.
void expect_fault_redone_after(const std::function<void(Region&, Range)>& invalidate) {
    GatedRegion gated;
    auto& [devices, fake, buffer, region, gate] = gated;
    auto held = in_background([&] { return region.translate(buffer.data(), 64); });
    ASSERT_TRUE(gate.wait_held());
    auto invalidation =
        in_background([&] { invalidate(region, Range::from_length(buffer.address(), 4096)); });
    EXPECT_TRUE(finished(invalidation)) << "the invalidation waited for a registration";
    gate.open();

    const Lease lease = held.get();
    EXPECT_EQ(gate.entries(), 2) << "the chunk was not registered again";
    const auto counters = fake.counters();
    EXPECT_EQ(counters.registrations, 2U);
    EXPECT_EQ(counters.deregistrations, 1U) << "the registration of the old pages was dropped";
    const auto live = fake.live_registrations();
    ASSERT_EQ(live.size(), 1U);
    EXPECT_TRUE(fake.covers(lease.sges()[0].lkey, buffer.address(), 64))
        << "the lease holds the registration made after the invalidation";
    EXPECT_EQ(region.stats().chunk_faults, 2U);
}

TEST(ParallelFault, InvalidationDuringRegistrationIsNotLost) {
    expect_fault_redone_after(
        [](Region& region, Range range) { region.invalidate(range, InvalidationReason::Unmap); });
}

TEST(ParallelFault, InvalidateAllDuringRegistrationIsNotLost) {
    expect_fault_redone_after(
        [](Region& region, Range) { region.invalidate_all(InvalidationReason::Overflow); });
}

TEST(ParallelFault, BudgetIsReservedBeforeRegistering) {
    // Room for two chunks: one held in registration, one leased.
    GatedRegion gated(4 * MiB, 8 * MiB);
    auto& [devices, fake, buffer, region, gate] = gated;
    const auto& device = devices.device;
    auto held = in_background([&] { return region.translate(buffer.data(), 64); });
    ASSERT_TRUE(gate.wait_held());
    EXPECT_EQ(device->pinned_bytes(), 2 * MiB) << "the fault in flight holds its reservation";

    Lease second = region.translate(buffer.data() + 2 * MiB, 64);
    test::expect_error(EAGAIN, [&] { (void)region.translate(buffer.data() + 4 * MiB, 64); });
    EXPECT_EQ(fake.counters().registrations, 2U)
        << "the fault that did not fit registered anyway (the held one and the leased one did)";
    EXPECT_EQ(region.stats().evictions, 0U) << "nothing unleased to evict";
    EXPECT_EQ(region.stats().back_pressure, 1U);
    gate.open();
    Lease first = held.get();
    EXPECT_EQ(device->stats().peak_pinned_bytes, 4 * MiB) << "the budget was never overshot";

    // Now the second chunk's lease goes: the third evicts it, exactly once.
    second.release();
    Lease third = region.translate(buffer.data() + 4 * MiB, 64);
    EXPECT_EQ(region.stats().evictions, 1U);
    EXPECT_EQ(fake.counters().deregistrations, 1U);
    EXPECT_TRUE(fake.covers(first.sges()[0].lkey, buffer.address(), 64))
        << "the leased chunk was not evicted";
    EXPECT_EQ(device->stats().peak_pinned_bytes, 4 * MiB);
}

TEST(ParallelFault, RegionClosedDuringRegistrationLeaksNothing) {
    GatedRegion gated;
    auto& [devices, fake, buffer, region, gate] = gated;
    const auto& device = devices.device;
    auto held = in_background([&] {
        return test::expect_error(EINVAL, [&] { (void)region.translate(buffer.data(), 64); });
    });
    ASSERT_TRUE(gate.wait_held());
    auto closing = in_background([&] { region = Region{}; });
    EXPECT_TRUE(finished(closing)) << "closing waited for a registration";
    gate.open();

    const std::string message = held.get();
    EXPECT_NE(message.find("closed during the call"), std::string::npos) << message;
    EXPECT_TRUE(fake.live_registrations().empty()) << "the registration made for a closed region "
                                                      "stayed";
    EXPECT_EQ(device->pinned_bytes(), 0U);
    EXPECT_EQ(fake.counters().registrations, fake.counters().deregistrations);
}

// Pinned regions register outside the device's lock too: while one pinned
// region's registration is held, another pinned region registers and an
// emulated chunk faults, and the held one's budget counts as a pinned
// region's meanwhile (a region that cannot fit beside both is refused).
TEST(ParallelFault, PinnedRegionsRegisterWhileAnotherIsInFlight) {
    auto [fake, device] = test::make_device(16 * MiB);
    test::Mapping held_buffer(8 * MiB);
    test::Mapping other_buffer(4 * MiB);
    test::Mapping emulated_buffer(4 * MiB);
    test::Mapping too_big(8 * MiB);
    Region emulated = device->register_region(emulated_buffer.data(), emulated_buffer.size(),
                                              Access::LocalWrite, test::emulated());
    RegistrationGate gate(*fake, held_buffer.address());
    auto held = in_background([&] {
        return device->register_region(held_buffer.data(), held_buffer.size(), Access::LocalWrite,
                                       Mode::Pinned);
    });
    ASSERT_TRUE(gate.wait_held());
    EXPECT_EQ(device->pinned_bytes(), 8 * MiB) << "the registration in flight holds its budget";

    auto other = in_background([&] {
        return device->register_region(other_buffer.data(), other_buffer.size(), Access::LocalWrite,
                                       Mode::Pinned);
    });
    auto fault = in_background([&] { return emulated.translate(emulated_buffer.data(), 64); });
    const bool other_done = finished(other);
    const bool fault_done = finished(fault);
    EXPECT_TRUE(other_done) << "a pinned region waited for another's registration";
    EXPECT_TRUE(fault_done) << "a chunk fault waited for a pinned region's registration";
    const std::string refused = test::expect_error(ENOBUFS, [&] {
        (void)device->register_region(too_big.data(), too_big.size(), Access::LocalWrite,
                                      Mode::Pinned);
    });
    EXPECT_NE(refused.find("pinned regions already hold 12 MiB"), std::string::npos) << refused;
    gate.open();

    const Region held_region = held.get();
    const Region other_region = other.get();
    const Lease lease = fault.get();
    EXPECT_EQ(device->pinned_bytes(), 14 * MiB);
    EXPECT_EQ(device->stats().peak_pinned_bytes, 14 * MiB);
    EXPECT_EQ(fake->counters().registrations, 3U);
}

// A pinned registration that fails returns its pin and its budget, also
// the part counted as a pinned region's.
TEST(ParallelFault, AFailedPinnedRegistrationReturnsItsBudget) {
    auto [fake, device] = test::make_device(8 * MiB);
    test::Mapping buffer(8 * MiB);
    fake->fail_next_registrations(EIO);
    test::expect_error(EIO, [&] {
        (void)device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                      Mode::Pinned);
    });
    EXPECT_EQ(device->pinned_bytes(), 0U);
    const Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, Mode::Pinned);
    EXPECT_EQ(device->pinned_bytes(), 8 * MiB) << "the whole budget is free again";
    EXPECT_TRUE(fake->live_registrations().size() == 1U);
}

}  // namespace
}  // namespace odp
