#include <gtest/gtest.h>
#include <infiniband/verbs.h>

#include <cstdint>
#include <limits>
#include <odp/error.hpp>
#include <odp/stats.hpp>
#include <odp/types.hpp>

#include "test_support.hpp"

namespace odp {
namespace {

using test::expect_error;

TEST(Range, FromLengthIsHalfOpen) {
    const Range range = Range::from_length(std::uintptr_t{0x1000}, 0x2000);
    EXPECT_EQ(range.begin, 0x1000U);
    EXPECT_EQ(range.end, 0x3000U);
    EXPECT_EQ(range.length(), 0x2000U);
    EXPECT_TRUE(range.contains(std::uintptr_t{0x2fff}));
    EXPECT_FALSE(range.contains(std::uintptr_t{0x3000}));
}

TEST(Range, ZeroLengthFailsLoudly) {
    const std::string message =
        expect_error(EINVAL, [] { (void)Range::from_length(std::uintptr_t{0x1000}, 0); });
    EXPECT_NE(message.find("length 0"), std::string::npos) << message;
}

TEST(Range, OverflowFailsLoudly) {
    constexpr auto top = std::numeric_limits<std::uintptr_t>::max();
    expect_error(EOVERFLOW, [] { (void)Range::from_length(top - 10, 100); });
    expect_error(EOVERFLOW, [] { (void)Range::from_length(top - 99, 100); });
}

TEST(Range, CheckedRejectsEmptyAndReversed) {
    expect_error(EINVAL, [] { (void)Range::checked(10, 10); });
    expect_error(EINVAL, [] { (void)Range::checked(11, 10); });
    EXPECT_EQ(Range::checked(1, 2).length(), 1U);
}

TEST(Range, IntersectAndOverlap) {
    const Range a{100, 200};
    const Range b{150, 300};
    EXPECT_TRUE(a.overlaps(b));
    EXPECT_EQ(a.intersect(b), (Range{150, 200}));
    EXPECT_TRUE(a.intersect(Range{200, 300}).empty());
    EXPECT_FALSE(a.overlaps(Range{200, 300}));
    EXPECT_TRUE(a.contains(Range{120, 200}));
}

TEST(Names, EnumsPrint) {
    EXPECT_EQ(to_string(Mode::Emulated), "emulated");
    EXPECT_EQ(to_string(Mode::Auto), "auto");
    EXPECT_EQ(to_string(InvalidationReason::Overflow), "overflow");
    EXPECT_EQ(to_string(Access::LocalWrite | Access::RemoteRead), "LocalWrite|RemoteRead");
    EXPECT_EQ(to_string(Access::None), "None");
}

TEST(Names, ModesParseBack) {
    for (const Mode mode : {Mode::Pinned, Mode::Native, Mode::Emulated, Mode::Auto}) {
        EXPECT_EQ(parse_mode(to_string(mode)), mode);
    }
    const std::string message = expect_error(EINVAL, [] { (void)parse_mode("odp"); });
    EXPECT_NE(message.find("pinned, native, emulated or auto"), std::string::npos) << message;
}

TEST(Access, MapsToVerbsFlags) {
    EXPECT_EQ(to_ibv_access(Access::None), 0);
    EXPECT_EQ(to_ibv_access(Access::RemoteWrite), IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE);
    EXPECT_EQ(to_ibv_access(Access::RemoteRead), IBV_ACCESS_REMOTE_READ);
    EXPECT_EQ(to_ibv_access(Access::All), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                                              IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC);
}

TEST(Error, CarriesErrnoAndMessage) {
    try {
        throw_error(ENOMEM, "ibv_reg_mr(0x1000, 4 KiB) on fake0");
    } catch (const std::system_error& error) {
        EXPECT_EQ(error.code().value(), ENOMEM);
        EXPECT_EQ(error.code().category(), std::generic_category());
        EXPECT_NE(std::string(error.what()).find("ibv_reg_mr(0x1000, 4 KiB) on fake0"),
                  std::string::npos);
    }
}

TEST(Error, BackPressureIsAnError) {
    try {
        throw BackPressure(EAGAIN, "budget full");
    } catch (const Error& error) {
        EXPECT_EQ(error.errno_value(), EAGAIN);
    }
}

TEST(Error, CheckHelpers) {
    errno = EBADF;
    expect_error(EBADF, [] { check_syscall(-1, "close(42)"); });
    expect_error(EINVAL, [] { check_rc(EINVAL, "ibv_modify_qp"); });
    EXPECT_NO_THROW(check_rc(0, "ok"));
    errno = ENOENT;
    expect_error(ENOENT, [] { (void)check_ptr(static_cast<int*>(nullptr), "lookup"); });
}

TEST(Format, BytesAndAddresses) {
    EXPECT_EQ(format_bytes(0), "0 B");
    EXPECT_EQ(format_bytes(4096), "4 KiB");
    EXPECT_EQ(format_bytes(2 * test::MiB), "2 MiB");
    EXPECT_EQ(format_bytes(std::uint64_t{1} << 40), "1 TiB");
    EXPECT_EQ(format_bytes(1536), "1.5 KiB");
    EXPECT_EQ(format_address(0x7f00), "0x7f00");
}

TEST(Stats, PrintsAndJson) {
    Stats stats;
    stats.hits = 7;
    stats.chunk_faults = 2;
    stats.invalidations[static_cast<std::size_t>(InvalidationReason::Unmap)] = 3;
    stats.peak_pinned_bytes = 4096;
    const std::string text = to_string(stats);
    EXPECT_NE(text.find("hits 7\n"), std::string::npos) << text;
    EXPECT_NE(text.find("invalidations 3 unmap=3"), std::string::npos) << text;
    const std::string json = to_json(stats);
    EXPECT_NE(json.find("\"hits\":7,"), std::string::npos) << json;
    EXPECT_NE(json.find("\"chunk_faults\":2,"), std::string::npos) << json;
    EXPECT_NE(json.find("\"invalidations\":{\"unmap\":3,\"clear\":0"), std::string::npos) << json;
    EXPECT_NE(json.find("\"peak_pinned_bytes\":4096"), std::string::npos) << json;
    EXPECT_EQ(json.back(), '}');
    EXPECT_EQ(stats.total_invalidations(), 3U);
    EXPECT_EQ(stats.invalidations_of(InvalidationReason::Unmap), 3U);
}

}  // namespace
}  // namespace odp
