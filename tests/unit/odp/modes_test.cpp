// Pinned and native modes, Auto, the address space, prefetch.
#include <gtest/gtest.h>

#include <odp/device.hpp>
#include <odp/region.hpp>

#include "test_support.hpp"

namespace odp {
namespace {

using test::expect_error;
using test::MiB;

TEST(Modes, AutoPicksNativeOnlyWhenCapsCoverTheAccess) {
    DeviceCaps partial = test::native_caps();
    partial.rc.atomic = false;
    auto [fake, device] = test::make_device(64 * MiB, partial);
    EXPECT_TRUE(device->native_covers(Access::LocalWrite | Access::RemoteWrite));
    EXPECT_FALSE(device->native_covers(Access::RemoteAtomic));
    EXPECT_EQ(device->resolve(Mode::Auto, Access::LocalWrite | Access::RemoteRead), Mode::Native);
    EXPECT_EQ(device->resolve(Mode::Auto, Access::RemoteAtomic), Mode::Emulated);
    const std::string message =
        expect_error(EOPNOTSUPP, [&] { (void)device->resolve(Mode::Native, Access::All); });
    EXPECT_NE(message.find("atomic"), std::string::npos) << message;
    EXPECT_NE(message.find(fake->name()), std::string::npos) << message;

    auto no_odp = test::make_device();
    EXPECT_EQ(no_odp.device->resolve(Mode::Auto, Access::LocalWrite), Mode::Emulated);
    const std::string none =
        expect_error(EOPNOTSUPP, [&] { (void)no_odp.device->resolve(Mode::Native, Access::None); });
    EXPECT_NE(none.find("no IBV_ODP_SUPPORT"), std::string::npos) << none;
}

TEST(Modes, AutoAvoidsNativeThatFailedItsDataCheck) {
    DeviceCaps lossy = test::native_caps();
    lossy.native_data_ok = false;
    lossy.native_data_check = "failed: RDMA WRITE into an ODP MR: 6144 of 8192 bytes wrong";
    auto [fake, device] = test::make_device(64 * MiB, lossy);
    EXPECT_TRUE(device->native_covers(Access::LocalWrite | Access::RemoteWrite));
    EXPECT_EQ(device->resolve(Mode::Auto, Access::LocalWrite | Access::RemoteWrite),
              Mode::Emulated);
    test::Mapping buffer(4 * MiB);
    const Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, Mode::Auto);
    EXPECT_EQ(region.mode(), Mode::Emulated);
    // Asked for by name, native is still given: the caller sees the check in caps.
    EXPECT_EQ(device->resolve(Mode::Native, Access::LocalWrite), Mode::Native);
    EXPECT_NE(to_string(device->caps()).find("native data check: failed: RDMA WRITE"),
              std::string::npos);
}

TEST(Modes, NativeIsOneOnDemandRegistration) {
    auto [fake, device] = test::make_device(64 * MiB, test::native_caps());
    test::Mapping buffer(8 * MiB);
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite);
    EXPECT_EQ(region.mode(), Mode::Native);
    EXPECT_EQ(fake->counters().registrations, 1U);
    EXPECT_EQ(device->pinned_bytes(), 0U) << "ODP pins nothing";
    Lease lease = region.translate(buffer.data() + 1, 6 * MiB);
    ASSERT_EQ(lease.sges().size(), 1U) << "no chunking natively";
    EXPECT_EQ(lease.sges()[0].addr, buffer.address() + 1);
    EXPECT_EQ(lease.sges()[0].length, 6 * MiB);
    EXPECT_TRUE(fake->covers(lease.sges()[0].lkey, buffer.address() + 1, 6 * MiB));
    region.invalidate(Range::from_length(buffer.address(), 4096), InvalidationReason::Unmap);
    EXPECT_FALSE(lease.release()) << "the NIC follows the mapping itself";
    EXPECT_NE(region.monitor().find("not needed"), std::string::npos);
    region = Region{};
    EXPECT_EQ(fake->live_registrations().size(), 0U);
}

TEST(Modes, NativeSplitsHugeRangesIntoSgesOfOneGiB) {
    auto [fake, device] = test::make_device(64 * MiB, test::native_caps());
    // Native registration of address space that is not mapped: ODP does not care.
    const std::uintptr_t base = std::uintptr_t{1} << 42;
    Region region = device->register_region(reinterpret_cast<void*>(base), std::size_t{5} << 30,
                                            Access::LocalWrite, Mode::Native);
    Lease lease = region.translate(base, (std::size_t{5} << 30) - 1);
    ASSERT_EQ(lease.sges().size(), 5U);
    EXPECT_EQ(lease.sges()[4].length, (std::size_t{1} << 30) - 1);
    expect_error(E2BIG, [&] { (void)region.translate(base, std::size_t{3} << 30, 2); });
}

TEST(Modes, PinnedRegistersEverythingAtOnce) {
    auto [fake, device] = test::make_device(16 * MiB);
    test::Mapping buffer(8 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, Mode::Pinned);
    EXPECT_EQ(region.mode(), Mode::Pinned);
    EXPECT_EQ(device->pinned_bytes(), 8 * MiB);
    EXPECT_EQ(fake->counters().registrations, 1U);
    Lease lease = region.translate(buffer.data() + 3 * MiB, 4 * MiB);
    ASSERT_EQ(lease.sges().size(), 1U);
    EXPECT_EQ(region.chunk_size(), 8 * MiB);
    region.invalidate(Range::from_length(buffer.address(), 4096), InvalidationReason::Unmap);
    EXPECT_FALSE(lease.release()) << "pinned mode cannot know (the counter-example)";
    const std::string message = expect_error(ENOBUFS, [&] {
        test::Mapping huge(32 * MiB);
        (void)device->register_region(huge.data(), huge.size(), Access::LocalWrite, Mode::Pinned);
    });
    EXPECT_NE(message.find("max_pinned_bytes"), std::string::npos) << message;
    region = Region{};
    EXPECT_EQ(device->pinned_bytes(), 0U);
}

TEST(Modes, RegionsAboveMaxMrSizeAreRefusedClearlyButEmulatedOnesWork) {
    DeviceCaps caps = test::native_caps();
    caps.max_mr_size = 4 * MiB;
    auto [fake, device] = test::make_device(64 * MiB, caps);
    test::Mapping buffer(8 * MiB);
    for (const Mode mode : {Mode::Pinned, Mode::Native}) {
        const std::string message = expect_error(E2BIG, [&] {
            (void)device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, mode);
        });
        EXPECT_NE(message.find("max_mr_size"), std::string::npos) << message;
        EXPECT_NE(message.find("Mode::Emulated"), std::string::npos) << message;
    }
    EXPECT_EQ(fake->live_registrations().size(), 0U);
    EXPECT_EQ(device->pinned_bytes(), 0U);
    RegionOptions options;
    options.mode = Mode::Emulated;
    options.monitor = MonitorKind::None;
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, options);
    Lease lease = region.translate(buffer.data(), 8 * MiB);
    EXPECT_EQ(lease.sges().size(), 4U) << "2 MiB chunks, each within max_mr_size";
}

TEST(Modes, PinnedFailureLeaksNothing) {
    auto [fake, device] = test::make_device(16 * MiB);
    test::Mapping buffer(4 * MiB);
    fake->fail_next_registrations(ENOMEM);
    expect_error(ENOMEM, [&] {
        (void)device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                      Mode::Pinned);
    });
    EXPECT_EQ(device->pinned_bytes(), 0U) << "the reservation was given back";
    EXPECT_EQ(fake->live_registrations().size(), 0U);
    EXPECT_EQ(device->stats().bytes_registered, 0U);
}

TEST(Modes, AddressSpaceIsImplicitNativeOrEmulated) {
    {
        auto [fake, device] = test::make_device(64 * MiB, test::native_caps());
        Region all = device->register_address_space(Access::LocalWrite);
        EXPECT_EQ(all.mode(), Mode::Native);
        EXPECT_TRUE(all.implicit());
        ASSERT_EQ(fake->live_registrations().size(), 1U);
        EXPECT_EQ(fake->live_registrations()[0], (Range{0, UINTPTR_MAX})) << "implicit ODP MR";
        test::Mapping buffer(MiB);
        Lease lease = all.translate(buffer.data(), 4096);
        EXPECT_EQ(lease.sges()[0].addr, buffer.address());
    }
    {
        auto [fake, device] = test::make_device(64 * MiB, test::native_caps(false));
        RegionOptions options;
        options.monitor = MonitorKind::None;
        Region all = device->register_address_space(Access::LocalWrite, options);
        EXPECT_EQ(all.mode(), Mode::Emulated) << "no implicit ODP: emulated";
        EXPECT_EQ(fake->counters().registrations, 0U);
        test::Mapping buffer(4 * MiB);
        Lease lease = all.translate(buffer.data() + MiB, MiB);
        EXPECT_EQ(lease.sges().size(), 1U);
        EXPECT_EQ(fake->live_registrations()[0], Range::from_length(buffer.address(), 2 * MiB));
        expect_error(EOPNOTSUPP, [&] {
            RegionOptions native;
            native.mode = Mode::Native;
            (void)device->register_address_space(Access::LocalWrite, native);
        });
        expect_error(EINVAL, [&] {
            RegionOptions pinned;
            pinned.mode = Mode::Pinned;
            (void)device->register_address_space(Access::LocalWrite, pinned);
        });
    }
}

TEST(Modes, PrefetchRegistersEmulatedChunksWithoutLeasing) {
    auto [fake, device] = test::make_device(4 * MiB);
    test::Mapping buffer(8 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    region.prefetch(buffer.data(), 4 * MiB);
    EXPECT_EQ(fake->live_registrations().size(), 2U);
    EXPECT_EQ(region.stats().prefetches, 1U);
    { Lease hit = region.translate(buffer.data(), 4 * MiB); }
    EXPECT_EQ(region.stats().hits, 2U);
    region.prefetch(buffer.data() + 4 * MiB, 4 * MiB);  // evicts the first two: not leased
    EXPECT_EQ(region.stats().evictions, 2U);
    expect_error(ENOBUFS, [&] { region.prefetch(buffer.data(), 8 * MiB); });  // more than fits
}

TEST(Modes, PrefetchNativeAdvisesOrSaysItCannot) {
    auto [fake, device] = test::make_device(64 * MiB, test::native_caps());
    test::Mapping buffer(MiB);
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite);
    region.prefetch(buffer.data(), MiB, Prefetch::Read);
    EXPECT_EQ(fake->counters().advises, 1U);
    EXPECT_EQ(region.stats().prefetches, 1U);

    auto no_prefetch = test::make_device(64 * MiB, test::native_caps(true, false));
    Region other =
        no_prefetch.device->register_region(buffer.data(), buffer.size(), Access::LocalWrite);
    const std::string message =
        expect_error(EOPNOTSUPP, [&] { other.prefetch(buffer.data(), MiB); });
    EXPECT_NE(message.find("cannot prefetch"), std::string::npos) << message;
}

TEST(Modes, DescribeNamesModeDeviceAndMonitor) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    const std::string text = region.describe();
    EXPECT_NE(text.find("emulated, 2 MiB chunks"), std::string::npos) << text;
    EXPECT_NE(text.find("fake0"), std::string::npos) << text;
    EXPECT_NE(text.find("monitor: none"), std::string::npos) << text;
    EXPECT_EQ(device->name(), "fake0");
    EXPECT_EQ(device->context(), nullptr);
}

}  // namespace
}  // namespace odp
