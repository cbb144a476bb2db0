// Emulated translation: chunking, SGE splitting and limits, faults, errors.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <odp/device.hpp>
#include <odp/region.hpp>

#include "test_support.hpp"

namespace odp {
namespace {

using test::expect_error;
using test::MiB;

TEST(Translate, EmulatedRegistrationDoesNoNicWork) {
    auto [fake, device] = test::make_device();
    // 1 TiB of address space that is not even mapped: registering is free.
    Region region =
        device->register_region(reinterpret_cast<void*>(std::uintptr_t{1} << 40),
                                std::size_t{1} << 40, Access::LocalWrite, test::emulated());
    EXPECT_EQ(region.mode(), Mode::Emulated);
    EXPECT_EQ(fake->counters().registrations, 0U);
    EXPECT_EQ(device->pinned_bytes(), 0U);
    EXPECT_EQ(region.stats(), Stats{});
}

TEST(Translate, SplitsAtChunkBoundaries) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(8 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    Lease lease = region.translate(buffer.data() + MiB, 4 * MiB);
    const auto sges = lease.sges();
    ASSERT_EQ(sges.size(), 3U);
    EXPECT_EQ(sges[0].addr, buffer.address() + MiB);
    EXPECT_EQ(sges[0].length, MiB);
    EXPECT_EQ(sges[1].addr, buffer.address() + 2 * MiB);
    EXPECT_EQ(sges[1].length, 2 * MiB);
    EXPECT_EQ(sges[2].addr, buffer.address() + 4 * MiB);
    EXPECT_EQ(sges[2].length, MiB);
    EXPECT_EQ(lease.length(), 4 * MiB);
    for (const ibv_sge& sge : sges) {
        EXPECT_TRUE(fake->covers(sge.lkey, sge.addr, sge.length)) << sge.addr;
    }
    // Whole chunks are registered (3 of them), not just the bytes asked for.
    EXPECT_EQ(fake->counters().registrations, 3U);
    EXPECT_EQ(fake->counters().bytes_registered, 6 * MiB);
    EXPECT_EQ(device->pinned_bytes(), 6 * MiB);
    const Stats stats = region.stats();
    EXPECT_EQ(stats.chunk_faults, 3U);
    EXPECT_EQ(stats.misses, 3U);
    EXPECT_EQ(stats.hits, 0U);
    EXPECT_EQ(stats.pinned_bytes, 6 * MiB);
    EXPECT_EQ(stats.bytes_registered, 6 * MiB);
}

TEST(Translate, ChunksSmallerThanDefault) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(MiB);
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                            test::emulated(64 * 1024));
    Lease lease = region.translate(buffer.data() + 60 * 1024, 8 * 1024);
    ASSERT_EQ(lease.sges().size(), 2U);
    EXPECT_EQ(lease.sges()[0].length, 4096U);
    EXPECT_EQ(lease.sges()[1].addr, buffer.address() + 64 * 1024);
    EXPECT_EQ(fake->counters().bytes_registered, 128 * 1024U);
}

TEST(Translate, RegionEdgesClipChunks) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(8 * MiB);
    // A region that starts and ends inside chunks registers only its own part.
    Region region =
        device->register_region(buffer.data() + MiB, 3 * MiB, Access::LocalWrite, test::emulated());
    Lease lease = region.translate(buffer.data() + MiB, 3 * MiB);
    ASSERT_EQ(lease.sges().size(), 2U);
    const auto live = fake->live_registrations();
    ASSERT_EQ(live.size(), 2U);
    EXPECT_EQ(live[0], (Range{buffer.address() + MiB, buffer.address() + 2 * MiB}));
    EXPECT_EQ(live[1], (Range{buffer.address() + 2 * MiB, buffer.address() + 4 * MiB}));
}

TEST(Translate, HitsReuseRegistrations) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(4 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    std::uint32_t first_key = 0;
    {
        Lease lease = region.translate(buffer.data(), 4096);
        first_key = lease.sges()[0].lkey;
    }
    for (int i = 0; i < 10; ++i) {
        Lease lease = region.translate(buffer.data() + 4096 * i, 100);
        ASSERT_EQ(lease.sges().size(), 1U);
        EXPECT_EQ(lease.sges()[0].lkey, first_key);
        EXPECT_FALSE(lease.release());
        EXPECT_FALSE(lease.held());
        EXPECT_FALSE(lease.release()) << "release is idempotent";
    }
    EXPECT_EQ(fake->counters().registrations, 1U);
    const Stats stats = region.stats();
    EXPECT_EQ(stats.hits, 10U);
    EXPECT_EQ(stats.misses, 1U);
}

TEST(Translate, SgeLimitIsRespected) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(8 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    const std::string message =
        expect_error(E2BIG, [&] { (void)region.translate(buffer.data(), 8 * MiB, 3); });
    EXPECT_NE(message.find("max_sge is 3"), std::string::npos) << message;
    EXPECT_EQ(fake->counters().registrations, 0U) << "refused before registering anything";
    Lease lease = region.translate(buffer.data(), 8 * MiB, 4);
    EXPECT_EQ(lease.sges().size(), 4U);
    // More SGEs than stored inline.
    Lease many = region.translate(buffer.data() + 1, 8 * MiB - 2);
    EXPECT_EQ(many.sges().size(), 4U);
    EXPECT_EQ(many.length(), 8 * MiB - 2);
}

TEST(Translate, ManySgesGoToTheHeap) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(MiB);
    Region region = device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                            test::emulated(4096));
    Lease lease = region.translate(buffer.data(), 40 * 4096);
    ASSERT_EQ(lease.sges().size(), 40U);
    for (std::size_t i = 0; i < 40; ++i) {
        EXPECT_EQ(lease.sges()[i].addr, buffer.address() + i * 4096);
        EXPECT_EQ(lease.rkeys()[i], lease.sges()[i].lkey);  // the fake uses one key for both
    }
    Lease moved = std::move(lease);
    EXPECT_FALSE(lease.held());
    EXPECT_EQ(moved.sges().size(), 40U);
}

TEST(Translate, BadArgumentsFailLoudly) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(4 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    expect_error(EINVAL, [&] { (void)region.translate(buffer.data(), 0); });
    const std::string outside =
        expect_error(EINVAL, [&] { (void)region.translate(buffer.data() + 3 * MiB, 2 * MiB); });
    EXPECT_NE(outside.find("not inside the region"), std::string::npos) << outside;
    expect_error(EINVAL, [&] { (void)region.translate(buffer.data() - 1, 2); });
    expect_error(EOVERFLOW, [&] { (void)region.translate(~std::uintptr_t{0} - 4, 100); });
    expect_error(EINVAL, [&] {
        (void)device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                      test::emulated(3 * MiB));
    });
    expect_error(EINVAL, [&] {
        (void)device->register_region(buffer.data(), buffer.size(), Access::LocalWrite,
                                      test::emulated(512));
    });
    expect_error(EINVAL,
                 [&] { (void)device->register_region(buffer.data(), 0, Access::LocalWrite); });
    Region empty;
    expect_error(EINVAL, [&] { (void)empty.translate(buffer.data(), 1); });
    EXPECT_EQ(fake->counters().registrations, 0U);
}

TEST(Translate, UnmappedMemoryIsAClearError) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(4 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    ASSERT_EQ(munmap(buffer.data(), 2 * MiB), 0);
    const std::string message =
        expect_error(EFAULT, [&] { (void)region.translate(buffer.data() + 4096, 4096); });
    EXPECT_NE(message.find("not mapped"), std::string::npos) << message;
    EXPECT_EQ(fake->live_registrations().size(), 0U) << "nothing left registered";
    EXPECT_EQ(device->pinned_bytes(), 0U) << "budget given back";
    // Remap it for the Mapping destructor (munmap of an unmapped range is fine anyway).
}

TEST(Translate, PartlyMappedChunkRegistersOnlyTheMappedPart) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(4 * MiB);
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    // A hole in the middle of chunk 0 and a PROT_NONE page (a guard page).
    ASSERT_EQ(munmap(buffer.data() + MiB, page), 0);
    ASSERT_EQ(mprotect(buffer.data() + MiB + 8 * page, page, PROT_NONE), 0);
    Lease lease = region.translate(buffer.data() + 4096, 8192);
    ASSERT_EQ(lease.sges().size(), 1U);
    const auto live = fake->live_registrations();
    ASSERT_EQ(live.size(), 3U);
    EXPECT_EQ(live[0], (Range{buffer.address(), buffer.address() + MiB}));
    EXPECT_EQ(live[1], (Range{buffer.address() + MiB + page, buffer.address() + MiB + 8 * page}));
    EXPECT_EQ(live[2], (Range{buffer.address() + MiB + 9 * page, buffer.address() + 2 * MiB}));
    EXPECT_EQ(device->pinned_bytes(), 2 * MiB - 2 * page) << "the budget counts mapped pages only";
    // The mapped part past the hole is served by the same chunk.
    Lease after = region.translate(buffer.data() + MiB + 2 * page, page);
    EXPECT_EQ(region.stats().hits, 1U);
    // The hole itself is an error; so is a range across it.
    expect_error(EFAULT, [&] { (void)region.translate(buffer.data() + MiB, page); });
    expect_error(EFAULT, [&] { (void)region.translate(buffer.data() + MiB - page, 3 * page); });
}

TEST(Translate, MemoryMappedIntoAHoleLaterIsRegistered) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(4 * MiB);
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    ASSERT_EQ(munmap(buffer.data() + MiB, page), 0);
    { Lease lease = region.translate(buffer.data(), page); }
    // mmap into a hole raises no invalidation: the next translate must notice.
    void* back = mmap(buffer.data() + MiB, page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    ASSERT_NE(back, MAP_FAILED);
    Lease lease = region.translate(buffer.data() + MiB, page);
    ASSERT_EQ(lease.sges().size(), 1U);
    EXPECT_TRUE(fake->covers(lease.sges()[0].lkey, buffer.address() + MiB, page));
    EXPECT_EQ(region.stats().chunk_faults, 2U);
}

TEST(Translate, NicErrorsPropagateAndLeakNothing) {
    auto [fake, device] = test::make_device();
    test::Mapping buffer(8 * MiB);
    Region region =
        device->register_region(buffer.data(), buffer.size(), Access::LocalWrite, test::emulated());
    { Lease warm = region.translate(buffer.data(), 4096); }
    fake->fail_next_registrations(ENOMEM);
    const std::string message =
        expect_error(ENOMEM, [&] { (void)region.translate(buffer.data(), 6 * MiB); });
    EXPECT_NE(message.find("injected"), std::string::npos) << message;
    EXPECT_EQ(device->pinned_bytes(), 2 * MiB) << "only the chunk cached before";
    EXPECT_EQ(fake->live_registrations().size(), 1U);
    // The chunk leased before the failure was released again: it can be evicted.
    const Lease retry = region.translate(buffer.data(), 6 * MiB);
    EXPECT_EQ(retry.sges().size(), 3U);
}

}  // namespace
}  // namespace odp
