#include "memory_map.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <odp/error.hpp>
#include <ostream>
#include <string>

#include "test_support.hpp"

namespace odp::detail {

// For gtest's messages.
static void PrintTo(const Mapping& mapping, std::ostream* out) {
    *out << format_address(mapping.range.begin) << "-" << format_address(mapping.range.end) << " "
         << mapping.permissions << " r=" << mapping.readable << " w=" << mapping.writable << " '"
         << mapping.path << "'";
}

static void PrintTo(MapsReader reader, std::ostream* out) {
    *out << (reader == MapsReader::Auto ? "Auto" : reader == MapsReader::Query ? "Query" : "Text");
}

namespace {

constexpr std::string_view sample =
    "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon\n"
    "00651000-00652000 r--p 00051000 08:02 173521      /usr/bin/dbus-daemon\n"
    "00652000-00655000 rw-p 00052000 08:02 173521      /usr/bin/dbus-daemon\n"
    "00655000-00700000 rw-p 00000000 00:00 0 \n"
    "00800000-00900000 ---p 00000000 00:00 0\n"
    "01000000-01100000 rw-p 00000000 00:00 0                                  [heap]\n"
    "7f0000000000-7f0000200000 rw-s 00000000 00:01 32768                      /SYSV00000000 "
    "(deleted)\n"
    "7f0000200000-7f0000201000 r--p 00001000 fd:01 1234567                    /home/a b/my  "
    "lib.so\n"
    "7f0000201000-7f0000202000 rw-s 00000000 00:01 4321                       /memfd:ring "
    "(deleted)\n"
    "7f0000202000-7f0000203000 rw-p 00000000 00:00 0                          [anon:odp pool]\n"
    "7ffd1000-7ffd3000 r--p 00000000 00:00 0                                  [vvar]";  // no '\n'

TEST(MemoryMap, ParsesLinesAndPermissions) {
    const std::vector<Mapping> maps = parse_maps(sample);
    ASSERT_EQ(maps.size(), 11U);
    EXPECT_EQ(maps[0].range, (Range{0x400000, 0x452000}));
    EXPECT_EQ(maps[0].permissions, "r-xp");
    EXPECT_TRUE(maps[0].readable);
    EXPECT_FALSE(maps[0].writable);
    EXPECT_EQ(maps[0].path, "/usr/bin/dbus-daemon");
    EXPECT_TRUE(maps[2].writable);
    EXPECT_EQ(maps[3].path, "");  // anonymous, with the trailing space of Linux 4.x+
    EXPECT_EQ(maps[4].path, "");  // anonymous, without it
    EXPECT_FALSE(maps[4].readable);
    EXPECT_EQ(maps[4].permissions, "---p");
    EXPECT_EQ(maps[5].path, "[heap]");
}

TEST(MemoryMap, ParsesNamesWithSpacesDeletedAndSysV) {
    const std::vector<Mapping> maps = parse_maps(sample);
    ASSERT_EQ(maps.size(), 11U);
    EXPECT_EQ(maps[6].path, "/SYSV00000000 (deleted)");
    EXPECT_EQ(maps[6].permissions, "rw-s");
    EXPECT_TRUE(maps[6].path.starts_with("/SYSV"));  // what the userfaultfd source checks
    EXPECT_EQ(maps[7].path, "/home/a b/my  lib.so");
    EXPECT_EQ(maps[8].path, "/memfd:ring (deleted)");
    EXPECT_EQ(maps[9].path, "[anon:odp pool]");
    EXPECT_EQ(maps[10].range, (Range{0x7ffd1000, 0x7ffd3000}));
    EXPECT_EQ(maps[10].path, "[vvar]");
}

TEST(MemoryMap, ParseKeepsWhatOverlaps) {
    const std::vector<Mapping> maps = parse_maps(sample, Range{0x451000, 0x652001});
    ASSERT_EQ(maps.size(), 3U);
    EXPECT_EQ(maps[0].range, (Range{0x400000, 0x452000}));  // whole mappings, not clipped
    EXPECT_EQ(maps[2].range, (Range{0x652000, 0x655000}));
    EXPECT_TRUE(parse_maps(sample, Range{0x452000, 0x651000}).empty());
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

TEST(MemoryMap, MalformedLinesAreErrors) {
    for (const char* line : {
             "not a maps line\n",
             "2000-1000 rw-p 0 0:0 0\n",           // begin after end
             "1000-1000 rw-p 0 0:0 0\n",           // empty
             "1000 rw-p 00000000 00:00 0\n",       // no end
             "1000-2000\n",                        // nothing after the range
             "1000-2000 rw-p\n",                   // no offset, device, inode
             "1000-2000 rw 00000000 00:00 0\n",    // short permissions
             "1000-2000 rw-p 00000000 0000 0\n",   // device without ':'
             "1000-2000 rw-p 00000000 00:00 x\n",  // inode not a number
             "1000-2000 rw-p 00000000 00:00 0x [heap]\n",
             "1000-zz00 rw-p 00000000 00:00 0\n",
             "-2000 rw-p 00000000 00:00 0\n",
         }) {
        SCOPED_TRACE(line);
        const std::string message = test::expect_error(EPROTO, [&] { (void)parse_maps(line); });
        EXPECT_NE(message.find("/proc/self/maps"), std::string::npos) << message;
    }
    // A bad line anywhere is an error, even outside `within`.
    test::expect_error(EPROTO, [] {
        (void)parse_maps("1000-2000 rw-p 00000000 00:00 0\nbad\n", Range{0x1000, 0x2000});
    });
    EXPECT_TRUE(parse_maps("").empty());
    EXPECT_TRUE(parse_maps("\n\n").empty());
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

std::string kernel_release() {
    utsname name{};
    return uname(&name) == 0 ? std::string(name.release) : std::string("?");
}

// A known layout of adjacent mappings, page by page:
//   0-1 r--p anonymous     2-3 rw-p anonymous       4-5 r-xp anonymous
//   6-7 rw-s shared anonymous ("/dev/zero (deleted)")
//   8-9 r--s memfd "odp map test" ("/memfd:odp map test (deleted)")
//   10-11 r--p a file whose path has spaces
//   12-13 rw-s System V shared memory ("/SYSV00000000 (deleted)"), if available
//   14 ---p, 15 a hole, 16-17 ---p
class KnownLayout {
  public:
    static constexpr std::size_t pages = 18;

    KnownLayout() : page_(static_cast<std::size_t>(sysconf(_SC_PAGESIZE))) {
        void* raw = mmap(nullptr, pages * page_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) {
            throw_errno("mmap layout reservation");
        }
        base_ = static_cast<char*>(raw);
        map_anonymous(0, PROT_READ, MAP_PRIVATE);
        map_anonymous(2, PROT_READ | PROT_WRITE, MAP_PRIVATE);
        map_anonymous(4, PROT_READ | PROT_EXEC, MAP_PRIVATE);
        map_anonymous(6, PROT_READ | PROT_WRITE, MAP_SHARED);

        const int memfd = memfd_create("odp map test", MFD_CLOEXEC);
        check_syscall(memfd, "memfd_create");
        check_syscall(ftruncate(memfd, static_cast<off_t>(2 * page_)), "ftruncate memfd");
        map_file(8, memfd, PROT_READ, MAP_SHARED);
        close(memfd);

        char file_template[] = "/tmp/odp maps test XXXXXX";
        const int file = mkstemp(file_template);
        check_syscall(file, "mkstemp in /tmp");
        file_path_ = file_template;
        check_syscall(ftruncate(file, static_cast<off_t>(2 * page_)), "ftruncate file");
        map_file(10, file, PROT_READ, MAP_PRIVATE);
        close(file);

        const int shm = shmget(IPC_PRIVATE, 2 * page_, IPC_CREAT | 0600);
        if (shm >= 0) {
            void* at = shmat(shm, base_ + 12 * page_, SHM_REMAP);
            shmctl(shm, IPC_RMID, nullptr);  // gone once detached
            if (at == reinterpret_cast<void*>(-1)) {
                throw_errno("shmat(SHM_REMAP)");
            }
            sysv_ = true;
        } else {
            sysv_error_ = errno;  // no System V IPC in this sandbox: that mapping stays ---p
        }
        check_syscall(munmap(base_ + 15 * page_, page_), "munmap the hole");
    }
    KnownLayout(const KnownLayout&) = delete;
    KnownLayout& operator=(const KnownLayout&) = delete;
    ~KnownLayout() {
        if (sysv_) {
            shmdt(base_ + 12 * page_);
        }
        munmap(base_, pages * page_);
        unlink(file_path_.c_str());
    }

    [[nodiscard]] Range all() const { return range(0, pages); }
    [[nodiscard]] Range range(std::size_t first, std::size_t end) const {
        const auto base = reinterpret_cast<std::uintptr_t>(base_);
        return Range{base + first * page_, base + end * page_};
    }
    [[nodiscard]] bool has_sysv() const noexcept { return sysv_; }
    [[nodiscard]] int sysv_error() const noexcept { return sysv_error_; }

    [[nodiscard]] std::vector<Mapping> expected() const {
        std::vector<Mapping> maps{
            {range(0, 2), true, false, "r--p", ""},
            {range(2, 4), true, true, "rw-p", ""},
            {range(4, 6), true, false, "r-xp", ""},
            {range(6, 8), true, true, "rw-s", "/dev/zero (deleted)"},
            {range(8, 10), true, false, "r--s", "/memfd:odp map test (deleted)"},
            {range(10, 12), true, false, "r--p", file_path_},
        };
        if (sysv_) {
            maps.push_back({range(12, 14), true, true, "rw-s", "/SYSV00000000 (deleted)"});
            maps.push_back({range(14, 15), false, false, "---p", ""});
        } else {
            maps.push_back({range(12, 15), false, false, "---p", ""});
        }
        maps.push_back({range(16, 18), false, false, "---p", ""});
        return maps;
    }

  private:
    void map_anonymous(std::size_t first, int protection, int sharing) {
        void* at = mmap(base_ + first * page_, 2 * page_, protection,
                        sharing | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (at == MAP_FAILED) {
            throw_errno("mmap anonymous part of the layout");
        }
    }
    void map_file(std::size_t first, int fd, int protection, int sharing) {
        void* at = mmap(base_ + first * page_, 2 * page_, protection, sharing | MAP_FIXED, fd, 0);
        if (at == MAP_FAILED) {
            throw_errno("mmap file part of the layout");
        }
    }

    std::size_t page_;
    char* base_ = nullptr;
    std::string file_path_;
    bool sysv_ = false;
    int sysv_error_ = 0;
};

class MemoryMapReader : public testing::TestWithParam<MapsReader> {
  protected:
    void SetUp() override {
        if (GetParam() == MapsReader::Query && !procmap_query_supported()) {
            GTEST_SKIP() << "kernel " << kernel_release()
                         << " has no PROCMAP_QUERY ioctl (Linux 6.11+): only the text of "
                            "/proc/self/maps is read here";
        }
    }
};

TEST_P(MemoryMapReader, ReadsAKnownLayout) {
    const KnownLayout layout;
    if (!layout.has_sysv()) {
        std::cerr << "note: no System V shared memory here (shmget: "
                  << std::strerror(layout.sysv_error())
                  << "); that part of the layout is left out\n";
    }
    const std::vector<Mapping> expected = layout.expected();
    EXPECT_EQ(read_mappings(layout.all(), GetParam()), expected);

    // Mappings that overlap, whole; a range in the hole finds nothing.
    const std::vector<Mapping> middle = read_mappings(layout.range(1, 3), GetParam());
    ASSERT_EQ(middle.size(), 2U);
    EXPECT_EQ(middle[0], expected[0]);
    EXPECT_EQ(middle[1], expected[1]);
    EXPECT_TRUE(read_mappings(layout.range(15, 16), GetParam()).empty());
    EXPECT_EQ(read_mappings(layout.range(14, 17), GetParam()).size(), 2U);

    std::vector<Range> writable{layout.range(2, 4), layout.range(6, 8)};
    if (layout.has_sysv()) {
        writable.push_back(layout.range(12, 14));
    }
    EXPECT_EQ(accessible_ranges(read_mappings(layout.all(), GetParam()), layout.all(), true),
              writable);
}

TEST_P(MemoryMapReader, ForkedChildReadsItsOwnMappings) {
    // The descriptor the query keeps open describes the mm of the process
    // that opened it: a child must not see its parent's mappings through it.
    test::Mapping buffer(4 * test::MiB);
    const Range all = Range::from_length(buffer.address(), buffer.size());
    ASSERT_EQ(read_mappings(all, GetParam()).size(), 1U);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        int status = 10;
        try {
            munmap(buffer.data() + test::MiB, test::MiB);
            status = read_mappings(all, GetParam()).size() == 2 ? 0 : 11;
        } catch (...) {
            status = 12;
        }
        _exit(status);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "11: the child saw the wrong mappings, 12: it threw";
    EXPECT_EQ(read_mappings(all, GetParam()).size(), 1U);  // the parent's are unchanged
}

INSTANTIATE_TEST_SUITE_P(Readers, MemoryMapReader,
                         testing::Values(MapsReader::Auto, MapsReader::Text, MapsReader::Query),
                         [](const testing::TestParamInfo<MapsReader>& param) {
                             switch (param.param) {
                                 case MapsReader::Auto:
                                     return "Auto";
                                 case MapsReader::Text:
                                     return "Text";
                                 case MapsReader::Query:
                                     return "Query";
                             }
                             return "Unknown";
                         });

// Both readers, on whichever kernel runs this: with PROCMAP_QUERY (Linux
// 6.11+) the ioctl and the text must agree; without it Query says so and Auto
// reads the text. vm.coherence runs this case in the 6.1 guest (no ioctl) and
// the 6.12 and 7.3 guests (ioctl), so both branches run in CI.
TEST(MemoryMap, QueryAgreesWithTextOrSaysTheKernelLacksIt) {
    const KnownLayout layout;
    if (!procmap_query_supported()) {
        const std::string message = test::expect_error(ENOTSUP, [] {
            (void)read_mappings(Range{0, 4096}, MapsReader::Query);
        });
        EXPECT_NE(message.find("6.11"), std::string::npos) << message;
        EXPECT_EQ(read_mappings(layout.all()), read_mappings(layout.all(), MapsReader::Text));
        return;
    }
    // Everything below the top half, which holds [vsyscall]: a gate area that
    // only the text lists.
    const Range user{0, std::uintptr_t{1} << 63};
    std::vector<Mapping> query;
    std::vector<Mapping> text;
    for (int attempt = 0; attempt < 5; ++attempt) {
        // Allocations between the two reads may move the heap: read again.
        query = read_mappings(user, MapsReader::Query);
        text = read_mappings(user, MapsReader::Text);
        if (query == text) {
            break;
        }
    }
    EXPECT_EQ(query, text);
    EXPECT_GT(query.size(), layout.expected().size());  // the program's own mappings too
    EXPECT_EQ(read_mappings(layout.all(), MapsReader::Query),
              read_mappings(layout.all(), MapsReader::Text));
}

}  // namespace
}  // namespace odp::detail
