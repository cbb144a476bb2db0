// Many threads translate, lease and release while another invalidates.
// Run under ThreadSanitizer too (-DODP_TSAN=ON).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <odp/device.hpp>
#include <odp/region.hpp>
#include <random>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace odp {
namespace {

using test::MiB;

TEST(Concurrency, TranslateReleaseAgainstInvalidationAndEviction) {
    // A budget smaller than the buffer: eviction runs too.
    auto [fake, device] = test::make_device(12 * MiB);
    // Registrations take a while, as on a NIC: faults overlap each other,
    // evictions and invalidations outside the device's lock.
    fake->set_registration_cost(std::chrono::microseconds(20));
    test::Mapping buffer(32 * MiB);
    Region region = device->register_region(
        buffer.data(), buffer.size(), Access::LocalWrite | Access::RemoteRead, test::emulated(MiB));
    constexpr int workers = 4;
    std::atomic<std::uint64_t> leases{0};
    std::atomic<std::uint64_t> pressure{0};
    std::atomic<std::uint64_t> bad{0};
    std::atomic<std::uint64_t> retries{0};
    // 700 ms of racing, and on until the checks below have something to check
    // (a loaded machine can starve a thread for longer); 60 s bounds a hang.
    const auto start = std::chrono::steady_clock::now();
    const auto enough = [&] {
        const auto ran = std::chrono::steady_clock::now() - start;
        return ran > std::chrono::seconds(60) ||
               (ran > std::chrono::milliseconds(700) && leases.load() > 100 &&
                region.stats().chunks_invalidated > 0);
    };
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < workers; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937_64 random(static_cast<std::uint64_t>(t) + 1);
            while (!stop.load()) {
                const std::size_t offset = random() % (buffer.size() - 3 * MiB);
                const std::size_t length = 1 + random() % (2 * MiB);
                try {
                    Lease lease = region.translate(buffer.data() + offset, length);
                    std::size_t total = 0;
                    for (const ibv_sge& sge : lease.sges()) {
                        total += sge.length;
                        if (!fake->covers(sge.lkey, sge.addr, sge.length)) {
                            ++bad;  // an SGE whose registration is gone: use after free
                        }
                    }
                    if (total != length) {
                        ++bad;
                    }
                    ++leases;
                    if (random() % 4 == 0) {
                        std::this_thread::yield();  // hold it a little
                    }
                } catch (const BackPressure&) {
                    ++pressure;
                } catch (const Error& error) {
                    // The chunk kept being invalidated during its faults.
                    if (error.errno_value() != EAGAIN) {
                        ++bad;
                    }
                    ++retries;
                }
            }
        });
    }
    std::thread invalidator([&] {
        std::mt19937_64 random(99);
        std::uint64_t events = 0;
        while (!stop.load()) {
            const std::size_t offset = random() % buffer.size();
            if (++events % 500 == 0) {
                region.invalidate_all(InvalidationReason::Overflow);
            } else {
                region.invalidate(Range::from_length(buffer.address() + offset, 4096),
                                  InvalidationReason::Unmap);
            }
            std::this_thread::yield();
        }
    });
    while (!enough()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    stop = true;
    for (auto& thread : threads) {
        thread.join();
    }
    invalidator.join();
    EXPECT_EQ(bad.load(), 0U);
    EXPECT_GT(leases.load(), 100U);
    const Stats stats = region.stats();
    EXPECT_GT(stats.chunks_invalidated, 0U);
    EXPECT_LE(stats.peak_pinned_bytes, 12 * MiB);
    EXPECT_LE(device->stats().peak_pinned_bytes, 12 * MiB) << "the budget was never overshot";
    EXPECT_EQ(stats.back_pressure, pressure.load());
    // No lease is held: everything registered is accounted for exactly.
    std::uint64_t live_bytes = 0;
    for (const Range& range : fake->live_registrations()) {
        live_bytes += range.length();
    }
    EXPECT_EQ(live_bytes, device->pinned_bytes());
    region.collect();
    region = Region{};
    EXPECT_EQ(fake->live_registrations().size(), 0U);
    EXPECT_EQ(device->pinned_bytes(), 0U);
    const auto counters = fake->counters();
    EXPECT_EQ(counters.registrations, counters.deregistrations);
    std::printf(
        "retries %llu, leases %llu, back-pressure %llu, faults %llu, evictions %llu, stale %llu\n",
        static_cast<unsigned long long>(retries.load()),
        static_cast<unsigned long long>(leases.load()),
        static_cast<unsigned long long>(pressure.load()),
        static_cast<unsigned long long>(stats.chunk_faults),
        static_cast<unsigned long long>(stats.evictions),
        static_cast<unsigned long long>(stats.chunks_invalidated));
}

TEST(Concurrency, SameChunkFromManyThreads) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(4 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    std::vector<std::thread> threads;
    std::atomic<bool> go{false};
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            while (!go) {
                std::this_thread::yield();
            }
            for (int i = 0; i < 2000; ++i) {
                Lease lease = region.translate(buffer.data() + 64, 64);
                ASSERT_EQ(lease.sges().size(), 1U);
            }
        });
    }
    go = true;
    for (auto& thread : threads) {
        thread.join();
    }
    EXPECT_EQ(fake->counters().registrations, 1U) << "one fault, however many threads raced";
    const Stats stats = region.stats();
    EXPECT_EQ(stats.hits + stats.misses, 8000U) << "every lookup is one or the other";
    EXPECT_EQ(stats.chunk_faults, 1U);
}

}  // namespace
}  // namespace odp
