// odp-microbench: LeaseHit, EventApply, RegisterEmulated, FaultParallel
// (docs/results/microbench.md, docs/results/fault-parallel.md); EvictionPolicy
// is in eviction_policy.cpp.
//
// Everything runs against odp::FakeNic: the hit path and emulated
// registration make no NIC call by design, and event application only marks
// state, so a device would not change what is measured here.
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <odp/device.hpp>
#include <odp/fake_nic.hpp>
#include <odp/region.hpp>
#include <random>
#include <string>

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t GiB = std::size_t{1} << 30;

std::shared_ptr<odp::Device> fake_device(
    std::uint64_t budget,
    std::chrono::microseconds registration_cost = std::chrono::microseconds(0)) {
    auto fake = std::make_unique<odp::FakeNic>();
    fake->set_check_mapping(false);  // fake address ranges, nothing mapped
    fake->set_registration_cost(registration_cost);
    odp::DeviceOptions options;
    options.max_pinned_bytes = budget;
    return odp::Device::open(std::move(fake), options);
}

odp::RegionOptions emulated() {
    odp::RegionOptions options;
    options.mode = odp::Mode::Emulated;
    options.monitor = odp::MonitorKind::None;
    return options;
}

// One region shared by every LeaseHit thread, its chunks registered once.
struct HitFixture {
    static constexpr std::uintptr_t base = std::uintptr_t{1} << 40;
    std::shared_ptr<odp::Device> device = fake_device(GiB);
    odp::Region region = device->register_region(reinterpret_cast<void*>(base), 64 * MiB,
                                                 odp::Access::LocalWrite, emulated());
    HitFixture() { region.prefetch(reinterpret_cast<void*>(base), 64 * MiB); }
    static HitFixture& get() {
        static HitFixture fixture;
        return fixture;
    }
};

// translate + lease + release of a cached 4 KiB range. Each thread uses its
// own chunk (as threads working on their own buffers do).
void LeaseHit(benchmark::State& state) {
    HitFixture& fixture = HitFixture::get();
    const std::uintptr_t address =
        HitFixture::base + static_cast<std::uintptr_t>(state.thread_index()) * 2 * MiB + 4096;
    for (auto _ : state) {
        odp::Lease lease = fixture.region.translate(address, 4096);
        benchmark::DoNotOptimize(lease.sges().data());
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(LeaseHit)->Threads(1)->Threads(2)->UseRealTime();

// The same with every thread on the same chunk: its lease count is shared.
void LeaseHitSameChunk(benchmark::State& state) {
    HitFixture& fixture = HitFixture::get();
    for (auto _ : state) {
        odp::Lease lease = fixture.region.translate(HitFixture::base + 4096, 4096);
        benchmark::DoNotOptimize(lease.sges().data());
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(LeaseHitSameChunk)->Threads(1)->Threads(2)->UseRealTime();

// A lease over 4 chunks (4 SGEs, still stored inline).
void LeaseHit4Chunks(benchmark::State& state) {
    HitFixture& fixture = HitFixture::get();
    for (auto _ : state) {
        odp::Lease lease = fixture.region.translate(HitFixture::base + 8 * MiB, 8 * MiB);
        benchmark::DoNotOptimize(lease.sges().data());
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(LeaseHit4Chunks);

// Invalidation events (4 KiB, like munmap of a page) applied to a 1 GiB
// emulated region whose 512 chunks are registered: each event marks its
// chunk stale and detaches it. Re-registering all chunks after every 512
// events is excluded from the time.
void EventApply(benchmark::State& state) {
    constexpr std::uintptr_t base = std::uintptr_t{1} << 41;
    constexpr std::size_t chunks = GiB / (2 * MiB);
    auto device = fake_device(2 * GiB);
    odp::Region region = device->register_region(reinterpret_cast<void*>(base), GiB,
                                                 odp::Access::LocalWrite, emulated());
    region.prefetch(reinterpret_cast<void*>(base), GiB);
    std::mt19937_64 random(1);
    std::size_t order[chunks];
    for (std::size_t i = 0; i < chunks; ++i) {
        order[i] = i;
    }
    std::shuffle(order, order + chunks, random);
    std::size_t next = 0;
    for (auto _ : state) {
        const std::uintptr_t page = base + order[next] * 2 * MiB + (next % 512) * 4096;
        region.invalidate(odp::Range{page, page + 4096}, odp::InvalidationReason::Unmap);
        if (++next == chunks) {
            state.PauseTiming();
            next = 0;
            region.prefetch(reinterpret_cast<void*>(base), GiB);  // sweeps and re-registers
            state.ResumeTiming();
        }
    }
    state.SetItemsProcessed(state.iterations());
    const odp::Stats stats = region.stats();
    state.counters["stale_chunks"] = static_cast<double>(stats.chunks_invalidated);
}
BENCHMARK(EventApply);

// Events that hit no registered chunk (the common case for unrelated munmaps).
void EventApplyMiss(benchmark::State& state) {
    constexpr std::uintptr_t base = std::uintptr_t{1} << 41;
    auto device = fake_device(2 * GiB);
    odp::Region region = device->register_region(reinterpret_cast<void*>(base), GiB,
                                                 odp::Access::LocalWrite, emulated());
    std::uintptr_t page = base;
    for (auto _ : state) {
        region.invalidate(odp::Range{page, page + 4096}, odp::InvalidationReason::Unmap);
        page = page + 4096 < base + GiB ? page + 4096 : base;
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(EventApplyMiss);

// Registering (and closing) an emulated region: O(1), no NIC call.
void RegisterEmulated(benchmark::State& state, std::size_t size) {
    auto device = fake_device(GiB);
    const void* address = reinterpret_cast<void*>(std::uintptr_t{1} << 42);
    for (auto _ : state) {
        odp::Region region =
            device->register_region(address, size, odp::Access::LocalWrite, emulated());
        benchmark::DoNotOptimize(&region);
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(RegisterEmulated, 1GiB, GiB);
BENCHMARK_CAPTURE(RegisterEmulated, 1TiB, 1024 * GiB);

// Faults of fresh 2 MiB chunks, each registration costing 50 us on the fake
// NIC (what ibv_reg_mr of 2 MiB costs on a real one), then the lease's
// release. Threads take distinct chunks of one region; the budget (128
// chunks) is full after the first few milliseconds, so each fault also
// evicts the least recently used chunk, as a stream over a large buffer does.
struct FaultFixture {
    static constexpr std::uintptr_t base = std::uintptr_t{1} << 43;
    static constexpr std::size_t chunks = 64 * 1024;  // 128 GiB of address space
    std::shared_ptr<odp::Device> device = fake_device(256 * MiB, std::chrono::microseconds(50));
    odp::Region region = device->register_region(reinterpret_cast<void*>(base), chunks * 2 * MiB,
                                                 odp::Access::LocalWrite, emulated());
    std::atomic<std::size_t> next{0};
    static FaultFixture& get() {
        static FaultFixture fixture;
        return fixture;
    }
};

void FaultParallel(benchmark::State& state) {
    FaultFixture& fixture = FaultFixture::get();
    for (auto _ : state) {
        const std::size_t chunk =
            fixture.next.fetch_add(1, std::memory_order_relaxed) % FaultFixture::chunks;
        odp::Lease lease = fixture.region.translate(FaultFixture::base + chunk * 2 * MiB, 4096);
        benchmark::DoNotOptimize(lease.sges().data());
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(FaultParallel)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
