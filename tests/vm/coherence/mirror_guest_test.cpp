// The invalidation sources against the guest kernels (5.10 to 7.3): each
// mapping change the coherence tests make, seen (or, where documented in
// docs/sources.md, refused) by the module and by userfaultfd.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <odp_mirror.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <optional>

#include "../../unit/mirror_core/recording_listener.hpp"
#include "guest_env.hpp"

namespace odp {
namespace {

using test::Heard;
using test::RecordingListener;

const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));

Range range_of(void* address, std::size_t length) {
    const auto begin = reinterpret_cast<std::uintptr_t>(address);
    return Range{begin, begin + length};
}

void* map_anonymous(std::size_t length) {
    void* address =
        ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (address == MAP_FAILED) {
        throw std::runtime_error(std::string("mmap: ") + std::strerror(errno));
    }
    std::memset(address, 0x11, length);
    return address;
}

bool heard(const RecordingListener& listener, Range range, InvalidationReason reason) {
    for (const Heard& h : listener.heard()) {
        if (!h.all && h.range.overlaps(range) && h.reason == reason) {
            return true;
        }
    }
    return false;
}

bool heard_any(const RecordingListener& listener, Range range) {
    for (const Heard& h : listener.heard()) {
        if (h.all || h.range.overlaps(range)) {
            return true;
        }
    }
    return false;
}

class MirrorInGuest : public ::testing::TestWithParam<MonitorKind> {
  protected:
    void SetUp() override {
        MirrorOptions options;
        options.kind = GetParam();
        try {
            mirror_ = Mirror::acquire(options);
        } catch (const Error& error) {
            if (GetParam() == MonitorKind::Module && guest::module_expected()) {
                FAIL() << "the module was loaded for this kernel but does not work: "
                       << error.what();
            }
            GTEST_SKIP() << to_string(GetParam()) << " source unavailable here: " << error.what();
        }
    }
    void TearDown() override { mirror_.reset(); }

    [[nodiscard]] bool is_module() const { return GetParam() == MonitorKind::Module; }

    std::shared_ptr<Mirror> mirror_;
};

TEST_P(MirrorInGuest, MunmapThenMmapFixedIsAnUnmap) {
    void* address = map_anonymous(4 * page);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range_of(address, 4 * page), listener);
    ASSERT_EQ(::munmap(address, 4 * page), 0);
    ASSERT_EQ(::mmap(address, 4 * page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
              address);
    mirror_->synchronize();
    EXPECT_TRUE(heard(listener, range_of(address, 4 * page), InvalidationReason::Unmap));
    // And the new mapping, once armed, is watched too.
    listener.clear();
    watch.arm(range_of(address, 4 * page));
    ASSERT_EQ(::munmap(address, 4 * page), 0);
    mirror_->synchronize();
    EXPECT_TRUE(heard(listener, range_of(address, 4 * page), InvalidationReason::Unmap));
}

TEST_P(MirrorInGuest, MremapAwayAndBackIsSeen) {
    void* address = map_anonymous(4 * page);
    void* elsewhere = map_anonymous(4 * page);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range_of(address, 4 * page), listener);
    ASSERT_EQ(::mremap(address, 4 * page, 4 * page, MREMAP_MAYMOVE | MREMAP_FIXED, elsewhere),
              elsewhere);
    ASSERT_EQ(::mremap(elsewhere, 4 * page, 4 * page, MREMAP_MAYMOVE | MREMAP_FIXED, address),
              address);
    mirror_->synchronize();
    EXPECT_TRUE(heard(listener, range_of(address, 4 * page), InvalidationReason::Unmap));
    EXPECT_EQ(static_cast<unsigned char*>(address)[0], 0x11) << "the pages moved back";
    ::munmap(address, 4 * page);
}

TEST_P(MirrorInGuest, MadviseDontneedIsAClear) {
    void* address = map_anonymous(4 * page);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range_of(address, 4 * page), listener);
    ASSERT_EQ(::madvise(address, 4 * page, MADV_DONTNEED), 0);
    mirror_->synchronize();
    EXPECT_TRUE(heard(listener, range_of(address, 4 * page), InvalidationReason::Clear));
    ::munmap(address, 4 * page);
}

TEST_P(MirrorInGuest, ShrinkingBrkIsAnUnmap) {
    // Keep malloc off the brk heap meanwhile: it must not grow into our pages.
    ASSERT_EQ(::mallopt(M_MMAP_THRESHOLD, 0), 1);
    void* current = ::sbrk(0);
    const auto misalignment = reinterpret_cast<std::uintptr_t>(current) % page;
    const std::size_t pad = misalignment == 0 ? 0 : page - misalignment;
    ASSERT_NE(::sbrk(static_cast<intptr_t>(pad + 4 * page)), reinterpret_cast<void*>(-1));
    void* address = static_cast<char*>(current) + pad;
    std::memset(address, 0x11, 4 * page);
    RecordingListener listener;
    {
        const Mirror::Watch watch = mirror_->watch(range_of(address, 4 * page), listener);
        ASSERT_NE(::sbrk(-static_cast<intptr_t>(2 * page)), reinterpret_cast<void*>(-1));
        mirror_->synchronize();
        EXPECT_TRUE(heard(listener, range_of(static_cast<char*>(address) + 2 * page, 2 * page),
                          InvalidationReason::Unmap));
    }
    ::sbrk(-static_cast<intptr_t>(pad + 2 * page));
    ::mallopt(M_MMAP_THRESHOLD, 128 * 1024);
}

TEST_P(MirrorInGuest, ShmdtIsSeenByTheModuleAndRefusedByUserfaultfd) {
    const int id = ::shmget(IPC_PRIVATE, 4 * page, IPC_CREAT | 0600);
    ASSERT_GE(id, 0) << std::strerror(errno);
    void* address = ::shmat(id, nullptr, 0);
    ::shmctl(id, IPC_RMID, nullptr);
    ASSERT_NE(address, reinterpret_cast<void*>(-1));
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range_of(address, 4 * page), listener);
    if (is_module()) {
        EXPECT_TRUE(watch.unwatched().empty());
        ASSERT_EQ(::shmdt(address), 0);
        mirror_->synchronize();
        EXPECT_TRUE(heard(listener, range_of(address, 4 * page), InvalidationReason::Unmap));
    } else {
        ASSERT_EQ(watch.unwatched().size(), 1U) << "userfaultfd cannot see shmdt: must refuse";
        EXPECT_NE(watch.unwatched()[0].why.find("System V"), std::string::npos);
        try {
            watch.arm(range_of(address, 4 * page));
            ADD_FAILURE() << "arming System V shared memory must throw";
        } catch (const Error& error) {
            EXPECT_EQ(error.errno_value(), ENOTSUP);
        }
        ::shmdt(address);
    }
}

TEST_P(MirrorInGuest, ForkAndAParentWriteIsSeenByTheModule) {
    void* address = map_anonymous(4 * page);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range_of(address, 4 * page), listener);
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::close(pipe_fds[1]);
        char byte = 0;
        [[maybe_unused]] const ssize_t got = ::read(pipe_fds[0], &byte, 1);
        ::_exit(0);
    }
    std::memset(address, 0x55, 4 * page);  // copy-on-write break in the parent
    ::close(pipe_fds[1]);
    ::close(pipe_fds[0]);
    int status = 0;
    ::waitpid(child, &status, 0);
    mirror_->synchronize();
    if (is_module()) {
        EXPECT_TRUE(heard_any(listener, range_of(address, 4 * page)))
            << "fork write-protects the parent's pages: the module must report it";
    } else {
        // Documented blind spot (docs/sources.md): nothing to assert, but say it.
        std::cout << "[ note     ] userfaultfd heard " << listener.count()
                  << " events for fork + parent write (it cannot see copy-on-write)\n";
    }
    ::munmap(address, 4 * page);
}

TEST_P(MirrorInGuest, MprotectIsSeenByTheModuleOnly) {
    void* address = map_anonymous(4 * page);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range_of(address, 4 * page), listener);
    ASSERT_EQ(::mprotect(address, 4 * page, PROT_READ), 0);
    mirror_->synchronize();
    if (is_module()) {
        EXPECT_TRUE(heard(listener, range_of(address, 4 * page), InvalidationReason::Protection));
    } else {
        EXPECT_EQ(listener.count(), 0U) << "userfaultfd has no mprotect event";
    }
    ::munmap(address, 4 * page);
}

TEST_P(MirrorInGuest, ChangesOutsideEveryWatchAreNotDelivered) {
    void* watched = map_anonymous(2 * page);
    void* other = map_anonymous(2 * page);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range_of(watched, 2 * page), listener);
    ASSERT_EQ(::munmap(other, 2 * page), 0);
    mirror_->synchronize();
    EXPECT_EQ(listener.count(), 0U);
    ::munmap(watched, 2 * page);
}

// What register_address_space() needs in emulated mode: one watch over every
// address. The module clips it to the user address space; userfaultfd
// registers every anonymous/shmem mapping of the process and reports the rest.
TEST_P(MirrorInGuest, WatchingTheWholeAddressSpaceWorks) {
    RecordingListener listener;
    std::optional<Mirror::Watch> watch(
        mirror_->watch(Range{page, std::numeric_limits<std::uintptr_t>::max()}, listener));
    if (!is_module()) {
        EXPECT_FALSE(watch->unwatched().empty()) << "the executable is a file mapping";
    }
    void* address = map_anonymous(2 * page);
    watch->arm(range_of(address, 2 * page));
    ASSERT_EQ(::munmap(address, 2 * page), 0);
    mirror_->synchronize();
    EXPECT_TRUE(heard(listener, range_of(address, 2 * page), InvalidationReason::Unmap));
    watch.reset();
    // Unwatched again: no more events.
    void* later = map_anonymous(2 * page);
    const std::uint64_t before = mirror_->stats().events;
    ASSERT_EQ(::munmap(later, 2 * page), 0);
    mirror_->synchronize();
    EXPECT_EQ(mirror_->stats().events, before);
}

// The module's count of SNAPSHOTs by this process (arm()'s wait for changes
// in progress): every file of an address space shares its counters.
std::uint64_t module_snapshots() {
    const int fd = ::open("/dev/odp_mirror", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        throw std::runtime_error(std::string("open /dev/odp_mirror: ") + std::strerror(errno));
    }
    odp_mirror_stats stats{};
    stats.size = sizeof(stats);
    const int rc = ::ioctl(fd, ODP_MIRROR_IOC_STATS, &stats);
    const int error = errno;
    ::close(fd);
    if (rc != 0) {
        throw std::runtime_error(std::string("ODP_MIRROR_IOC_STATS: ") + std::strerror(error));
    }
    return stats.process.snapshots;
}

// Before a chunk is pinned, arm() waits for the region's changes in progress
// (SNAPSHOT), but only when one may have started since its last wait: the
// region's generation, bumped when a change starts, tells without a system
// call. Registering waits once (a change running when the notifier went in
// may never reach it), so that the first fault need not. A change right
// before arm() must make it wait even though its event has not been
// delivered yet.
TEST(ModuleArm, WaitsOnlyWhenTheRegionChangedSinceItsLastWait) {
    if (!guest::module_expected()) {
        GTEST_SKIP() << "odp_mirror.ko is not loaded in this guest";
    }
    MirrorOptions options;
    options.kind = MonitorKind::Module;
    const std::shared_ptr<Mirror> mirror = Mirror::acquire(options);
    auto* const address = static_cast<unsigned char*>(map_anonymous(4 * page));
    RecordingListener listener;
    const std::uint64_t before = module_snapshots();
    const Mirror::Watch watch = mirror->watch(range_of(address, 4 * page), listener);
    EXPECT_EQ(module_snapshots(), before + 1) << "registering waits once for changes in progress";
    const std::uint64_t armed_before = mirror->stats().armed_ranges;

    watch.arm(range_of(address, page));
    watch.arm(range_of(address, page));
    watch.arm(range_of(address + 2 * page, page));
    EXPECT_EQ(module_snapshots(), before + 1) << "nothing changed since the wait: none needed";

    ASSERT_EQ(::madvise(address + page, page, MADV_DONTNEED), 0);
    watch.arm(range_of(address + 3 * page, page));
    EXPECT_EQ(module_snapshots(), before + 2)
        << "the region changed (event not necessarily delivered yet): arm must wait";
    watch.arm(range_of(address, page));
    EXPECT_EQ(module_snapshots(), before + 2);

    mirror->synchronize();
    EXPECT_TRUE(heard(listener, range_of(address + page, page), InvalidationReason::Clear));
    EXPECT_EQ(mirror->stats().armed_ranges, armed_before + 5);
    ::munmap(address, 4 * page);
}

INSTANTIATE_TEST_SUITE_P(Sources, MirrorInGuest,
                         ::testing::Values(MonitorKind::Module, MonitorKind::Userfaultfd),
                         [](const auto& param_info) {
                             return std::string(to_string(param_info.param));
                         });

TEST(MirrorAutoInGuest, AutoPicksTheModuleWhenLoadedElseUserfaultfd) {
    const auto mirror = Mirror::acquire();
    std::cout << "[ auto     ] " << to_string(mirror->kind()) << ": " << mirror->description()
              << "\n";
    if (guest::module_expected()) {
        EXPECT_EQ(mirror->kind(), MonitorKind::Module);
    } else {
        EXPECT_EQ(mirror->kind(), MonitorKind::Userfaultfd);
    }
}

}  // namespace
}  // namespace odp
