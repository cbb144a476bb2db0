// The C API (odp/odp.h) against the fake NIC: handles, every entry point's
// results and errors, extensible structs, and that no exception crosses.
#include "c_api.hpp"

#include <gtest/gtest.h>
#include <odp/odp.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/fake_nic.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "c_flow.h"
#include "test_support.hpp"

namespace {

using odp::test::MiB;

// The handles as unique_ptrs, so that a failed assertion leaks nothing.
struct DeviceCloser {
    void operator()(odp_device* device) const noexcept { odp_device_close(device); }
};
struct RegionCloser {
    void operator()(odp_region* region) const noexcept { odp_region_close(region); }
};
struct StringFree {
    void operator()(char* text) const noexcept { std::free(text); }
};
using DeviceHandle = std::unique_ptr<odp_device, DeviceCloser>;
using RegionHandle = std::unique_ptr<odp_region, RegionCloser>;
using CString = std::unique_ptr<char, StringFree>;

struct CDevice {
    std::shared_ptr<odp::FakeNic> fake;
    DeviceHandle handle;
};

CDevice make_c_device(odp::DeviceCaps caps = {}, std::uint64_t budget = 64 * MiB) {
    auto device = odp::test::make_device(budget, std::move(caps));
    return {device.fake, DeviceHandle(odp::c_api::wrap(device.device))};
}

odp_region_attr region_attr(odp_mode mode, std::size_t chunk = 2 * MiB) {
    odp_region_attr attr;
    odp_region_attr_init(&attr);
    attr.mode = mode;
    attr.monitor = ODP_MONITOR_NONE;  // the tests report changes themselves
    attr.chunk_size = chunk;
    return attr;
}

RegionHandle register_region(odp_device* device, void* address, std::size_t length, unsigned access,
                             odp_mode mode, std::size_t chunk = 2 * MiB) {
    const odp_region_attr attr = region_attr(mode, chunk);
    odp_region* region = nullptr;
    const int rc = odp_region_register(device, address, length, access, &attr, &region);
    EXPECT_EQ(rc, 0) << odp_last_error();
    return RegionHandle(region);
}

std::string take(char* text) {
    const CString owned(text);
    return owned ? std::string(owned.get()) : std::string();
}

TEST(CApi, AFailedOpenGivesTheErrnoAndTheTextOfOdpError) {
    // No such device anywhere (ENODEV), or no RDMA stack at all on a test
    // machine (ENOSYS): the C API says what the C++ API throws.
    int cpp_errno = 0;
    std::string cpp_message;
    try {
        (void)odp::Device::open({.name = "odp-no-such-device", .max_pinned_bytes = {}});
    } catch (const odp::Error& error) {
        cpp_errno = error.errno_value();
        cpp_message = error.what();
    }
    ASSERT_NE(cpp_errno, 0);
    odp_device_attr attr;
    odp_device_attr_init(&attr);
    attr.name = "odp-no-such-device";
    odp_device* device = nullptr;
    EXPECT_EQ(odp_device_open(&attr, &device), -cpp_errno);
    EXPECT_EQ(device, nullptr) << "outputs are written only on success";
    EXPECT_EQ(std::string(odp_last_error()), cpp_message);
}

TEST(CApi, CapabilitiesBudgetAndNames) {
    const CDevice dev = make_c_device(odp::test::native_caps(true, false), 48 * MiB);
    EXPECT_STREQ(odp_device_name(dev.handle.get()), "fake0");
    EXPECT_EQ(odp_device_context(dev.handle.get()), nullptr) << "a fake NIC has no verbs context";
    EXPECT_EQ(odp_device_pd(dev.handle.get()), nullptr);

    odp_device_caps caps;
    odp_device_caps_init(&caps);
    ASSERT_EQ(odp_device_query_caps(dev.handle.get(), &caps), 0) << odp_last_error();
    EXPECT_EQ(caps.size, sizeof caps);
    EXPECT_TRUE(caps.odp);
    EXPECT_TRUE(caps.implicit_odp);
    EXPECT_FALSE(caps.prefetch);
    EXPECT_TRUE(caps.native_data_ok);
    EXPECT_EQ(caps.rc_ops, ODP_OP_SEND | ODP_OP_RECV | ODP_OP_WRITE | ODP_OP_READ | ODP_OP_ATOMIC |
                               ODP_OP_SRQ_RECV);
    EXPECT_EQ(caps.ud_ops, 0U);
    ASSERT_NE(caps.native_data_check, nullptr);
    EXPECT_STREQ(caps.native_data_check, dev.fake->caps().native_data_check.c_str());
    EXPECT_EQ(take([&] {
                  char* text = nullptr;
                  EXPECT_EQ(odp_device_describe(dev.handle.get(), &text), 0);
                  return text;
              }()),
              odp::to_string(dev.fake->caps()));

    odp_device_budget budget;
    odp_device_budget_init(&budget);
    ASSERT_EQ(odp_device_query_budget(dev.handle.get(), &budget), 0) << odp_last_error();
    EXPECT_EQ(budget.max_pinned_bytes, 48 * MiB);
    EXPECT_EQ(budget.pinned_bytes, 0U);
    EXPECT_STREQ(budget.source, "explicit (48 MiB)");
}

TEST(CApi, RegistersInEveryModeAndSaysWhichItPicked) {
    const CDevice plain = make_c_device();
    const CDevice native = make_c_device(odp::test::native_caps());
    odp::test::Mapping buffer{4 * MiB};
    const unsigned access = ODP_ACCESS_LOCAL_WRITE | ODP_ACCESS_REMOTE_READ;
    struct Case {
        odp_device* device;
        odp_mode asked;
        odp_mode got;
    };
    for (const Case& c : {Case{plain.handle.get(), ODP_MODE_PINNED, ODP_MODE_PINNED},
                          Case{plain.handle.get(), ODP_MODE_EMULATED, ODP_MODE_EMULATED},
                          Case{plain.handle.get(), ODP_MODE_AUTO, ODP_MODE_EMULATED},
                          Case{native.handle.get(), ODP_MODE_NATIVE, ODP_MODE_NATIVE},
                          Case{native.handle.get(), ODP_MODE_AUTO, ODP_MODE_NATIVE}}) {
        SCOPED_TRACE(odp_mode_name(c.asked));
        const RegionHandle region =
            register_region(c.device, buffer.data(), buffer.size(), access, c.asked);
        ASSERT_NE(region, nullptr);
        odp_region_info info;
        odp_region_info_init(&info);
        ASSERT_EQ(odp_region_query(region.get(), &info), 0) << odp_last_error();
        EXPECT_EQ(info.mode, c.got);
        EXPECT_EQ(info.access, access);
        EXPECT_EQ(info.begin, buffer.address());
        EXPECT_EQ(info.end, buffer.address() + buffer.size());
        EXPECT_EQ(info.chunk_size, c.got == ODP_MODE_EMULATED ? 2 * MiB : buffer.size());
        EXPECT_FALSE(info.implicit);
        char* text = nullptr;
        ASSERT_EQ(odp_region_describe(region.get(), &text), 0);
        EXPECT_EQ(take(text), region->region.describe());
        ASSERT_EQ(odp_region_monitor(region.get(), &text), 0);
        EXPECT_EQ(take(text), region->region.monitor());
    }
}

TEST(CApi, NativeWithoutDeviceSupportIsRefusedWithTheReason) {
    const CDevice dev = make_c_device();
    odp::test::Mapping buffer(2 * MiB);
    const odp_region_attr attr = region_attr(ODP_MODE_NATIVE);
    odp_region* region = nullptr;
    EXPECT_EQ(odp_region_register(dev.handle.get(), buffer.data(), buffer.size(),
                                  ODP_ACCESS_LOCAL_WRITE, &attr, &region),
              -EOPNOTSUPP);
    EXPECT_EQ(region, nullptr);
    EXPECT_NE(std::string(odp_last_error()).find("has no native ODP"), std::string::npos)
        << odp_last_error();
}

TEST(CApi, WholeAddressSpace) {
    const CDevice dev = make_c_device();
    odp_region_attr attr = region_attr(ODP_MODE_AUTO);
    odp_region* raw = nullptr;
    ASSERT_EQ(
        odp_region_register_address_space(dev.handle.get(), ODP_ACCESS_LOCAL_WRITE, &attr, &raw), 0)
        << odp_last_error();
    const RegionHandle region(raw);
    odp_region_info info;
    odp_region_info_init(&info);
    ASSERT_EQ(odp_region_query(region.get(), &info), 0);
    EXPECT_TRUE(info.implicit);
    EXPECT_EQ(info.mode, ODP_MODE_EMULATED);

    // Any mapping of the process translates.
    odp::test::Mapping buffer(2 * MiB);
    ibv_sge sge{};
    std::size_t count = 0;
    odp_lease* lease = nullptr;
    ASSERT_EQ(odp_region_translate(region.get(), buffer.data() + 100, 200, &sge, 1, &count, &lease),
              0)
        << odp_last_error();
    EXPECT_EQ(count, 1U);
    EXPECT_EQ(sge.addr, buffer.address() + 100);
    EXPECT_TRUE(dev.fake->covers(sge.lkey, sge.addr, sge.length));
    odp_lease_release(lease, nullptr);

    attr.mode = ODP_MODE_PINNED;
    EXPECT_EQ(
        odp_region_register_address_space(dev.handle.get(), ODP_ACCESS_LOCAL_WRITE, &attr, &raw),
        -EINVAL);
    EXPECT_NE(std::string(odp_last_error()).find("cannot be pinned"), std::string::npos);
}

TEST(CApi, TranslateFillsTheCallersSgesAndLeasesThem) {
    const CDevice dev = make_c_device();
    odp::test::Mapping buffer(6 * MiB);
    const RegionHandle region = register_region(dev.handle.get(), buffer.data(), buffer.size(),
                                                ODP_ACCESS_LOCAL_WRITE, ODP_MODE_EMULATED);
    std::vector<ibv_sge> sges(3);
    std::size_t count = 0;
    odp_lease* lease = nullptr;
    // More SGEs needed than given: refused before anything is registered.
    EXPECT_EQ(odp_region_translate(region.get(), buffer.data() + MiB, 4 * MiB, sges.data(), 2,
                                   &count, &lease),
              -E2BIG);
    EXPECT_EQ(dev.fake->counters().registrations, 0U);
    EXPECT_NE(std::string(odp_last_error()).find("max_sge is 2"), std::string::npos)
        << odp_last_error();

    ASSERT_EQ(odp_region_translate(region.get(), buffer.data() + MiB, 4 * MiB, sges.data(),
                                   sges.size(), &count, &lease),
              0)
        << odp_last_error();
    ASSERT_EQ(count, 3U);
    EXPECT_EQ(sges[0].addr, buffer.address() + MiB);
    EXPECT_EQ(sges[0].length, MiB);
    EXPECT_EQ(sges[1].length, 2 * MiB);
    EXPECT_EQ(sges[2].length, MiB);
    for (std::size_t i = 0; i < count; ++i) {
        EXPECT_TRUE(dev.fake->covers(sges[i].lkey, sges[i].addr, sges[i].length)) << i;
    }
    const std::uint32_t lkey = sges[0].lkey;
    bool changed = true;
    EXPECT_EQ(odp_lease_release(lease, &changed), 0);
    EXPECT_FALSE(changed);
    EXPECT_TRUE(dev.fake->covers(lkey, buffer.address() + MiB, MiB)) << "cached after release";
}

TEST(CApi, ALeaseOutlivesItsRegionAndDeviceHandles) {
    CDevice dev = make_c_device();
    odp::test::Mapping buffer(2 * MiB);
    RegionHandle region = register_region(dev.handle.get(), buffer.data(), buffer.size(),
                                          ODP_ACCESS_LOCAL_WRITE, ODP_MODE_EMULATED);
    ibv_sge sge{};
    std::size_t count = 0;
    odp_lease* lease = nullptr;
    ASSERT_EQ(odp_region_translate(region.get(), buffer.data(), 4096, &sge, 1, &count, &lease), 0);
    region.reset();
    dev.handle.reset();
    EXPECT_TRUE(dev.fake->covers(sge.lkey, sge.addr, sge.length)) << "held by the lease";
    bool changed = true;
    EXPECT_EQ(odp_lease_release(lease, &changed), 0);
    EXPECT_FALSE(changed);
    EXPECT_TRUE(dev.fake->live_registrations().empty()) << "the last release deregisters";
}

// A fake device with a 4 MiB emulated region (2 MiB chunks, no monitor).
class CApiEmulated : public ::testing::Test {
  protected:
    const CDevice dev = make_c_device();
    odp::test::Mapping buffer{4 * MiB};
    const RegionHandle region = register_region(dev.handle.get(), buffer.data(), buffer.size(),
                                                ODP_ACCESS_LOCAL_WRITE, ODP_MODE_EMULATED);
    ibv_sge sge{};
    std::size_t count = 0;
    odp_lease* lease = nullptr;
};

TEST_F(CApiEmulated, ReleaseReportsAChangeUnderTheLease) {
    ASSERT_EQ(odp_region_translate(region.get(), buffer.data(), 8192, &sge, 1, &count, &lease), 0);
    ASSERT_EQ(
        odp_region_invalidate(region.get(), buffer.data() + 4096, 4096, ODP_INVALIDATION_UNMAP), 0);
    bool changed = false;
    EXPECT_EQ(odp_lease_release(lease, &changed), 0);
    EXPECT_TRUE(changed);

    // The chunk is registered again over the current pages; no change since.
    ASSERT_EQ(odp_region_translate(region.get(), buffer.data(), 8192, &sge, 1, &count, &lease), 0);
    EXPECT_EQ(odp_lease_release(lease, &changed), 0);
    EXPECT_FALSE(changed);
    EXPECT_EQ(dev.fake->counters().registrations, 2U);

    EXPECT_EQ(odp_region_invalidate(region.get(), buffer.data(), 4096,
                                    static_cast<odp_invalidation_reason>(42)),
              -EINVAL);
}

struct Changes {
    int calls = 0;
    uintptr_t begin = 0;
    uintptr_t end = 0;
    odp_invalidation_reason reason = ODP_INVALIDATION_OTHER;
};

void record_change(void* context, uintptr_t begin, uintptr_t end, odp_invalidation_reason reason) {
    auto* changes = static_cast<Changes*>(context);
    ++changes->calls;
    changes->begin = begin;
    changes->end = end;
    changes->reason = reason;
}

TEST(CApi, ExposeGivesSegmentsAndCallsBackOnAChange) {
    const CDevice dev = make_c_device();
    odp::test::Mapping buffer(8 * MiB);
    const RegionHandle region =
        register_region(dev.handle.get(), buffer.data(), buffer.size(),
                        ODP_ACCESS_LOCAL_WRITE | ODP_ACCESS_REMOTE_WRITE, ODP_MODE_EMULATED);
    Changes changes;
    odp_exposure* exposure = nullptr;
    ASSERT_EQ(odp_region_expose(region.get(), buffer.data() + MiB, 2 * MiB, record_change, &changes,
                                &exposure),
              0)
        << odp_last_error();
    std::size_t count = 0;
    const odp_segment* segments = odp_exposure_segments(exposure, &count);
    ASSERT_EQ(count, 2U);
    EXPECT_EQ(segments[0].address, buffer.address() + MiB);
    EXPECT_EQ(segments[0].length, MiB);
    EXPECT_EQ(segments[1].address, buffer.address() + 2 * MiB);
    EXPECT_EQ(segments[1].length, MiB);
    for (std::size_t i = 0; i < count; ++i) {
        EXPECT_TRUE(dev.fake->covers(segments[i].rkey, segments[i].address, segments[i].length));
    }
    EXPECT_FALSE(odp_exposure_changed(exposure));

    ASSERT_EQ(odp_region_invalidate(region.get(), buffer.data() + 2 * MiB, 4096,
                                    ODP_INVALIDATION_MIGRATION),
              0);
    EXPECT_EQ(changes.calls, 1);
    EXPECT_EQ(changes.begin, buffer.address() + 2 * MiB);
    EXPECT_EQ(changes.end, buffer.address() + 2 * MiB + 4096);
    EXPECT_EQ(changes.reason, ODP_INVALIDATION_MIGRATION);
    EXPECT_TRUE(odp_exposure_changed(exposure));
    bool changed = false;
    EXPECT_EQ(odp_exposure_release(exposure, &changed), 0);
    EXPECT_TRUE(changed);
    odp_region_invalidate(region.get(), buffer.data() + MiB, 4096, ODP_INVALIDATION_UNMAP);
    EXPECT_EQ(changes.calls, 1) << "no callback after release";

    // Without a callback, and without remote access.
    ASSERT_EQ(odp_region_expose(region.get(), buffer.data(), 4096, nullptr, nullptr, &exposure), 0);
    EXPECT_EQ(odp_exposure_release(exposure, &changed), 0);
    EXPECT_FALSE(changed);
    const RegionHandle local = register_region(dev.handle.get(), buffer.data(), buffer.size(),
                                               ODP_ACCESS_LOCAL_WRITE, ODP_MODE_EMULATED);
    exposure = nullptr;
    EXPECT_EQ(odp_region_expose(local.get(), buffer.data(), 4096, nullptr, nullptr, &exposure),
              -EACCES);
    EXPECT_EQ(exposure, nullptr);
}

TEST(CApi, PrefetchAndCollect) {
    const CDevice native = make_c_device(odp::test::native_caps());
    const CDevice plain = make_c_device();
    odp::test::Mapping buffer{4 * MiB};
    const RegionHandle native_region = register_region(
        native.handle.get(), buffer.data(), buffer.size(), ODP_ACCESS_LOCAL_WRITE, ODP_MODE_NATIVE);
    EXPECT_EQ(odp_region_prefetch(native_region.get(), buffer.data(), MiB, ODP_PREFETCH_READ), 0)
        << odp_last_error();
    EXPECT_EQ(native.fake->counters().advises, 1U);
    EXPECT_EQ(
        odp_region_prefetch(native_region.get(), buffer.data(), MiB, static_cast<odp_prefetch>(9)),
        -EINVAL);

    const RegionHandle emulated = register_region(plain.handle.get(), buffer.data(), buffer.size(),
                                                  ODP_ACCESS_LOCAL_WRITE, ODP_MODE_EMULATED);
    ASSERT_EQ(odp_region_prefetch(emulated.get(), buffer.data(), 3 * MiB, ODP_PREFETCH_WRITE), 0)
        << odp_last_error();
    EXPECT_EQ(plain.fake->live_registrations().size(), 2U) << "both chunks registered";
    // A stale chunk nobody leases goes at collect().
    ASSERT_EQ(odp_region_invalidate(emulated.get(), buffer.data(), 4096, ODP_INVALIDATION_CLEAR),
              0);
    EXPECT_EQ(plain.fake->live_registrations().size(), 2U);
    EXPECT_EQ(odp_region_collect(emulated.get()), 0);
    EXPECT_EQ(plain.fake->live_registrations().size(), 1U);
}

TEST_F(CApiEmulated, StatisticsAndTheirJsonAreTheCppOnes) {
    for (int i = 0; i < 3; ++i) {
        ASSERT_EQ(odp_region_translate(region.get(), buffer.data(), 4096, &sge, 1, &count, &lease),
                  0);
        odp_lease_release(lease, nullptr);
    }
    odp_region_invalidate(region.get(), buffer.data(), 4096, ODP_INVALIDATION_PROTECTION);

    const odp::Stats expected = region->region.stats();
    odp_stats stats;
    odp_stats_init(&stats);
    ASSERT_EQ(odp_region_stats(region.get(), &stats), 0);
    EXPECT_EQ(stats.hits, expected.hits);
    EXPECT_EQ(stats.misses, expected.misses);
    EXPECT_EQ(stats.chunk_faults, 1U);
    EXPECT_EQ(stats.pinned_bytes, 2 * MiB);
    EXPECT_EQ(stats.invalidations[ODP_INVALIDATION_PROTECTION], 1U);
    EXPECT_EQ(stats.invalidations[ODP_INVALIDATION_SLOTS - 1], 0U);
    EXPECT_EQ(stats.chunks_faulted_ahead, expected.chunks_faulted_ahead);
    EXPECT_EQ(stats.fault_ahead_hits, expected.fault_ahead_hits);
    char* json = nullptr;
    ASSERT_EQ(odp_stats_json(&stats, &json), 0);
    EXPECT_EQ(take(json), odp::to_json(expected));

    odp_stats totals;
    odp_stats_init(&totals);
    ASSERT_EQ(odp_device_stats(dev.handle.get(), &totals), 0);
    EXPECT_EQ(totals.chunk_faults, 1U);
    EXPECT_EQ(totals.pinned_bytes, 2 * MiB);
}

TEST(CApi, ExtensibleStructsCheckTheirSize) {
    const CDevice dev = make_c_device();
    odp::test::Mapping buffer(2 * MiB);
    odp_region* region = nullptr;

    // Too small: not initialised.
    odp_region_attr attr = region_attr(ODP_MODE_EMULATED);
    attr.size = sizeof(size_t);
    EXPECT_EQ(odp_region_register(dev.handle.get(), buffer.data(), buffer.size(),
                                  ODP_ACCESS_LOCAL_WRITE, &attr, &region),
              -EINVAL);
    EXPECT_NE(std::string(odp_last_error()).find("odp_region_attr.size is 8"), std::string::npos)
        << odp_last_error();

    // A newer caller's larger struct: fine while what this library does not
    // know is zero, -E2BIG otherwise.
    struct Newer {
        odp_region_attr known;
        std::uint64_t added_later;
    };
    Newer newer{region_attr(ODP_MODE_EMULATED), 0};
    newer.known.size = sizeof newer;
    ASSERT_EQ(odp_region_register(dev.handle.get(), buffer.data(), buffer.size(),
                                  ODP_ACCESS_LOCAL_WRITE, &newer.known, &region),
              0)
        << odp_last_error();
    odp_region_close(region);
    newer.added_later = 1;
    region = nullptr;
    EXPECT_EQ(odp_region_register(dev.handle.get(), buffer.data(), buffer.size(),
                                  ODP_ACCESS_LOCAL_WRITE, &newer.known, &region),
              -E2BIG);
    EXPECT_EQ(region, nullptr);

    // Outputs: a larger struct keeps its size and the bytes past ours.
    struct NewerStats {
        odp_stats known;
        std::uint64_t added_later;
    };
    NewerStats stats{};
    odp_stats_init(&stats.known);
    stats.known.size = sizeof stats;
    stats.added_later = 0xabcdef;
    ASSERT_EQ(odp_device_stats(dev.handle.get(), &stats.known), 0);
    EXPECT_EQ(stats.known.size, sizeof stats);
    EXPECT_EQ(stats.added_later, 0xabcdefU);
    // As an input (JSON), counters this library does not know are left out.
    char* json = nullptr;
    stats.added_later = 7;
    ASSERT_EQ(odp_stats_json(&stats.known, &json), 0) << odp_last_error();
    EXPECT_EQ(take(json), odp::to_json(dev.handle->device->stats()));
    odp_stats zero{};
    EXPECT_EQ(odp_device_stats(dev.handle.get(), &zero), -EINVAL) << "size 0";
    attr = region_attr(ODP_MODE_EMULATED);
    attr.size = 1 << 20;
    EXPECT_EQ(odp_region_register(dev.handle.get(), buffer.data(), buffer.size(),
                                  ODP_ACCESS_LOCAL_WRITE, &attr, &region),
              -EINVAL)
        << "a size no struct will ever have: not initialised";

    // NULL attributes mean the defaults.
    ASSERT_EQ(odp_region_register(dev.handle.get(), buffer.data(), buffer.size(),
                                  ODP_ACCESS_LOCAL_WRITE, nullptr, &region),
              0);
    odp_region_info info;
    odp_region_info_init(&info);
    ASSERT_EQ(odp_region_query(region, &info), 0);
    EXPECT_EQ(info.mode, ODP_MODE_EMULATED) << "Auto without native ODP";
    odp_region_close(region);
}

TEST(CApi, BadArgumentsAreErrorsNotCrashes) {
    const CDevice dev = make_c_device();
    odp::test::Mapping buffer(2 * MiB);
    odp_region* region = nullptr;
    EXPECT_EQ(odp_region_register(nullptr, buffer.data(), 4096, 0, nullptr, &region), -EINVAL);
    EXPECT_STREQ(odp_last_error(), "odp_region_register: device is NULL: Invalid argument");
    EXPECT_EQ(odp_region_register(dev.handle.get(), buffer.data(), 0, 0, nullptr, &region),
              -EINVAL);
    EXPECT_EQ(odp_region_register(dev.handle.get(), buffer.data(), 4096, 1U << 7, nullptr, &region),
              -EINVAL);
    EXPECT_NE(std::string(odp_last_error()).find("ODP_ACCESS_"), std::string::npos);
    odp_region_attr attr = region_attr(static_cast<odp_mode>(17));
    EXPECT_EQ(odp_region_register(dev.handle.get(), buffer.data(), 4096, 0, &attr, &region),
              -EINVAL);
    attr = region_attr(ODP_MODE_EMULATED, 12345);
    EXPECT_EQ(odp_region_register(dev.handle.get(), buffer.data(), 4096, 0, &attr, &region),
              -EINVAL);
    EXPECT_EQ(region, nullptr);

    ibv_sge sge{};
    std::size_t count = 0;
    odp_lease* lease = nullptr;
    EXPECT_EQ(odp_region_translate(nullptr, buffer.data(), 1, &sge, 1, &count, &lease), -EINVAL);
    const RegionHandle held = register_region(dev.handle.get(), buffer.data(), buffer.size(),
                                              ODP_ACCESS_LOCAL_WRITE, ODP_MODE_EMULATED);
    EXPECT_EQ(odp_region_translate(held.get(), buffer.data(), 1, nullptr, 1, &count, &lease),
              -EINVAL);
    EXPECT_EQ(
        odp_region_translate(held.get(), buffer.data() + buffer.size(), 1, &sge, 1, &count, &lease),
        -EINVAL)
        << "outside the region";
    EXPECT_EQ(lease, nullptr);

    // Destroying NULL is a no-op, as free(NULL) is.
    odp_device_close(nullptr);
    odp_region_close(nullptr);
    EXPECT_EQ(odp_lease_release(nullptr, nullptr), 0);
    EXPECT_EQ(odp_exposure_release(nullptr, nullptr), 0);
}

// A NIC whose registrations throw what the test asks for.
class ThrowingNic final : public odp::Nic {
  public:
    enum class What { BadAlloc, Runtime, NotAnException };
    explicit ThrowingNic(What what) : what_(what) {}
    [[nodiscard]] std::string_view name() const noexcept override { return "throwing0"; }
    [[nodiscard]] const odp::DeviceCaps& caps() const noexcept override { return caps_; }
    odp::NicMr register_memory(std::uintptr_t, std::size_t, int) override {
        switch (what_) {
            case What::BadAlloc:
                throw std::bad_alloc();
            case What::Runtime:
                throw std::runtime_error("a bug somewhere");
            case What::NotAnException:
                throw 42;
        }
        return {};
    }
    void deregister(const odp::NicMr&) noexcept override {}
    void advise(odp::Prefetch, std::span<const ibv_sge>) override {}
    [[nodiscard]] bool pins_memory() const noexcept override { return false; }
    [[nodiscard]] ibv_context* context() const noexcept override { return nullptr; }
    [[nodiscard]] ibv_pd* pd() const noexcept override { return nullptr; }

  private:
    What what_;
    odp::DeviceCaps caps_;
};

TEST(CApi, NoExceptionCrossesIntoC) {
    odp::test::Mapping buffer(2 * MiB);
    struct Case {
        ThrowingNic::What what;
        int rc;
        const char* message;
    };
    for (const Case& c :
         {Case{ThrowingNic::What::BadAlloc, -ENOMEM, "out of memory"},
          Case{ThrowingNic::What::Runtime, -EIO, "a bug somewhere"},
          Case{ThrowingNic::What::NotAnException, -EIO, "unknown C++ exception inside libodp"}}) {
        const DeviceHandle device(
            odp::c_api::wrap(odp::Device::open(std::make_unique<ThrowingNic>(c.what))));
        odp_region* region = nullptr;
        // Pinned: the registration happens inside odp_region_register.
        const odp_region_attr attr = region_attr(ODP_MODE_PINNED);
        EXPECT_EQ(odp_region_register(device.get(), buffer.data(), buffer.size(),
                                      ODP_ACCESS_LOCAL_WRITE, &attr, &region),
                  c.rc);
        EXPECT_STREQ(odp_last_error(), c.message);
        EXPECT_EQ(region, nullptr);
    }
}

TEST(CApi, TheLastErrorBelongsToItsThread) {
    odp_mode mode{};
    EXPECT_EQ(odp_mode_parse("fast", &mode), -EINVAL);
    const std::string mine = odp_last_error();
    EXPECT_NE(mine.find("unknown mode 'fast'"), std::string::npos) << mine;
    std::string theirs;
    std::thread([&] {
        theirs = odp_last_error();
        odp_mode other{};
        (void)odp_mode_parse("slow", &other);
    }).join();
    EXPECT_EQ(theirs, "") << "a new thread starts without an error";
    EXPECT_EQ(std::string(odp_last_error()), mine);
    EXPECT_EQ(odp_mode_parse("native", &mode), 0);
    EXPECT_EQ(mode, ODP_MODE_NATIVE);
    EXPECT_EQ(std::string(odp_last_error()), mine) << "success leaves it, like errno";
}

TEST(CApi, NamesMatchTheCppApi) {
    for (const odp_mode mode :
         {ODP_MODE_AUTO, ODP_MODE_PINNED, ODP_MODE_NATIVE, ODP_MODE_EMULATED}) {
        const char* name = odp_mode_name(mode);
        ASSERT_NE(name, nullptr);
        odp_mode parsed{};
        EXPECT_EQ(odp_mode_parse(name, &parsed), 0);
        EXPECT_EQ(parsed, mode);
    }
    EXPECT_STREQ(odp_mode_name(ODP_MODE_EMULATED), "emulated");
    EXPECT_EQ(odp_mode_name(static_cast<odp_mode>(4)), nullptr);
    EXPECT_STREQ(odp_monitor_name(ODP_MONITOR_USERFAULTFD), "userfaultfd");
    EXPECT_STREQ(odp_monitor_name(ODP_MONITOR_NONE), "none");
    EXPECT_EQ(odp_monitor_name(static_cast<odp_monitor>(4)), nullptr);
    for (int reason = 0; reason < static_cast<int>(odp::invalidation_reason_count); ++reason) {
        EXPECT_EQ(
            std::string(odp_invalidation_reason_name(static_cast<odp_invalidation_reason>(reason))),
            odp::to_string(static_cast<odp::InvalidationReason>(reason)));
    }
    EXPECT_EQ(odp_invalidation_reason_name(static_cast<odp_invalidation_reason>(7)), nullptr);
}

TEST(CApi, AFlowWrittenInC) {
    const CDevice dev = make_c_device();
    odp::test::Mapping buffer{4 * MiB};
    char failure[256] = "";
    EXPECT_EQ(
        c_flow_emulated(dev.handle.get(), buffer.data(), buffer.size(), failure, sizeof failure), 0)
        << failure;
    EXPECT_TRUE(dev.fake->live_registrations().empty()) << "c_flow closed its region";
}

// odp_region_attr.fault_ahead and odp_region_prefetch_async, used from C.
TEST(CApi, FaultAheadFromC) {
    const CDevice dev = make_c_device();
    odp::test::Mapping buffer{8 * MiB};
    char failure[256] = "";
    const long patience_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(odp::test::patience).count();
    EXPECT_EQ(c_flow_fault_ahead(dev.handle.get(), buffer.data(), buffer.size(), patience_ms,
                                 failure, sizeof failure),
              0)
        << failure;
    EXPECT_TRUE(dev.fake->live_registrations().empty()) << "c_flow closed its region";
}

}  // namespace
