// Host tests of odp-stress's mapping changes (no RDMA device, no guest).
#include "mapping_changes.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace odp::stress {
namespace {

using namespace std::chrono_literals;

// PROT_NONE placeholders over every free gap of at least `length` bytes
// between `above` and 128 MiB below the stack (mmap_base, the top of what
// mmap(NULL) hands out, is at least that far below it). Then the kernel's
// top-down search gives mmap(NULL, length) the highest gap below `above`.
class GapFiller {
  public:
    GapFiller(std::uintptr_t above, std::size_t length) {
        std::ifstream maps("/proc/self/maps");
        std::vector<std::pair<std::uintptr_t, std::uintptr_t>> mappings;
        std::uintptr_t stack = 0;
        for (std::string line; std::getline(maps, line);) {
            std::uintptr_t begin = 0;
            std::uintptr_t end = 0;
            char dash = 0;
            std::istringstream fields(line);
            fields >> std::hex >> begin >> dash >> end;
            mappings.emplace_back(begin, end);
            if (line.ends_with("[stack]")) {
                stack = begin;
            }
        }
        const std::uintptr_t limit = stack - (std::uintptr_t{128} << 20);
        for (std::size_t i = 0; i + 1 < mappings.size(); ++i) {
            const std::uintptr_t begin = std::max(mappings[i].second, above);
            const std::uintptr_t end = std::min(mappings[i + 1].first, limit);
            if (begin < end && end - begin >= length) {
                void* const placed = ::mmap(
                    reinterpret_cast<void*>(begin), end - begin, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
                if (placed == reinterpret_cast<void*>(begin)) {
                    placeholders_.emplace_back(placed, end - begin);
                }
            }
        }
    }
    ~GapFiller() {
        for (const auto& [address, length] : placeholders_) {
            ::munmap(address, length);
        }
    }
    GapFiller(const GapFiller&) = delete;
    GapFiller& operator=(const GapFiller&) = delete;

  private:
    std::vector<std::pair<void*, std::size_t>> placeholders_;
};

// What the hooks of the test below see and do (hooks are plain functions).
struct HoleRace {
    const Buffer* buffer = nullptr;
    std::size_t moved_offset = 0;  // the mremap's range in the buffer
    std::size_t length = 0;
    unsigned char* hole = nullptr;
    bool hole_is_next_place = false;  // mmap(NULL, length) gave the hole
    std::atomic<const void*> place{nullptr};
    std::atomic<bool> mremap_done{false};
    std::atomic<bool> hole_refilled{false};
    std::thread mremap_thread;
};
HoleRace race;

void on_change_point(ChangePoint point, const void* address) {
    if (point == ChangePoint::HoleOpen) {
        // The munmap-mmap's hole is open: where would the kernel place a
        // mapping of its length now?
        void* const probe =
            ::mmap(nullptr, race.length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        race.hole_is_next_place = probe == race.hole;
        if (probe != MAP_FAILED) {
            ::munmap(probe, race.length);
        }
        // Another thread's mremap of another range of the buffer, meanwhile.
        race.mremap_thread = std::thread([] {
            std::mt19937_64 random(1);
            (void)apply_change(ChangeKind::Mremap, *race.buffer, race.moved_offset, race.length,
                               random, false);
            race.mremap_done = true;
        });
        const auto deadline = std::chrono::steady_clock::now() + 500ms;
        while (!race.mremap_done && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
        }
        return;  // the munmap-mmap maps the range again
    }
    race.place = address;
    if (address == race.hole) {
        // The place is the other change's hole: let that change map its
        // range again before the pages move (the order that crashed).
        const auto deadline = std::chrono::steady_clock::now() + 2s;
        while (!race.hole_refilled && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
        }
    }
}

// Two threads' changes at once: a munmap-mmap's hole is open while another
// thread's mremap chooses its place to move to (mmap(NULL)). If the kernel
// gives it the hole, the munmap-mmap refills the hole, the mremap moves its
// pages over the fresh ones and back, and the buffer keeps a hole. Filling
// the gaps above makes the kernel choose the hole every time; the hooks hold
// that order. (odp-stress never showed it: its places lay above the buffers.)
TEST(MappingChanges, AMremapNeverMovesPagesIntoTheHoleOfAnotherChange) {
    const std::size_t page = page_size();
    const Buffer buffer("test", huge_page_size);
    for (std::size_t at = 0; at < buffer.length(); ++at) {
        buffer.data()[at] = static_cast<unsigned char>(at * 7 + at / page);
    }
    race.buffer = &buffer;
    race.length = 12 * page;
    race.moved_offset = 16 * page;
    const std::size_t hole_offset = huge_page_size / 2;
    race.hole = buffer.data() + hole_offset;
    const GapFiller filler(reinterpret_cast<std::uintptr_t>(race.hole + race.length), race.length);

    change_hook = on_change_point;
    std::mt19937_64 random(2);
    const ChangeResult refill =
        apply_change(ChangeKind::MunmapMmap, buffer, hole_offset, race.length, random, false);
    race.hole_refilled = true;
    race.mremap_thread.join();
    change_hook = nullptr;

    ASSERT_TRUE(refill.applied) << refill.failure;
    if (!race.hole_is_next_place) {
        GTEST_SKIP() << "could not make the kernel place the next mapping in the hole here "
                        "(not a top-down address space?)";
    }
    EXPECT_NE(race.place.load(), race.hole)
        << "the mremap's place to move to was the hole of a munmap-mmap still in progress";
    // Every page of the buffer is mapped (mincore fails with ENOMEM on a hole)
    // and the moved range kept its bytes.
    std::vector<unsigned char> resident(buffer.length() / page);
    EXPECT_EQ(::mincore(buffer.data(), buffer.length(), resident.data()), 0)
        << "a hole in the buffer: " << std::strerror(errno);
    for (std::size_t at = race.moved_offset; at < race.moved_offset + race.length; ++at) {
        if (::mincore(buffer.data() + at / page * page, page, resident.data()) != 0) {
            ADD_FAILURE() << "the moved range is unmapped at offset " << at;
            break;
        }
        if (buffer.data()[at] != static_cast<unsigned char>(at * 7 + at / page)) {
            ADD_FAILURE() << "the moved range lost its bytes at offset " << at;
            break;
        }
    }
}

// The 7.3 SIGSEGV (docs/results/soak.md): since Linux 6.17 mremap moves a
// range that spans several mappings, but a userfaultfd-armed one after the
// first fails it with EFAULT, and what came before is moved already. The
// change then unmapped its place to move to, moved pages and all: a hole in
// the buffer, where the next write died. Here the range's first 4 pages are
// a mapping of their own and the other 8 are registered with a userfaultfd
// (write-protect mode, as libodp's source registers them).
TEST(MappingChanges, AMremapThatFailsPartwayLeavesNoHole) {
    const std::size_t page = page_size();
    const Buffer buffer("test", huge_page_size);
    const auto expected = [&](std::size_t at) { return static_cast<unsigned char>(at * 5 + 3); };
    for (std::size_t at = 0; at < buffer.length(); ++at) {
        buffer.data()[at] = expected(at);
    }
    const std::size_t offset = 64 * page;
    const std::size_t length = 12 * page;
    int uffd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
    if (uffd < 0) {
        uffd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC));
    }
    if (uffd < 0) {
        GTEST_SKIP() << "no userfaultfd here: " << std::strerror(errno);
    }
    uffdio_api api{};
    api.api = UFFD_API;
    uffdio_register registration{};
    registration.range.start = reinterpret_cast<std::uintptr_t>(buffer.data() + offset + 4 * page);
    registration.range.len = 8 * page;
    registration.mode = UFFDIO_REGISTER_MODE_WP;
    if (::ioctl(uffd, UFFDIO_API, &api) != 0 ||
        ::ioctl(uffd, UFFDIO_REGISTER, &registration) != 0) {
        const int error = errno;
        ::close(uffd);
        GTEST_SKIP() << "cannot register anonymous memory in write-protect mode here: "
                     << std::strerror(error);
    }

    std::mt19937_64 random(3);
    const ChangeResult result =
        apply_change(ChangeKind::Mremap, buffer, offset, length, random, false);
    ::close(uffd);

    std::cout << "mremap of 4 plain + 8 armed pages: "
              << (result.applied ? "moved and back" : result.failure) << "\n";
    std::vector<unsigned char> resident(buffer.length() / page);
    ASSERT_EQ(::mincore(buffer.data(), buffer.length(), resident.data()), 0)
        << "a hole in the buffer after \"" << result.failure << "\": " << std::strerror(errno);
    if (!result.zeroed) {
        for (std::size_t at = offset; at < offset + length; ++at) {
            ASSERT_EQ(buffer.data()[at], expected(at)) << "offset " << at << " lost its byte";
        }
    }
}

}  // namespace
}  // namespace odp::stress
