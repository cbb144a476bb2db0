// Which chunks a full budget keeps: the reuse-distance policy (the default)
// against LRU on small deterministic sequences of chunk uses, with the hit
// counts worked out by hand from the rules in region_core.hpp
// (EvictionPolicy). Budget: 8 chunks, of which 6 may be protected.
#include <gtest/gtest.h>

#include <cstdint>
#include <odp/device.hpp>
#include <odp/region.hpp>
#include <vector>

#include "region_core.hpp"
#include "test_support.hpp"

namespace odp {
namespace {

using detail::EvictionPolicy;
using test::MiB;

constexpr std::size_t kChunk = 2 * MiB;
constexpr std::size_t kBudgetChunks = 8;
constexpr std::uintptr_t kBase = std::uintptr_t{1} << 42;

struct Uses {
    std::uint64_t hits = 0;
    std::uint64_t faults = 0;
};

// Leases 64 bytes of each chunk of `chunks` in turn, releasing each at once.
Uses run(EvictionPolicy policy, const std::vector<std::size_t>& chunks, std::size_t region_chunks) {
    test::FakeDevice dev = test::make_device(kBudgetChunks * kChunk);
    dev.fake->set_check_mapping(false);  // fake addresses, nothing mapped
    dev.device->state().eviction = policy;
    RegionOptions options = test::emulated();
    options.monitor = MonitorKind::None;
    Region region = dev.device->register_region(
        reinterpret_cast<void*>(kBase), region_chunks * kChunk, Access::LocalWrite, options);
    for (const std::size_t chunk : chunks) {
        region.translate(kBase + chunk * kChunk, 64).release();
    }
    EXPECT_LE(dev.device->stats().peak_pinned_bytes, kBudgetChunks * kChunk);
    const Stats stats = region.stats();
    return {stats.hits, stats.chunk_faults};
}

std::vector<std::size_t> cycle(std::size_t length, std::size_t laps) {
    std::vector<std::size_t> chunks;
    for (std::size_t lap = 0; lap < laps; ++lap) {
        for (std::size_t chunk = 0; chunk < length; ++chunk) {
            chunks.push_back(chunk);
        }
    }
    return chunks;
}

TEST(Eviction, ReuseDistanceIsTheDefault) {
    const test::FakeDevice dev = test::make_device(kBudgetChunks * kChunk);
    EXPECT_EQ(dev.device->state().eviction, EvictionPolicy::ReuseDistance);
}

// A cycle over twice the budget. LRU evicts each chunk just before its next
// use. Reuse distance: lap 1 faults all 16 (evicting the oldest: nothing
// was reused); in lap 2 each re-fault remembers its last use, so chunks 0-5
// join the protected set (6 chunks) as they come; from lap 3 on they hit,
// and the other 10 pass through the probation share.
TEST(Eviction, CycleOverTwiceTheBudgetKeepsTheProtectedPart) {
    const std::vector<std::size_t> chunks = cycle(2 * kBudgetChunks, 4);
    const Uses lru = run(EvictionPolicy::LeastRecentlyUsed, chunks, 2 * kBudgetChunks);
    EXPECT_EQ(lru.hits, 0U);
    EXPECT_EQ(lru.faults, 64U);
    const Uses reuse = run(EvictionPolicy::ReuseDistance, chunks, 2 * kBudgetChunks);
    EXPECT_EQ(reuse.hits, 2 * 6U) << "laps 3 and 4 find chunks 0-5";
    EXPECT_EQ(reuse.faults, 64U - 12U);
}

// A cycle that fits: both policies fault each chunk once.
TEST(Eviction, CycleWithinTheBudgetFaultsOnce) {
    const std::vector<std::size_t> chunks = cycle(kBudgetChunks, 3);
    for (const EvictionPolicy policy :
         {EvictionPolicy::LeastRecentlyUsed, EvictionPolicy::ReuseDistance}) {
        const Uses uses = run(policy, chunks, kBudgetChunks);
        EXPECT_EQ(uses.faults, kBudgetChunks);
        EXPECT_EQ(uses.hits, 2 * kBudgetChunks);
    }
}

// A hot set of 4 chunks used in turn, 6 chunks of a scan (each used once)
// after every pass: 9 other chunks between two uses of a hot chunk, more
// than the budget's 8, so LRU never finds one. Reuse distance: in round 0
// the hot chunks fault and are evicted as the oldest (not reused yet); in
// round 1 they fault again remembering their last use and become
// protected; rounds 2 to 7 hit all four while the scan passes through
// probation.
TEST(Eviction, HotSetSurvivesAScan) {
    std::vector<std::size_t> chunks;
    std::size_t scan = 4;
    for (int round = 0; round < 8; ++round) {
        for (std::size_t hot = 0; hot < 4; ++hot) {
            chunks.push_back(hot);
        }
        for (int i = 0; i < 6; ++i) {
            chunks.push_back(scan++);
        }
    }
    const Uses lru = run(EvictionPolicy::LeastRecentlyUsed, chunks, scan);
    EXPECT_EQ(lru.hits, 0U);
    const Uses reuse = run(EvictionPolicy::ReuseDistance, chunks, scan);
    EXPECT_EQ(reuse.hits, 6 * 4U);
    EXPECT_EQ(reuse.faults, chunks.size() - 24);
}

// A working set that moves: after a hot set was protected, a new set of 6
// chunks in a cycle takes its place once the old one has gone unused for
// longer than the new chunks' reuse interval, and then always hits.
TEST(Eviction, ProtectedSetFollowsAMovingWorkingSet) {
    std::vector<std::size_t> chunks = cycle(6, 4);  // chunks 0-5, protected from lap 2
    const std::size_t old_end = chunks.size();
    for (int lap = 0; lap < 6; ++lap) {
        for (std::size_t chunk = 10; chunk < 16; ++chunk) {  // the new set, 6 chunks
            chunks.push_back(chunk);
        }
    }
    test::FakeDevice dev = test::make_device(kBudgetChunks * kChunk);
    dev.fake->set_check_mapping(false);
    RegionOptions options = test::emulated();
    options.monitor = MonitorKind::None;
    Region region = dev.device->register_region(reinterpret_cast<void*>(kBase), 16 * kChunk,
                                                Access::LocalWrite, options);
    std::uint64_t hits_before_last_lap = 0;
    for (std::size_t i = 0; i < chunks.size(); ++i) {
        if (i == chunks.size() - 6) {
            hits_before_last_lap = region.stats().hits;
        }
        region.translate(kBase + chunks[i] * kChunk, 64).release();
        if (i + 1 == old_end) {
            EXPECT_EQ(region.stats().chunk_faults, 6U) << "the first set fits";
        }
    }
    EXPECT_EQ(region.stats().hits - hits_before_last_lap, 6U)
        << "the new set is resident in its last lap";
}

// A fixed pseudo-random sequence over four times the budget: every policy
// can only find about a quarter; reuse distance must not do worse than LRU
// by more than a few hits.
TEST(Eviction, RandomUseFindsAboutTheBudgetsShare) {
    std::vector<std::size_t> chunks;
    std::uint64_t state = 12345;
    for (int i = 0; i < 4000; ++i) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;  // Knuth's LCG
        chunks.push_back(static_cast<std::size_t>((state >> 33) % (4 * kBudgetChunks)));
    }
    const Uses lru = run(EvictionPolicy::LeastRecentlyUsed, chunks, 4 * kBudgetChunks);
    const Uses reuse = run(EvictionPolicy::ReuseDistance, chunks, 4 * kBudgetChunks);
    for (const Uses& uses : {lru, reuse}) {
        EXPECT_EQ(uses.hits + uses.faults, 4000U);
        EXPECT_GT(uses.hits, 4000U / 4 * 8 / 10);
        EXPECT_LT(uses.hits, 4000U / 4 * 12 / 10);
    }
    EXPECT_GE(reuse.hits * 100, lru.hits * 95);
}

}  // namespace
}  // namespace odp
