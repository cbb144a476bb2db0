// The pinned budget: its default (RLIMIT_MEMLOCK unless CAP_IPC_LOCK), LRU
// eviction, back-pressure, requests that can never fit.
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <odp/device.hpp>
#include <odp/region.hpp>

#include "region_core.hpp"
#include "test_support.hpp"

namespace odp {
namespace {

using test::expect_error;
using test::MiB;

// Runs in a child (a death-test fork) that is held to RLIMIT_MEMLOCK whatever
// this process is: CAP_IPC_LOCK dropped from the effective set, a finite soft
// limit. Each failed check prints why and exits nonzero.
void check_memlock_limit_is_never_exceeded() {
    const auto check = [](bool ok, const std::string& what) {
        if (!ok) {
            std::fprintf(stderr, "FAILED: %s\n", what.c_str());
            std::exit(1);
        }
    };
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    std::array<__user_cap_data_struct, _LINUX_CAPABILITY_U32S_3> caps{};
    check(syscall(SYS_capget, &header, caps.data()) == 0, "capget");
    caps[CAP_TO_INDEX(CAP_IPC_LOCK)].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
    check(syscall(SYS_capset, &header, caps.data()) == 0, "capset without CAP_IPC_LOCK");
    rlimit limit{};
    check(getrlimit(RLIMIT_MEMLOCK, &limit) == 0, "getrlimit");
    if (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur > 64 * MiB) {
        limit.rlim_cur = 8 * MiB;  // lowering the soft limit needs no privilege
        check(setrlimit(RLIMIT_MEMLOCK, &limit) == 0, "setrlimit(RLIMIT_MEMLOCK, 8 MiB)");
    }
    check(!detail::probe_pin_limits().ipc_lock, "CAP_IPC_LOCK is still effective");
    const auto pinning_fake = [] {
        auto fake = std::make_unique<FakeNic>();
        fake->set_pins_memory(true);  // like a real NIC
        return fake;
    };
    const auto refused = [&](const DeviceOptions& options) -> std::string {
        try {
            (void)Device::open(pinning_fake(), options);
        } catch (const Error& error) {
            return error.errno_value() == EINVAL ? std::string(error.what()) : std::string();
        }
        return {};
    };
    DeviceOptions options;
    options.max_pinned_bytes = limit.rlim_cur + 4096;
    const std::string message = refused(options);
    check(
        message.find("RLIMIT_MEMLOCK") != std::string::npos,
        "a budget above RLIMIT_MEMLOCK is refused with EINVAL naming it: got \"" + message + "\"");
    options.max_pinned_bytes = limit.rlim_cur;
    check(Device::open(pinning_fake(), options)->max_pinned_bytes() == limit.rlim_cur,
          "a budget of exactly RLIMIT_MEMLOCK is taken");
    // A fake that pins nothing is not bound by the limit (host tests).
    options.max_pinned_bytes = limit.rlim_cur + 4096;
    check(Device::open(std::make_unique<FakeNic>(), options)->max_pinned_bytes() ==
              limit.rlim_cur + 4096,
          "a device that pins nothing takes a budget above the limit");
    options.max_pinned_bytes = 0;
    check(!refused(options).empty(), "a zero budget is refused with EINVAL");
    std::exit(0);
}

TEST(Budget, NeverAboveMemlockLimit) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(check_memlock_limit_is_never_exceeded(), ::testing::ExitedWithCode(0), "");
}

class Budget3Chunks : public ::testing::Test {
  protected:
    test::FakeDevice dev = test::make_device(6 * MiB);
    test::Mapping buffer{16 * MiB};
    Region region = dev.device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                                test::emulated());

    Lease chunk(std::size_t index) { return region.translate(buffer.data() + index * 2 * MiB, 64); }
    bool registered(std::size_t index) const {
        for (const Range& range : dev.fake->live_registrations()) {
            if (range.begin == buffer.address() + index * 2 * MiB) {
                return true;
            }
        }
        return false;
    }
};

TEST_F(Budget3Chunks, EvictsLeastRecentlyUsedUnleasedChunk) {
    chunk(0).release();
    chunk(1).release();
    chunk(2).release();
    chunk(0).release();  // 1 is now the least recently used
    EXPECT_EQ(dev.device->pinned_bytes(), 6 * MiB);
    Lease fourth = chunk(3);
    EXPECT_TRUE(registered(0));
    EXPECT_FALSE(registered(1));
    EXPECT_TRUE(registered(2));
    EXPECT_TRUE(registered(3));
    EXPECT_EQ(region.stats().evictions, 1U);
    EXPECT_EQ(dev.device->pinned_bytes(), 6 * MiB);
    EXPECT_EQ(dev.device->stats().peak_pinned_bytes, 6 * MiB) << "never above the budget";
    chunk(4).release();  // evicts 2 (0 was used after 2)
    EXPECT_FALSE(registered(2));
    EXPECT_TRUE(registered(0));
}

TEST_F(Budget3Chunks, LeasedChunksAreNeverEvicted) {
    Lease a = chunk(0);
    Lease b = chunk(1);
    chunk(2).release();
    chunk(3).release();  // must evict 2, the only unleased one
    EXPECT_TRUE(registered(0));
    EXPECT_TRUE(registered(1));
    EXPECT_FALSE(registered(2));
    EXPECT_TRUE(dev.fake->covers(a.sges()[0].lkey, a.sges()[0].addr, 64));
}

TEST_F(Budget3Chunks, BackPressureWhenEverythingIsLeased) {
    Lease a = chunk(0);
    Lease b = chunk(1);
    Lease c = chunk(2);
    try {
        (void)chunk(3);
        FAIL() << "expected BackPressure";
    } catch (const BackPressure& error) {
        EXPECT_EQ(error.errno_value(), EAGAIN);
        EXPECT_NE(std::string(error.what()).find("release leases"), std::string::npos)
            << error.what();
    }
    EXPECT_EQ(region.stats().back_pressure, 1U);
    EXPECT_EQ(dev.device->pinned_bytes(), 6 * MiB);
    EXPECT_EQ(dev.fake->live_registrations().size(), 3U);
    // A multi-chunk request that does not fit gives back what it took.
    b.release();
    expect_error(EAGAIN, [&] { (void)region.translate(buffer.data() + 6 * MiB, 4 * MiB); });
    EXPECT_LE(dev.device->pinned_bytes(), 6 * MiB);
    EXPECT_EQ(dev.fake->live_registrations().size(), 3U);
    c.release();
    Lease fits = region.translate(buffer.data() + 6 * MiB, 4 * MiB);
    EXPECT_EQ(fits.sges().size(), 2U);
    EXPECT_EQ(dev.device->stats().peak_pinned_bytes, 6 * MiB);
}

TEST_F(Budget3Chunks, RequestLargerThanTheBudgetIsRefused) {
    test::FakeDevice small = test::make_device(MiB);
    Region big = small.device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                               test::emulated());
    const std::string message =
        expect_error(ENOBUFS, [&] { (void)big.translate(buffer.data(), 1); });
    EXPECT_NE(message.find("pinned budget is 1 MiB"), std::string::npos) << message;
}

TEST_F(Budget3Chunks, StaleChunksAreSweptBeforeEvicting) {
    chunk(0).release();
    chunk(1).release();
    chunk(2).release();
    region.invalidate(Range::from_length(buffer.address() + 4 * MiB, 1), InvalidationReason::Unmap);
    chunk(3).release();
    EXPECT_EQ(region.stats().evictions, 0U) << "the stale chunk made room";
    EXPECT_TRUE(registered(0));
    EXPECT_TRUE(registered(1));
    EXPECT_FALSE(registered(2));
}

TEST_F(Budget3Chunks, EvictionCrossesRegions) {
    test::Mapping other_buffer(4 * MiB);
    Region other = dev.device->register_region(other_buffer.data(), other_buffer.size(),
                                               Access::LocalWrite, test::emulated());
    other.translate(other_buffer.data(), 64).release();  // oldest
    chunk(0).release();
    chunk(1).release();
    chunk(2).release();  // evicts the other region's chunk
    EXPECT_EQ(other.stats().evictions, 1U);
    EXPECT_EQ(region.stats().evictions, 0U);
    EXPECT_EQ(dev.device->stats().evictions, 1U);
}

TEST_F(Budget3Chunks, PinnedRegionsCountAndCanEvictChunks) {
    chunk(0).release();
    chunk(1).release();
    test::Mapping pinned_buffer(4 * MiB);
    Region pinned = dev.device->register_region(pinned_buffer.data(), 4 * MiB, Access::LocalWrite,
                                                Mode::Pinned);
    EXPECT_EQ(region.stats().evictions, 1U);
    EXPECT_EQ(dev.device->pinned_bytes(), 6 * MiB);
    Lease hold = chunk(1);
    expect_error(EAGAIN, [&] {
        (void)dev.device->register_region(pinned_buffer.data(), 4096, Access::LocalWrite,
                                          Mode::Pinned);
    });
    hold.release();
    Lease again = chunk(0);  // evicts chunk 1, never the pinned region
    EXPECT_FALSE(registered(1));
    EXPECT_EQ(region.stats().evictions, 2U);
    EXPECT_EQ(pinned.translate(pinned_buffer.data(), 4 * MiB).sges().size(), 1U);
}

// The default budget follows what the kernel enforces (an injected probe).
TEST(Budget, RootWithIpcLockIsNotHeldToMemlock) {
    detail::PinLimits limits;
    limits.memlock = 8 * MiB;
    limits.physical_memory = 16384 * MiB;
    const detail::Budget plain = detail::choose_budget(limits, std::nullopt, true, "fake0");
    EXPECT_EQ(plain.bytes, 8 * MiB);
    EXPECT_NE(plain.source.find("RLIMIT_MEMLOCK (8 MiB)"), std::string::npos) << plain.source;
    limits.ipc_lock = true;
    const detail::Budget root = detail::choose_budget(limits, std::nullopt, true, "fake0");
    EXPECT_EQ(root.bytes, 8192 * MiB);
    EXPECT_NE(root.source.find("half of RAM"), std::string::npos) << root.source;
    EXPECT_NE(root.source.find("CAP_IPC_LOCK"), std::string::npos) << root.source;
    // Asking for more than RLIMIT_MEMLOCK is fine when it is not enforced ...
    EXPECT_EQ(detail::choose_budget(limits, 64 * MiB, true, "fake0").bytes, 64 * MiB);
    // ... and refused when it is.
    limits.ipc_lock = false;
    const std::string message = test::expect_error(
        EINVAL, [&] { (void)detail::choose_budget(limits, 64 * MiB, true, "fake0"); });
    EXPECT_NE(message.find("RLIMIT_MEMLOCK"), std::string::npos) << message;
    limits.memlock.reset();
    const detail::Budget unlimited = detail::choose_budget(limits, std::nullopt, true, "fake0");
    EXPECT_EQ(unlimited.bytes, 8192 * MiB);
    EXPECT_NE(unlimited.source.find("unlimited"), std::string::npos) << unlimited.source;
}

TEST(Budget, ThisProcessIsProbed) {
    const detail::PinLimits limits = detail::probe_pin_limits();
    EXPECT_GT(limits.physical_memory, 0U);
    const auto device = Device::open(std::make_unique<FakeNic>());
    EXPECT_EQ(device->max_pinned_bytes(),
              detail::choose_budget(limits, std::nullopt, false, "fake0").bytes);
}

// A pinned region that cannot fit beside the pinned regions already there
// says so (no lease release can help), and what to do.
TEST(Budget, PinnedRegionBeyondThePinnedRegionsIsRefusedClearly) {
    test::FakeDevice dev = test::make_device(8 * MiB);
    test::Mapping first(8 * MiB);
    test::Mapping second(MiB);
    const Region whole =
        dev.device->register_region(first.data(), first.size(), Access::LocalWrite, Mode::Pinned);
    const std::string message = expect_error(ENOBUFS, [&] {
        (void)dev.device->register_region(second.data(), second.size(), Access::LocalWrite,
                                          Mode::Pinned);
    });
    EXPECT_EQ(message.find("leased chunks"), std::string::npos) << message;
    EXPECT_NE(message.find("pinned regions already hold 8 MiB of the 8 MiB budget"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("Mode::Emulated"), std::string::npos) << message;
    EXPECT_EQ(dev.fake->live_registrations().size(), 1U);
    EXPECT_EQ(dev.device->pinned_bytes(), 8 * MiB);
}

// A lease that can never fit the budget: ENOBUFS before anything is
// registered, for each call that leases.
class BudgetTooSmall : public ::testing::Test {
  protected:
    test::FakeDevice dev = test::make_device(4 * MiB);
    test::Mapping buffer{8 * MiB};
    Region region = dev.device->register_region(
        buffer.data(), buffer.size(), Access::LocalWrite | Access::RemoteWrite, test::emulated());

    void expect_refused(const char* operation, const std::function<void()>& call) {
        const std::string message = expect_error(ENOBUFS, call);
        EXPECT_NE(message.find(std::string(operation) + "("), std::string::npos) << message;
        EXPECT_NE(message.find("up to 6 MiB pinned"), std::string::npos) << message;
        EXPECT_NE(message.find("pinned budget is 4 MiB"), std::string::npos) << message;
        EXPECT_NE(message.find("pieces of at most 4 MiB"), std::string::npos) << message;
        EXPECT_EQ(dev.fake->counters().registrations, 0U) << "refused up front";
        EXPECT_EQ(dev.device->pinned_bytes(), 0U);
    }
};

TEST_F(BudgetTooSmall, TranslateIsRefusedUpFront) {
    expect_refused("translate", [&] { (void)region.translate(buffer.data(), 6 * MiB); });
}

TEST_F(BudgetTooSmall, ExposeIsRefusedUpFront) {
    expect_refused("expose", [&] { (void)region.expose(buffer.data(), 6 * MiB); });
}

TEST_F(BudgetTooSmall, PrefetchIsRefusedUpFront) {
    expect_refused("prefetch", [&] { region.prefetch(buffer.data(), 6 * MiB); });
}

TEST_F(BudgetTooSmall, PinnedRegionsCountAgainstWhatCanFit) {
    test::Mapping pinned_buffer(2 * MiB);
    const Region pinned = dev.device->register_region(pinned_buffer.data(), 2 * MiB,
                                                      Access::LocalWrite, Mode::Pinned);
    const std::string message =
        expect_error(ENOBUFS, [&] { (void)region.translate(buffer.data(), 4 * MiB); });
    EXPECT_NE(message.find("pinned regions hold 2 MiB"), std::string::npos) << message;
    EXPECT_EQ(region.translate(buffer.data(), 2 * MiB).sges().size(), 1U);
}

}  // namespace
}  // namespace odp
