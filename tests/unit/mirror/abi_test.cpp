// The uapi header of odp_mirror.ko: self-contained (included first), the same
// layout in C and C++, fixed sizes and offsets that userspace and the module
// both rely on (a change here is an ABI break and must bump the version).
#include <gtest/gtest.h>
#include <odp_mirror.h>

#include <cstddef>

#include "abi_c.h"

namespace {

static_assert(sizeof(odp_mirror_event) == 64);
static_assert(offsetof(odp_mirror_event, seq) == 0);
static_assert(offsetof(odp_mirror_event, cookie) == 8);
static_assert(offsetof(odp_mirror_event, start) == 16);
static_assert(offsetof(odp_mirror_event, end) == 24);
static_assert(offsetof(odp_mirror_event, generation) == 32);
static_assert(offsetof(odp_mirror_event, region_id) == 40);
static_assert(offsetof(odp_mirror_event, slot) == 44);
static_assert(offsetof(odp_mirror_event, reason) == 48);
static_assert(offsetof(odp_mirror_event, flags) == 50);
static_assert(sizeof(odp_mirror_ring_header) == 64);
static_assert(offsetof(odp_mirror_ring_header, head) == 0);
static_assert(offsetof(odp_mirror_ring_header, lost) == 8);
static_assert(offsetof(odp_mirror_ring_header, overflow) == 16);
static_assert(offsetof(odp_mirror_ring_header, entries) == 20);
static_assert(sizeof(odp_mirror_ring_consumer) == 64);
static_assert(offsetof(odp_mirror_ring_consumer, lost_seen) == 8);
static_assert(offsetof(odp_mirror_ring_consumer, flags) == 16);
static_assert(sizeof(odp_mirror_query) == 96);
static_assert(offsetof(odp_mirror_query, address_limit) == 64);
static_assert(sizeof(odp_mirror_register) == 64);
static_assert(offsetof(odp_mirror_register, id) == 32);
static_assert(offsetof(odp_mirror_register, slot) == 36);
static_assert(offsetof(odp_mirror_register, generation) == 40);
static_assert(sizeof(odp_mirror_unregister) == 24);
static_assert(sizeof(odp_mirror_fault) == 64);
static_assert(offsetof(odp_mirror_fault, pages_present) == 32);
static_assert(sizeof(odp_mirror_snapshot) == 72);
static_assert(sizeof(odp_mirror_counters) == 256);
static_assert(offsetof(odp_mirror_counters, invalidations_by_reason) == 12 * 8);
static_assert(offsetof(odp_mirror_counters, events) == 20 * 8);
static_assert(offsetof(odp_mirror_counters, events_lost) == 21 * 8);
static_assert(sizeof(odp_mirror_stats) == 8 + 2 * 256);
static_assert(ODP_MIRROR_REASON_OTHER < ODP_MIRROR_REASON_SLOTS);

TEST(MirrorAbi, CAndCxxSeeTheSameStructSizes) {
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_EVENT), sizeof(odp_mirror_event));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_RING_HEADER), sizeof(odp_mirror_ring_header));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_RING_CONSUMER), sizeof(odp_mirror_ring_consumer));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_QUERY), sizeof(odp_mirror_query));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_REGISTER), sizeof(odp_mirror_register));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_UNREGISTER), sizeof(odp_mirror_unregister));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_FAULT), sizeof(odp_mirror_fault));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_SNAPSHOT), sizeof(odp_mirror_snapshot));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_COUNTERS), sizeof(odp_mirror_counters));
    EXPECT_EQ(odp_mirror_abi_c_size(ODP_ABI_STATS), sizeof(odp_mirror_stats));
}

TEST(MirrorAbi, IoctlNumbersCarryMagicNumberAndDirection) {
    const struct {
        odp_mirror_abi_struct which;
        unsigned long cmd;
        unsigned nr;
        unsigned dir;
        std::size_t size;
    } cases[] = {
        {ODP_ABI_QUERY, ODP_MIRROR_IOC_QUERY, 0, _IOC_READ | _IOC_WRITE, sizeof(odp_mirror_query)},
        {ODP_ABI_REGISTER, ODP_MIRROR_IOC_REGISTER, 1, _IOC_READ | _IOC_WRITE,
         sizeof(odp_mirror_register)},
        {ODP_ABI_UNREGISTER, ODP_MIRROR_IOC_UNREGISTER, 2, _IOC_WRITE,
         sizeof(odp_mirror_unregister)},
        {ODP_ABI_FAULT, ODP_MIRROR_IOC_FAULT, 3, _IOC_READ | _IOC_WRITE, sizeof(odp_mirror_fault)},
        {ODP_ABI_SNAPSHOT, ODP_MIRROR_IOC_SNAPSHOT, 4, _IOC_READ | _IOC_WRITE,
         sizeof(odp_mirror_snapshot)},
        {ODP_ABI_STATS, ODP_MIRROR_IOC_STATS, 5, _IOC_READ | _IOC_WRITE, sizeof(odp_mirror_stats)},
    };
    for (const auto& c : cases) {
        EXPECT_EQ(odp_mirror_abi_c_ioctl(c.which), c.cmd);
        EXPECT_EQ(_IOC_TYPE(c.cmd), ODP_MIRROR_IOC_MAGIC);
        EXPECT_EQ(_IOC_NR(c.cmd), c.nr);
        EXPECT_EQ(_IOC_DIR(c.cmd), c.dir);
        EXPECT_EQ(_IOC_SIZE(c.cmd), c.size);
    }
}

TEST(MirrorAbi, MmapOffsetsAreDistinctAndPageAlignedForAnyPageSize) {
    for (const unsigned long long page : {4096ULL, 16384ULL, 65536ULL}) {
        EXPECT_EQ(ODP_MIRROR_MMAP_RING % page, 0u);
        EXPECT_EQ(ODP_MIRROR_MMAP_CONSUMER % page, 0u);
        EXPECT_EQ(ODP_MIRROR_MMAP_GENERATIONS % page, 0u);
    }
    EXPECT_NE(ODP_MIRROR_MMAP_RING, ODP_MIRROR_MMAP_CONSUMER);
    EXPECT_NE(ODP_MIRROR_MMAP_CONSUMER, ODP_MIRROR_MMAP_GENERATIONS);
    EXPECT_GE(ODP_MIRROR_RING_EVENTS_OFFSET, sizeof(odp_mirror_ring_header));
    EXPECT_EQ(ODP_MIRROR_RING_EVENTS_OFFSET % sizeof(odp_mirror_event), 0u);
}

TEST(MirrorAbi, ReasonsAreDistinctAndNonZero) {
    const unsigned reasons[] = {ODP_MIRROR_REASON_UNMAP,      ODP_MIRROR_REASON_CLEAR,
                                ODP_MIRROR_REASON_PROTECTION, ODP_MIRROR_REASON_MIGRATION,
                                ODP_MIRROR_REASON_TEARDOWN,   ODP_MIRROR_REASON_OTHER};
    for (std::size_t i = 0; i < std::size(reasons); ++i) {
        EXPECT_NE(reasons[i], 0u);
        EXPECT_LT(reasons[i], static_cast<unsigned>(ODP_MIRROR_REASON_SLOTS));
        for (std::size_t j = i + 1; j < std::size(reasons); ++j) {
            EXPECT_NE(reasons[i], reasons[j]);
        }
    }
}

}  // namespace
