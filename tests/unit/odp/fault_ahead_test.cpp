// Fault-ahead (RegionOptions::fault_ahead) and Region::prefetch_async: chunks
// registered by the device's background thread. The thread serves requests
// in order, so a last request whose result a test waits for proves that
// everything requested before it was served. Run under TSan too.
#include <gtest/gtest.h>
#include <sched.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <odp/device.hpp>
#include <odp/region.hpp>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace odp {
namespace {

using test::MiB;
using test::RegistrationGate;

RegionOptions with_fault_ahead(std::size_t chunks) {
    RegionOptions options = test::emulated();
    options.fault_ahead = chunks;
    return options;
}

// Polls the region's statistics until `done` holds (or the patience runs out).
bool wait_for(const Region& region, const std::function<bool(const Stats&)>& done) {
    const auto deadline = std::chrono::steady_clock::now() + test::patience;
    while (!done(region.stats())) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

bool faulted_ahead(const Region& region, std::uint64_t count) {
    return wait_for(region,
                    [&](const Stats& stats) { return stats.chunks_faulted_ahead >= count; });
}

void touch(Region& region, const test::Mapping& buffer, std::size_t chunk) {
    (void)region.translate(buffer.data() + chunk * 2 * MiB + 64, 64);
}

TEST(FaultAhead, SequentialUseRegistersTheNextChunks) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(16 * MiB);
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                            with_fault_ahead(2));
    touch(region, buffer, 0);
    EXPECT_EQ(region.stats().chunks_faulted_ahead, 0U) << "one fault is no pattern yet";
    touch(region, buffer, 1);  // sequential: chunks 2 and 3 are requested
    ASSERT_TRUE(faulted_ahead(region, 2));
    touch(region, buffer, 2);  // a hit on a faulted-ahead chunk: chunk 4 is requested
    ASSERT_TRUE(faulted_ahead(region, 3));
    touch(region, buffer, 3);
    ASSERT_TRUE(faulted_ahead(region, 4));
    touch(region, buffer, 4);
    ASSERT_TRUE(faulted_ahead(region, 5));

    const Stats stats = region.stats();
    EXPECT_EQ(stats.misses, 2U) << "only the first two chunks were faulted on demand";
    EXPECT_EQ(stats.fault_ahead_hits, 3U);
    EXPECT_EQ(stats.chunks_faulted_ahead, 5U);  // chunks 2 to 6
    EXPECT_EQ(stats.chunk_faults, 7U);
    EXPECT_EQ(fake->counters().registrations, 7U);
    EXPECT_LE(stats.peak_pinned_bytes, 14 * MiB);
}

// Waking the background thread is a system call in the data path (60 to
// 250 us in an emulated guest): a stream asks again only when at most half
// of its window is registered, and then for the whole window.
TEST(FaultAhead, RefillsItsWindowInBatches) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(32 * MiB);  // 16 chunks
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                            with_fault_ahead(4));
    touch(region, buffer, 0);
    touch(region, buffer, 1);  // sequential: chunks 2 to 5 are requested
    ASSERT_TRUE(faulted_ahead(region, 4));
    // The requests are served in order: one for a far chunk not yet
    // registered, after a touch, proves that the touch requested nothing (or
    // what it did) once that chunk is registered.
    std::size_t far = 16;
    const auto served_after = [&](std::size_t chunk, std::uint64_t expected) {
        touch(region, buffer, chunk);
        region.prefetch_async(buffer.data() + --far * 2 * MiB, 64);
        EXPECT_TRUE(faulted_ahead(region, expected));
        EXPECT_EQ(region.stats().chunks_faulted_ahead, expected) << "after touching " << chunk;
    };
    served_after(2, 5);  // 3 of 4 ahead (3, 4, 5) are registered: no request
    served_after(3, 8);  // 2 of 4 (4, 5): chunks 6 and 7 are requested
    served_after(4, 9);  // 3 of 4 (5, 6, 7): none

    const Stats stats = region.stats();
    EXPECT_EQ(stats.misses, 2U);
    EXPECT_EQ(stats.fault_ahead_hits, 3U);
    EXPECT_EQ(fake->counters().registrations, 11U);  // chunks 0 to 7 and 13 to 15
}

TEST(FaultAhead, StopsWhenThePatternStops) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(32 * MiB);  // 16 chunks
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                            with_fault_ahead(2));
    touch(region, buffer, 0);
    touch(region, buffer, 1);
    ASSERT_TRUE(faulted_ahead(region, 2));  // chunks 2 and 3
    // Random use from here on: no chunk follows the last one faulted.
    touch(region, buffer, 9);
    touch(region, buffer, 5);
    touch(region, buffer, 12);
    touch(region, buffer, 7);
    // The last request: served after anything the random use might have requested.
    region.prefetch_async(buffer.data() + 15 * 2 * MiB, 64);
    ASSERT_TRUE(faulted_ahead(region, 3));

    const Stats stats = region.stats();
    EXPECT_EQ(stats.chunks_faulted_ahead, 3U) << "random use was faulted ahead";
    EXPECT_EQ(stats.fault_ahead_hits, 0U);
    EXPECT_EQ(stats.misses, 6U);
    EXPECT_EQ(fake->counters().registrations, 9U);
}

TEST(FaultAhead, NeverEvictsALeasedChunk) {
    // Room for three chunks; two are leased while fault-ahead asks for four.
    auto [fake, device] = test::make_device(6 * MiB);
    test::Mapping buffer(16 * MiB);
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                            with_fault_ahead(4));
    const Lease leased = region.translate(buffer.data(), 4 * MiB);  // chunks 0 and 1
    // Chunk 2 fits; chunks 3, 4 and 5 find the budget full of leased and
    // faulted-ahead chunks and give up.
    ASSERT_TRUE(wait_for(region, [](const Stats& stats) { return stats.back_pressure >= 3; }));

    const Stats stats = region.stats();
    EXPECT_EQ(stats.chunks_faulted_ahead, 1U);
    EXPECT_EQ(stats.evictions, 0U);
    EXPECT_EQ(stats.back_pressure, 3U);
    for (const ibv_sge& sge : leased.sges()) {
        EXPECT_TRUE(fake->covers(sge.lkey, sge.addr, sge.length)) << "a leased chunk was evicted";
    }
    EXPECT_EQ(device->stats().peak_pinned_bytes, 6 * MiB);
}

TEST(FaultAhead, PrefetchAsyncReturnsBeforeRegistering) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(8 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    RegistrationGate gate(*fake, buffer.address());
    auto prefetch =
        test::in_background([&] { region.prefetch_async(buffer.data(), buffer.size()); });
    ASSERT_TRUE(gate.wait_held());
    EXPECT_TRUE(test::finished(prefetch)) << "prefetch_async waited for a registration";
    gate.open();
    ASSERT_TRUE(faulted_ahead(region, 4));

    const Lease lease = region.translate(buffer.data(), buffer.size());
    const Stats stats = region.stats();
    EXPECT_EQ(stats.misses, 0U) << "every chunk was registered before it was needed";
    EXPECT_EQ(stats.fault_ahead_hits, 4U);
    EXPECT_EQ(stats.prefetches, 1U);
    EXPECT_EQ(fake->counters().registrations, 4U);
}

TEST(FaultAhead, RegionAndDeviceDestroyedWithAFaultAheadInFlight) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(16 * MiB);
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                            with_fault_ahead(3));
    RegistrationGate gate(*fake, buffer.address() + 2 * 2 * MiB);
    touch(region, buffer, 0);
    touch(region, buffer, 1);  // requests chunks 2, 3 and 4; chunk 2 is held
    ASSERT_TRUE(gate.wait_held());
    std::promise<void> forgotten;
    const test::ScopedTestHook hook([&](detail::HookPoint point) {
        if (point == detail::HookPoint::FaultAheadForgotten) {
            forgotten.set_value();
        }
    });
    auto closing = test::in_background([&] { region = Region{}; });
    // close() drops the queued requests, then waits for the fault in flight
    // (it never deletes the region under the background thread). The gate
    // opens only once the requests are dropped: opened earlier, the
    // background thread would rightly run them before close() began.
    auto dropped = forgotten.get_future();
    ASSERT_EQ(dropped.wait_for(test::patience), std::future_status::ready);
    EXPECT_NE(closing.wait_for(std::chrono::seconds(0)), std::future_status::ready)
        << "close() did not wait for the fault in flight";
    gate.open();
    ASSERT_TRUE(test::finished(closing));
    device.reset();  // joins the background thread

    EXPECT_TRUE(fake->live_registrations().empty());
    const auto counters = fake->counters();
    EXPECT_EQ(counters.registrations, 3U) << "a request queued for a closed region ran";
    EXPECT_EQ(counters.registrations, counters.deregistrations);
}

// The background thread must not preempt the thread whose translate woke it:
// as SCHED_OTHER it did in EEVDF guests, and that translate then waited for
// a whole registration (docs/results/goals.md). SCHED_BATCH never preempts
// on wakeup.
TEST(FaultAhead, TheThreadDoesNotPreemptWhoWokeIt) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(2 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    region.prefetch_async(buffer.data(), buffer.size());  // starts the thread
    ASSERT_TRUE(faulted_ahead(region, 1));

    std::vector<int> policies;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        std::string name;
        std::getline(std::ifstream(task.path() / "comm"), name);
        if (name == "odp-fault-ahead") {
            policies.push_back(::sched_getscheduler(std::stoi(task.path().filename())));
        }
    }
    ASSERT_FALSE(policies.empty()) << "no thread named odp-fault-ahead";
    for (const int policy : policies) {
        EXPECT_EQ(policy, SCHED_BATCH) << "the fault-ahead thread's scheduling policy";
    }
}

}  // namespace
}  // namespace odp
