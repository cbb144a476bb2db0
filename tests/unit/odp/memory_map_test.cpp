#include "memory_map.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <odp/error.hpp>

#include "test_support.hpp"

namespace odp::detail {
namespace {

constexpr std::string_view sample =
    "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon\n"
    "00651000-00652000 r--p 00051000 08:02 173521      /usr/bin/dbus-daemon\n"
    "00652000-00655000 rw-p 00052000 08:02 173521      /usr/bin/dbus-daemon\n"
    "00655000-00700000 rw-p 00000000 00:00 0\n"
    "00800000-00900000 ---p 00000000 00:00 0\n"
    "7ffd1000-7ffd3000 r--p 00000000 00:00 0           [vvar]\n";

TEST(MemoryMap, ParsesLinesAndPermissions) {
    const std::vector<Mapping> maps = parse_maps(sample);
    ASSERT_EQ(maps.size(), 6U);
    EXPECT_EQ(maps[0].range, (Range{0x400000, 0x452000}));
    EXPECT_TRUE(maps[0].readable);
    EXPECT_FALSE(maps[0].writable);
    EXPECT_TRUE(maps[2].writable);
    EXPECT_FALSE(maps[4].readable);
}

TEST(MemoryMap, AccessibleRangesMergeAdjacentAndSkipHoles) {
    const std::vector<Mapping> maps = parse_maps(sample);
    const auto writable = accessible_ranges(maps, Range{0x600000, 0x900000}, true);
    ASSERT_EQ(writable.size(), 1U);
    EXPECT_EQ(writable[0], (Range{0x652000, 0x700000}));  // two adjacent rw mappings merged
    const auto readable = accessible_ranges(maps, Range{0x400000, 0x700000}, false);
    ASSERT_EQ(readable.size(), 2U);
    EXPECT_EQ(readable[0], (Range{0x400000, 0x452000}));
    EXPECT_EQ(readable[1], (Range{0x651000, 0x700000}));
}

TEST(MemoryMap, GarbageIsAnError) {
    test::expect_error(EPROTO, [] { (void)parse_maps("not a maps line\n"); });
    test::expect_error(EPROTO, [] { (void)parse_maps("2000-1000 rw-p 0 0:0 0\n"); });
}

TEST(MemoryMap, SeesOwnHoleAndProtNone) {
    test::Mapping buffer(4 * test::MiB);
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    ASSERT_EQ(munmap(buffer.data() + test::MiB, page), 0);
    ASSERT_EQ(mprotect(buffer.data() + 2 * test::MiB, page, PROT_NONE), 0);
    const Range all = Range::from_length(buffer.address(), buffer.size());
    const auto ranges = accessible_ranges(all, true);
    ASSERT_EQ(ranges.size(), 3U);
    EXPECT_EQ(ranges[0], (Range{buffer.address(), buffer.address() + test::MiB}));
    EXPECT_EQ(ranges[1],
              (Range{buffer.address() + test::MiB + page, buffer.address() + 2 * test::MiB}));
    EXPECT_EQ(ranges[2], (Range{buffer.address() + 2 * test::MiB + page, all.end}));
}

}  // namespace
}  // namespace odp::detail
