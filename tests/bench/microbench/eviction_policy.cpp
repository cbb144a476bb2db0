// EvictionPolicy: which chunks a full budget keeps, LRU against the
// reuse-distance policy (docs/results/eviction-policy.md).
//
// 64 KiB translates over working sets of 1, 2, 4 and 8 times a budget of 32
// chunks, sequential (a cycle), random, or a hot set with a scan, each on a
// fresh device whose fake NIC sleeps 50 us per registration (a real NIC's
// ibv_reg_mr of 2 MiB). 16 leases are held at a time and released oldest
// first, as a window of RDMA WRITEs in flight does. Two laps of the set run
// before the measured ones, so the numbers are the policy's steady state.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <odp/device.hpp>
#include <odp/fake_nic.hpp>
#include <odp/region.hpp>

#include "region_core.hpp"

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t kChunk = 2 * MiB;
constexpr std::size_t kMessage = 64 * 1024;
constexpr std::size_t kBudget = 32 * kChunk;
constexpr std::size_t kInFlight = 16;
constexpr std::uintptr_t kBase = std::uintptr_t{1} << 44;

enum Pattern : std::int64_t { Sequential, Random, HotAndScan };

std::uint64_t mix(std::uint64_t x) noexcept {  // splitmix64's finaliser
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// Offset of the `op`-th message in a set of `set` bytes.
std::size_t offset_of(Pattern pattern, std::uint64_t op, std::size_t set) {
    const std::size_t messages = set / kMessage;
    switch (pattern) {
        case Sequential:
            return op % messages * kMessage;
        case Random:
            return mix(op) % messages * kMessage;
        case HotAndScan: {
            // Three in four messages in a hot quarter of the budget (at the
            // start of the set), the fourth the next one of a sequential scan
            // over the rest of the set.
            const std::size_t hot = kBudget / 4 / kMessage;
            if (op % 4 != 3) {
                return mix(op) % hot * kMessage;
            }
            return (hot + op / 4 % (messages - hot)) * kMessage;
        }
    }
    return 0;
}

void EvictionPolicy(benchmark::State& state) {
    const auto policy = static_cast<odp::detail::EvictionPolicy>(state.range(0));
    const auto pattern = static_cast<Pattern>(state.range(1));
    const std::size_t set = static_cast<std::size_t>(state.range(2)) * kBudget;
    auto fake = std::make_unique<odp::FakeNic>();
    fake->set_check_mapping(false);  // fake address ranges, nothing mapped
    fake->set_registration_cost(std::chrono::microseconds(50));
    odp::DeviceOptions options;
    options.max_pinned_bytes = kBudget;
    const std::shared_ptr<odp::Device> device = odp::Device::open(std::move(fake), options);
    device->state().eviction = policy;
    odp::RegionOptions region_options;
    region_options.mode = odp::Mode::Emulated;
    region_options.monitor = odp::MonitorKind::None;
    odp::Region region = device->register_region(reinterpret_cast<void*>(kBase), set,
                                                 odp::Access::LocalWrite, region_options);
    std::deque<odp::Lease> in_flight;
    std::uint64_t op = 0;
    std::size_t chunk = SIZE_MAX;
    std::uint64_t chunk_entries = 0;  // messages in another chunk than the previous one
    const auto access = [&] {
        const std::size_t offset = offset_of(pattern, op++, set);
        chunk_entries += offset / kChunk != chunk ? 1 : 0;
        chunk = offset / kChunk;
        in_flight.push_back(region.translate(kBase + offset, kMessage));
        if (in_flight.size() > kInFlight) {
            in_flight.pop_front();
        }
    };
    const std::uint64_t lap = set / kMessage;
    for (std::uint64_t i = 0; i < 2 * lap; ++i) {
        access();
    }
    const odp::Stats before = region.stats();
    chunk_entries = 0;
    for (auto _ : state) {
        access();
    }
    in_flight.clear();
    const odp::Stats after = region.stats();
    const auto hits = static_cast<double>(after.hits - before.hits);
    const auto misses = static_cast<double>(after.misses - before.misses);
    state.counters["hit_rate"] = hits / (hits + misses);
    const auto faults = static_cast<double>(after.chunk_faults - before.chunk_faults);
    state.counters["chunk_faults"] = faults;
    // Of the messages that entered another chunk than the previous one's,
    // the share that found it registered (a sequential cycle's 31 hits in a
    // chunk after its fault are no credit of the policy's).
    state.counters["chunk_hit_rate"] = 1 - faults / static_cast<double>(chunk_entries);
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * kMessage);
    state.SetLabel(std::string(policy == odp::detail::EvictionPolicy::LeastRecentlyUsed
                                   ? "lru"
                                   : "reuse-distance") +
                   (pattern == Sequential ? " sequential"
                    : pattern == Random   ? " random"
                                          : " hot+scan") +
                   " " + std::to_string(state.range(2)) + "x");
}

void policy_arguments(benchmark::internal::Benchmark* benchmark) {
    for (const std::int64_t pattern : {Sequential, Random, HotAndScan}) {
        for (const std::int64_t multiple : {1, 2, 4, 8}) {
            for (const auto policy : {odp::detail::EvictionPolicy::LeastRecentlyUsed,
                                      odp::detail::EvictionPolicy::ReuseDistance}) {
                benchmark->Args({static_cast<std::int64_t>(policy), pattern, multiple});
            }
        }
    }
}
// Four laps of an 8x set (4 x 8192 messages): every run the same count.
BENCHMARK(EvictionPolicy)->Apply(policy_arguments)->Iterations(32768)->UseRealTime();

}  // namespace
