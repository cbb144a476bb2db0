// odp::Mirror with the userfaultfd source against the running kernel.
// Asio's fences under -fsanitize=thread: see odp/src/mirror.cpp.
#if defined(__SANITIZE_THREAD__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wtsan"
#endif
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <cstring>
#include <future>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <optional>
#include <vector>

#include "../mirror_core/recording_listener.hpp"

namespace odp {
namespace {

using namespace std::chrono_literals;
using test::Heard;
using test::RecordingListener;

const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));

// An anonymous private mapping owned by the test. Pages it unmaps (or moves
// away) are forgotten: once gone, their addresses may be mapped again by
// anyone (the sanitizers' runtime reuses such a page for a thread's dynamic
// TLS block), so the destructor must never unmap them a second time.
class Anonymous {
  public:
    explicit Anonymous(std::size_t pages) : length_(pages * page), gone_(pages, false) {
        void* address =
            ::mmap(nullptr, length_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (address == MAP_FAILED) {
            throw std::runtime_error(std::string("mmap: ") + std::strerror(errno));
        }
        begin_ = reinterpret_cast<std::uintptr_t>(address);
    }
    Anonymous(const Anonymous&) = delete;
    Anonymous& operator=(const Anonymous&) = delete;
    ~Anonymous() {
        for (std::size_t index = 0; index < gone_.size(); ++index) {
            if (!gone_[index]) {
                ::munmap(address(index), page);
            }
        }
    }
    // munmap() of `count` pages from `first`; forgets them when it succeeds.
    int unmap(std::size_t first, std::size_t count) {
        const int result = ::munmap(address(first), count * page);
        if (result == 0) {
            forget(first, count);
        }
        return result;
    }
    // The pages left this mapping some other way (mremap).
    void forget(std::size_t first, std::size_t count) {
        std::fill_n(gone_.begin() + static_cast<std::ptrdiff_t>(first), count, true);
    }
    [[nodiscard]] void* address(std::size_t page_index = 0) const {
        return reinterpret_cast<void*>(begin_ + page_index * page);
    }
    [[nodiscard]] Range range() const { return Range{begin_, begin_ + length_}; }
    [[nodiscard]] Range pages(std::size_t first, std::size_t count) const {
        return Range{begin_ + first * page, begin_ + (first + count) * page};
    }

  private:
    std::size_t length_;
    std::uintptr_t begin_ = 0;
    std::vector<bool> gone_;
};

template <typename Call>
int errno_of(const Call& call) {
    try {
        call();
    } catch (const Error& error) {
        return error.errno_value();
    }
    return 0;
}

bool heard_exactly(const RecordingListener& listener, Range range, InvalidationReason reason) {
    for (const Heard& heard : listener.heard()) {
        if (!heard.all && heard.range == range && heard.reason == reason) {
            return true;
        }
    }
    return false;
}

class MirrorUserfaultfd : public ::testing::Test {
  protected:
    void SetUp() override {
        MirrorOptions options;
        options.kind = MonitorKind::Userfaultfd;
        try {
            mirror_ = Mirror::acquire(options);
        } catch (const Error& error) {
            GTEST_SKIP() << "userfaultfd is not available on this host: " << error.what();
        }
    }

    // madvise(DONTNEED) of one page is heard (as a clear) only when the
    // page's mapping is registered.
    bool dontneed_is_heard(const RecordingListener& listener, const Anonymous& memory,
                           std::size_t page_index) const {
        if (::madvise(memory.address(page_index), page, MADV_DONTNEED) != 0) {
            ADD_FAILURE() << "madvise: " << std::strerror(errno);
            return false;
        }
        mirror_->synchronize();
        return heard_exactly(listener, memory.pages(page_index, 1), InvalidationReason::Clear);
    }

    std::shared_ptr<Mirror> mirror_;
};

TEST_F(MirrorUserfaultfd, DescribesWhatItCannotSee) {
    EXPECT_EQ(mirror_->kind(), MonitorKind::Userfaultfd);
    EXPECT_NE(mirror_->description().find("Cannot see"), std::string_view::npos);
    EXPECT_NE(mirror_->description().find("System V"), std::string_view::npos);
}

TEST_F(MirrorUserfaultfd, MunmapIsAnUnmapEvent) {
    Anonymous memory(4);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    EXPECT_TRUE(watch.unwatched().empty());
    ASSERT_EQ(memory.unmap(1, 2), 0);
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(listener, memory.pages(1, 2), InvalidationReason::Unmap));
    EXPECT_EQ(listener.count(), 1U);
}

TEST_F(MirrorUserfaultfd, MadviseDontneedIsAClearEvent) {
    Anonymous memory(4);
    std::memset(memory.address(), 0x5a, 4 * page);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    ASSERT_EQ(::madvise(memory.address(2), page, MADV_DONTNEED), 0);
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(listener, memory.pages(2, 1), InvalidationReason::Clear));
}

TEST_F(MirrorUserfaultfd, MremapAwayAndBackIsSeenBothWays) {
    Anonymous memory(4);
    Anonymous elsewhere(4);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    void* moved = ::mremap(memory.address(), 4 * page, 4 * page, MREMAP_MAYMOVE | MREMAP_FIXED,
                           elsewhere.address());
    ASSERT_NE(moved, MAP_FAILED) << std::strerror(errno);
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(listener, memory.range(), InvalidationReason::Unmap));
    listener.clear();
    // The registration moved with the pages: moving back is seen too.
    ASSERT_NE(::mremap(moved, 4 * page, 4 * page, MREMAP_MAYMOVE | MREMAP_FIXED, memory.address()),
              MAP_FAILED);
    elsewhere.forget(0, 4);  // replaced by memory's pages, which left again
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(listener, memory.range(), InvalidationReason::Unmap));
}

TEST_F(MirrorUserfaultfd, MremapShrinkIsAnUnmapOfTheTail) {
    Anonymous memory(4);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    ASSERT_NE(::mremap(memory.address(), 4 * page, 2 * page, 0), MAP_FAILED);
    memory.forget(2, 2);
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(listener, memory.pages(2, 2), InvalidationReason::Unmap));
}

TEST_F(MirrorUserfaultfd, MapFixedOverAWatchedRangeIsAnUnmap) {
    Anonymous memory(4);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    ASSERT_NE(::mmap(memory.address(1), page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
              MAP_FAILED);
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(listener, memory.pages(1, 1), InvalidationReason::Unmap));
}

// The blind spot and its cure: a mapping created inside a watched range after
// watch() is not registered until Watch::arm() covers it.
TEST_F(MirrorUserfaultfd, ANewMappingIsSeenOnlyOnceArmed) {
    Anonymous memory(2);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    ASSERT_NE(::mmap(memory.address(), 2 * page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
              MAP_FAILED);
    mirror_->synchronize();
    ASSERT_EQ(listener.count(), 1U);  // the old mapping went away
    ASSERT_EQ(::madvise(memory.address(), page, MADV_DONTNEED), 0);
    mirror_->synchronize();
    EXPECT_EQ(listener.count(), 1U) << "the new mapping is not registered yet";
    watch.arm(memory.range());
    ASSERT_EQ(::madvise(memory.address(), page, MADV_DONTNEED), 0);
    mirror_->synchronize();
    EXPECT_EQ(listener.count(), 2U);
    EXPECT_TRUE(heard_exactly(listener, memory.pages(0, 1), InvalidationReason::Clear));
    EXPECT_EQ(mirror_->stats().armed_ranges, 1U);
}

// arm() skips ranges it registered since the last unmap. A mapping that
// replaced an armed one (an unmap event) must be registered at the next arm.
TEST_F(MirrorUserfaultfd, AReplacedMappingIsRegisteredAtTheNextArm) {
    Anonymous memory(2);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    watch.arm(memory.range());  // registered and remembered
    ASSERT_NE(::mmap(memory.address(), page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
              MAP_FAILED);
    mirror_->synchronize();
    ASSERT_TRUE(heard_exactly(listener, memory.pages(0, 1), InvalidationReason::Unmap));
    watch.arm(memory.range());  // must not trust what it remembered
    EXPECT_TRUE(dontneed_is_heard(listener, memory, 0)) << "the new mapping was not registered";
}

// A hole is never remembered as registered: a mapping made there later (no
// event) is registered at the next arm.
TEST_F(MirrorUserfaultfd, AMappingMadeInAHoleIsRegisteredAtTheNextArm) {
    Anonymous memory(3);
    ASSERT_EQ(::munmap(memory.address(1), page), 0);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    watch.arm(memory.range());
    ASSERT_NE(::mmap(memory.address(1), page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0),
              MAP_FAILED);
    watch.arm(memory.range());
    EXPECT_TRUE(dontneed_is_heard(listener, memory, 1))
        << "the mapping in the hole was not registered";
}

TEST_F(MirrorUserfaultfd, HolesInAWatchedRangeAreSkipped) {
    Anonymous memory(3);
    ASSERT_EQ(memory.unmap(1, 1), 0);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    EXPECT_TRUE(watch.unwatched().empty());
    ASSERT_EQ(memory.unmap(2, 1), 0);
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(listener, memory.pages(2, 1), InvalidationReason::Unmap));
}

// With MODE_WP and nothing protected no fault is routed to the reader: first
// touches of watched memory from many threads complete.
TEST_F(MirrorUserfaultfd, TouchingWatchedMemoryIsNeverRoutedToTheReader) {
    Anonymous memory(256);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);
    auto touch = std::async(std::launch::async, [&] {
        for (std::size_t i = 0; i < 256; ++i) {
            static_cast<volatile char*>(memory.address(i))[0] = static_cast<char>(i);
            (void)static_cast<volatile char*>(memory.address(i))[1];
        }
    });
    // Bounds a hang only: a fault sent to userfaultfd would never be resolved.
    ASSERT_EQ(touch.wait_for(60s), std::future_status::ready) << "a fault went to userfaultfd";
    EXPECT_EQ(listener.count(), 0U);
}

// The dispatcher is stuck in a listener; the kernel reader is not, so a
// thread unmapping other watched memory is released at once.
TEST_F(MirrorUserfaultfd, ABlockedListenerNeverStallsAnUnmappingThread) {
    Anonymous first(1);
    Anonymous second(1);
    std::mutex gate;
    std::unique_lock closed(gate);
    std::atomic<bool> entered{false};
    RecordingListener blocking;
    blocking.hook = [&] {
        entered = true;
        const std::lock_guard wait(gate);
    };
    RecordingListener plain;
    const Mirror::Watch w1 = mirror_->watch(first.range(), blocking);
    const Mirror::Watch w2 = mirror_->watch(second.range(), plain);
    ASSERT_EQ(first.unmap(0, 1), 0);
    while (!entered.load()) {
        std::this_thread::sleep_for(1ms);
    }
    auto unmap = std::async(std::launch::async, [&] { return second.unmap(0, 1); });
    // Bounds a hang only: a munmap waiting for the listener waits until the
    // gate opens below.
    EXPECT_EQ(unmap.wait_for(60s), std::future_status::ready) << "munmap waited for a listener";
    closed.unlock();
    EXPECT_EQ(unmap.get(), 0);
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(plain, second.range(), InvalidationReason::Unmap));
}

TEST_F(MirrorUserfaultfd, AfterUnwatchNoEventIsProduced) {
    Anonymous memory(2);
    RecordingListener listener;
    std::optional<Mirror::Watch> watch(mirror_->watch(memory.range(), listener));
    watch.reset();
    const std::uint64_t before = mirror_->stats().events;
    ASSERT_EQ(memory.unmap(0, 1), 0);
    mirror_->synchronize();
    EXPECT_EQ(mirror_->stats().events, before) << "the range was not unregistered";
    EXPECT_EQ(listener.count(), 0U);
}

TEST_F(MirrorUserfaultfd, OverlappingWatchesKeepTheRegistrationOfTheOther) {
    Anonymous memory(4);
    RecordingListener a, b;
    const Mirror::Watch wa = mirror_->watch(memory.range(), a);
    std::optional<Mirror::Watch> wb(mirror_->watch(memory.pages(0, 2), b));
    wb.reset();  // must not unregister pages that `a` still watches
    ASSERT_EQ(memory.unmap(0, 1), 0);
    mirror_->synchronize();
    EXPECT_TRUE(heard_exactly(a, memory.pages(0, 1), InvalidationReason::Unmap));
}

TEST_F(MirrorUserfaultfd, AFileMappingIsReportedUnwatchable) {
    const int fd = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    void* mapped = ::mmap(nullptr, page, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    ASSERT_NE(mapped, MAP_FAILED);
    const Range range{reinterpret_cast<std::uintptr_t>(mapped),
                      reinterpret_cast<std::uintptr_t>(mapped) + page};
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range, listener);
    const std::vector<Unwatched> unwatched = watch.unwatched();
    ASSERT_EQ(unwatched.size(), 1U);
    EXPECT_EQ(unwatched[0].range, range);
    EXPECT_NE(unwatched[0].why.find("file-backed"), std::string::npos) << unwatched[0].why;
    try {
        watch.arm(range);
        ADD_FAILURE() << "arming a file mapping must throw";
    } catch (const Error& error) {
        EXPECT_EQ(error.errno_value(), EINVAL);
        EXPECT_NE(std::string(error.what()).find("odp_mirror.ko"), std::string::npos);
    }
    ::munmap(mapped, page);
}

TEST_F(MirrorUserfaultfd, SystemVSharedMemoryIsRefused) {
    const int id = ::shmget(IPC_PRIVATE, page, IPC_CREAT | 0600);
    if (id < 0) {
        GTEST_SKIP() << "shmget: " << std::strerror(errno);
    }
    void* attached = ::shmat(id, nullptr, 0);
    ::shmctl(id, IPC_RMID, nullptr);
    ASSERT_NE(attached, reinterpret_cast<void*>(-1));
    const Range range{reinterpret_cast<std::uintptr_t>(attached),
                      reinterpret_cast<std::uintptr_t>(attached) + page};
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(range, listener);
    ASSERT_EQ(watch.unwatched().size(), 1U);
    EXPECT_NE(watch.unwatched()[0].why.find("shmdt"), std::string::npos);
    EXPECT_EQ(errno_of([&] { watch.arm(range); }), ENOTSUP);
    ::shmdt(attached);
}

TEST_F(MirrorUserfaultfd, ManyThreadsUnmappingAtOnceAreAllHeard) {
    constexpr int threads = 4;
    constexpr int rounds = 50;
    std::atomic<int> missing{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&] {
            for (int i = 0; i < rounds; ++i) {
                // Raw mmap: once unmapped, the address may belong to another
                // thread at once, so nothing may unmap it a second time.
                void* address = ::mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (address == MAP_FAILED) {
                    missing.fetch_add(1);
                    continue;
                }
                const Range range{reinterpret_cast<std::uintptr_t>(address),
                                  reinterpret_cast<std::uintptr_t>(address) + 2 * page};
                RecordingListener listener;
                const Mirror::Watch watch = mirror_->watch(range, listener);
                ::munmap(address, 2 * page);
                mirror_->synchronize();
                if (!heard_exactly(listener, range, InvalidationReason::Unmap)) {
                    missing.fetch_add(1);
                }
            }
        });
    }
    for (std::thread& worker : workers) {
        worker.join();
    }
    EXPECT_EQ(missing.load(), 0);
}

// The kernel reader keeps its own thread; only delivery moves to the caller's
// io_context.
TEST_F(MirrorUserfaultfd, EventsCanBeDeliveredOnTheCallersIoContext) {
    mirror_.reset();
    boost::asio::io_context io;
    auto guard = boost::asio::make_work_guard(io);
    std::thread runner([&] { io.run(); });
    {
        MirrorOptions options;
        options.kind = MonitorKind::Userfaultfd;
        options.io_context = &io;
        const auto mirror = Mirror::acquire(options);
        Anonymous memory(2);
        RecordingListener listener;
        const Mirror::Watch watch = mirror->watch(memory.range(), listener);
        ASSERT_EQ(memory.unmap(0, 2), 0);
        mirror->synchronize();
        ASSERT_TRUE(heard_exactly(listener, memory.range(), InvalidationReason::Unmap));
        EXPECT_EQ(listener.heard()[0].thread, runner.get_id());
    }
    guard.reset();
    runner.join();
}

}  // namespace
}  // namespace odp
