// odp::Mirror with the userfaultfd source against the running kernel.
// Asio's fences under -fsanitize=thread: see odp/src/mirror.cpp.
#if defined(__SANITIZE_THREAD__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wtsan"
#endif
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <optional>
#include <vector>

#include "../mirror_core/recording_listener.hpp"
#include "memory_map.hpp"
#include "sources/source.hpp"

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
// Memory for a watch, between two PROT_NONE guard pages: the source registers
// whole mappings, and a bare mmap may merge with a neighbour that the test
// runtime owns (ThreadSanitizer's own mappings, which it unmaps from any
// thread, the reader included: the reader then waits for its own event).
std::uintptr_t guarded_mapping(std::size_t length) {
    void* address =
        ::mmap(nullptr, length + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (address == MAP_FAILED) {
        throw std::runtime_error(std::string("mmap: ") + std::strerror(errno));
    }
    const auto begin = reinterpret_cast<std::uintptr_t>(address) + page;
    if (::mprotect(reinterpret_cast<void*>(begin), length, PROT_READ | PROT_WRITE) != 0) {
        throw std::runtime_error(std::string("mprotect: ") + std::strerror(errno));
    }
    return begin;
}

void unmap_guards(std::uintptr_t begin, std::size_t length) {
    ::munmap(reinterpret_cast<void*>(begin - page), page);
    ::munmap(reinterpret_cast<void*>(begin + length), page);
}

class Anonymous {
  public:
    explicit Anonymous(std::size_t pages)
        : length_(pages * page), begin_(guarded_mapping(length_)), gone_(pages, false) {}
    Anonymous(const Anonymous&) = delete;
    Anonymous& operator=(const Anonymous&) = delete;
    ~Anonymous() {
        for (std::size_t index = 0; index < gone_.size(); ++index) {
            if (!gone_[index]) {
                ::munmap(address(index), page);
            }
        }
        unmap_guards(begin_, length_);
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
                // Not an Anonymous: once unmapped, the address may belong to
                // another thread at once, so nothing may unmap it a second time.
                const std::uintptr_t begin = guarded_mapping(2 * page);
                const Range range{begin, begin + 2 * page};
                RecordingListener listener;
                const Mirror::Watch watch = mirror_->watch(range, listener);
                ::munmap(reinterpret_cast<void*>(begin), 2 * page);
                unmap_guards(begin, 2 * page);
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

// Issue 13, item 8: the reader and the dispatcher never take the
// application's signals. The test thread blocks SIGUSR1 and is then the only
// thread of the process besides the Mirror's: a process-directed SIGUSR1 must
// stay pending instead of running the handler on a library thread.
std::atomic<int> usr1_handled{0};

TEST_F(MirrorUserfaultfd, LibraryThreadsNeverRunTheApplicationsSignalHandlers) {
    Anonymous memory(1);
    RecordingListener listener;
    const Mirror::Watch watch = mirror_->watch(memory.range(), listener);  // threads running
    struct sigaction action {};
    action.sa_handler = [](int) { usr1_handled.fetch_add(1); };
    struct sigaction previous {};
    ASSERT_EQ(::sigaction(SIGUSR1, &action, &previous), 0);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigset_t old_mask;
    ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &usr1, &old_mask), 0);
    usr1_handled = 0;
    ASSERT_EQ(::kill(::getpid(), SIGUSR1), 0);
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(usr1_handled.load(), 0) << "a library thread ran the application's handler";
    sigset_t pending;
    ASSERT_EQ(::sigpending(&pending), 0);
    EXPECT_EQ(::sigismember(&pending, SIGUSR1), 1);
    ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);  // the pending signal is taken here
    EXPECT_EQ(usr1_handled.load(), 1);
    ::sigaction(SIGUSR1, &previous, nullptr);
}

// The reader thread of this process's userfaultfd source: the thread blocked
// in poll() on a userfaultfd descriptor. Returns its stack pointer, or 0.
std::uintptr_t reader_stack_pointer() {
    std::vector<int> userfaultfds;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        std::error_code error;
        const auto target = std::filesystem::read_symlink(entry.path(), error);
        if (!error && target.string() == "anon_inode:[userfaultfd]") {
            userfaultfds.push_back(std::stoi(entry.path().filename().string()));
        }
    }
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        // "nr arg1 ... arg6 sp pc" of a thread blocked in a system call.
        std::ifstream file(task.path() / "syscall");
        long number = -1;
        std::uintptr_t args[6]{};
        std::uintptr_t stack_pointer = 0;
        file >> number >> std::hex;
        for (std::uintptr_t& arg : args) {
            file >> arg;
        }
        file >> stack_pointer;
        const bool polls = number == SYS_ppoll
#ifdef SYS_poll
                           || number == SYS_poll
#endif
            ;
        if (!file || !polls || args[0] == 0) {
            continue;
        }
        const auto* fds = reinterpret_cast<const pollfd*>(args[0]);
        for (std::uintptr_t i = 0; i < args[1]; ++i) {
            if (std::find(userfaultfds.begin(), userfaultfds.end(), fds[i].fd) !=
                userfaultfds.end()) {
                return stack_pointer;
            }
        }
    }
    return 0;
}

// Runs `body` in a forked child and returns how it ended. A child still
// running after 20 s is killed: `hung`, with what each of its threads slept in.
struct ChildEnd {
    bool hung = false;
    int status = 0;
    std::string where;
};

template <typename Body>
ChildEnd run_in_child(const Body& body) {
    const pid_t child = ::fork();
    if (child < 0) {
        throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    }
    if (child == 0) {
        ::_exit(body());
    }
    ChildEnd end;
    pid_t waited = 0;
    for (int tries = 0; tries < 2000 && waited == 0; ++tries) {
        std::this_thread::sleep_for(10ms);
        waited = ::waitpid(child, &end.status, WNOHANG);
    }
    if (waited == 0) {
        end.hung = true;
        const std::string tasks = "/proc/" + std::to_string(child) + "/task";
        for (const auto& task : std::filesystem::directory_iterator(tasks)) {
            std::ifstream wchan(task.path() / "wchan");
            std::string function;
            wchan >> function;
            end.where += " " + task.path().filename().string() + ":" + function;
        }
        ::kill(child, SIGKILL);
        ::waitpid(child, &end.status, 0);
    }
    return end;
}

// The child's exit codes.
constexpr int child_ok = 0;
constexpr int child_setup_failed = 3;  // the memory the test needs was not found
constexpr int child_wrong = 4;         // what the test checks went wrong
constexpr int child_no_userfaultfd = 77;

void expect_child_ok(const ChildEnd& end, const std::string& setup, const std::string& wrong) {
    ASSERT_FALSE(end.hung) << "tearing the Mirror down hung for 20 s (threads sleeping in:"
                           << end.where << ")";
    ASSERT_TRUE(WIFEXITED(end.status)) << "the child died of signal " << WTERMSIG(end.status);
    if (WEXITSTATUS(end.status) == child_no_userfaultfd) {
        GTEST_SKIP() << "userfaultfd is not available on this host";
    }
    ASSERT_NE(WEXITSTATUS(end.status), child_setup_failed) << setup;
    EXPECT_NE(WEXITSTATUS(end.status), child_wrong) << wrong;
    EXPECT_EQ(WEXITSTATUS(end.status), child_ok);
}

// What hung the guide example on Linux 6.1: a registration of the mapping that
// holds the reader thread's own stack outlived every watch (there, the
// application's buffer had merged with the stack into one VMA, was registered
// whole, then munmap()ped), and when the Mirror went away the exiting reader
// madvise(DONTNEED)ed its stack (glibc does, at thread exit) and slept until
// the event was read: by itself. Here the registration is left behind by
// watching the bottom page of the stack's mapping and then splitting the
// mapping with mprotect(). The reader's stack must never be registered, and
// tearing the Mirror down must finish.
TEST(MirrorUserfaultfdTeardown, TheReaderNeverWaitsForItsOwnStack) {
    const ChildEnd end = run_in_child([] {
        MirrorOptions options;
        options.kind = MonitorKind::Userfaultfd;
        std::shared_ptr<Mirror> mirror;
        try {
            mirror = Mirror::acquire(options);
        } catch (const Error&) {
            return child_no_userfaultfd;
        }
        std::uintptr_t stack_pointer = 0;
        for (int tries = 0; tries < 2000 && stack_pointer == 0; ++tries) {
            std::this_thread::sleep_for(1ms);
            stack_pointer = reader_stack_pointer();
        }
        if (stack_pointer == 0) {
            return child_setup_failed;
        }
        const auto stack = detail::read_mappings(Range{stack_pointer, stack_pointer + 1});
        if (stack.size() != 1 || stack.front().range.length() < 2 * page) {
            return child_setup_failed;
        }
        const Range bottom{stack.front().range.begin, stack.front().range.begin + page};
        bool watched = false;
        {
            RecordingListener listener;
            const Mirror::Watch watch = mirror->watch(bottom, listener);
            watched = watch.unwatched().empty();
            // Splits the stack's mapping: only the bottom page is unregistered
            // with the watch (that page is far below anything the reader uses).
            if (::mprotect(reinterpret_cast<void*>(bottom.begin), page, PROT_READ) != 0) {
                return child_setup_failed;
            }
        }
        mirror.reset();  // stops and joins the reader
        return watched ? child_wrong : child_ok;
    });
    expect_child_ok(end, "could not find the reader thread's stack",
                    "the reader's own stack was registered");
}

// What hung vm.coherence's siw pass in Emulated/ExposureChange (Linux 6.12
// and 7.3): a block of 128 KiB or more that malloc maps on its own, there the
// source's event ring, had merged with a buffer into one mapping, registered
// whole when the buffer was watched and still registered once the buffer was
// unmapped. When the Mirror went away the source joined its reader and then
// freed the ring: munmap() waited for a reader that was gone. Here the ring's
// mapping is left registered by watching its first page and splitting that
// page off (madvise(DONTFORK) changes the flags, not the access) before the
// watch ends. Tearing the Mirror down must finish.
TEST(MirrorUserfaultfdTeardown, MemoryFreedOnceTheReaderStoppedWaitsForNoOne) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    // A sanitizer's allocator maps the ring its own way, next to mappings of
    // its own that it may merge with and that must never be registered (it
    // unmaps them from any thread, the reader's exit included). The plain
    // build runs this test.
    GTEST_SKIP() << "the ring is placed by glibc's malloc only without a sanitizer";
#endif
    const ChildEnd end = run_in_child([] {
        ::mallopt(M_MMAP_THRESHOLD, 128 * 1024);  // glibc maps the ring on its own
        MirrorOptions options;
        options.kind = MonitorKind::Userfaultfd;
        options.event_capacity = 16384;
        const std::size_t ring_bytes = options.event_capacity * sizeof(detail::Event);
        const std::vector<detail::Mapping> before =
            detail::read_mappings(detail::whole_address_space);
        std::shared_ptr<Mirror> mirror;
        try {
            mirror = Mirror::acquire(options);
        } catch (const Error&) {
            return child_no_userfaultfd;
        }
        // The ring: a new anonymous mapping of its size (an allocator adds a
        // header of a page or so).
        int left_registered = 0;
        for (const detail::Mapping& mapping : detail::read_mappings(detail::whole_address_space)) {
            const bool is_new = std::find(before.begin(), before.end(), mapping) == before.end();
            const std::size_t length = mapping.range.length();
            if (!is_new || !mapping.path.empty() || mapping.permissions != "rw-p" ||
                length < ring_bytes || length > ring_bytes + 4 * page) {
                continue;
            }
            const Range first{mapping.range.begin, mapping.range.begin + page};
            {
                RecordingListener listener;
                const Mirror::Watch watch = mirror->watch(first, listener);
                if (!watch.unwatched().empty()) {
                    return child_wrong;
                }
                if (::madvise(reinterpret_cast<void*>(first.begin), page, MADV_DONTFORK) != 0) {
                    return child_setup_failed;
                }
            }
            ++left_registered;
        }
        if (left_registered == 0) {
            return child_setup_failed;
        }
        mirror.reset();  // stops and joins the reader, then frees the ring
        return child_ok;
    });
    expect_child_ok(end, "no new mapping of the event ring's size was found",
                    "the first page of the ring's mapping could not be watched");
}

// The probe of a kernel that copies a referenced anonymous page on a write
// after mprotect() to read-only and back (page_copy_probe.cpp), on this
// host's kernel: upstream copies so before Linux 5.19. The guests check it
// on 5.10, 6.1, 6.12 and 7.3 (vm.coherence, PinnedPageWrite.*).
TEST(UserfaultfdCoherence, TheProbeAgreesWithThisKernelsVersion) {
    utsname name{};
    ASSERT_EQ(::uname(&name), 0);
    int major = 0;
    int minor = 0;
    ASSERT_EQ(std::sscanf(name.release, "%d.%d", &major, &minor), 2) << name.release;
    const bool copies = major < 5 || (major == 5 && minor < 19);
    const detail::PageCopyProbe probe = detail::probe_page_copy_on_write();
    std::cout << "[ probe    ] Linux " << name.release << ": " << probe.detail << "\n";
    EXPECT_EQ(probe.outcome,
              copies ? detail::PageWriteOutcome::Copied : detail::PageWriteOutcome::Reused)
        << probe.detail;
    EXPECT_EQ(userfaultfd_coherence_problem().empty(), !copies) << userfaultfd_coherence_problem();
}

TEST(UserfaultfdCoherence, ACopyingKernelIsRefusedWithTheCauseAndWhatToDo) {
    const std::string problem = detail::page_copy_problem(
        {detail::PageWriteOutcome::Copied, "the pipe kept the page's old bytes"},
        "5.10.0-46-amd64");
    for (const char* part : {"Linux 5.10.0-46-amd64", "copy", "mprotect", "no event",
                             "odp_mirror.ko", "odp-mirror-dkms", "Pinned mode"}) {
        EXPECT_NE(problem.find(part), std::string::npos) << part << " is missing: " << problem;
    }
    // The probe decides over the version (vendor kernels backport).
    EXPECT_EQ(detail::page_copy_problem({detail::PageWriteOutcome::Reused, ""}, "5.10.0"), "");
    EXPECT_NE(detail::page_copy_problem({detail::PageWriteOutcome::Copied, ""}, "6.1.0"), "");
}

TEST(UserfaultfdCoherence, WithoutTheProbeTheVersionDecides) {
    const detail::PageCopyProbe failed{detail::PageWriteOutcome::Unknown,
                                       "vmsplice: Operation not permitted"};
    const std::string old_kernel = detail::page_copy_problem(failed, "5.18.19");
    EXPECT_NE(old_kernel.find("vmsplice: Operation not permitted"), std::string::npos)
        << old_kernel;
    EXPECT_NE(old_kernel.find("odp_mirror.ko"), std::string::npos) << old_kernel;
    EXPECT_EQ(detail::page_copy_problem(failed, "5.19.0"), "");
    EXPECT_EQ(detail::page_copy_problem(failed, "6.1.0-40-amd64"), "");
}

// Without write-protect registration the source would route faults to
// itself or be refused as if every mapping were a file: it says what the
// kernel lacks instead.
TEST(UserfaultfdDiagnostics, AKernelWithoutWriteProtectIsNamedAsSuch) {
    const std::uint64_t events =
        UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_REMAP;
    const std::uint64_t ioctls = std::uint64_t{1} << _UFFDIO_REGISTER;
    EXPECT_EQ(detail::userfaultfd_api_shortcoming(events | UFFD_FEATURE_PAGEFAULT_FLAG_WP, ioctls),
              "");
    const std::string lacks = detail::userfaultfd_api_shortcoming(events, ioctls);
    EXPECT_NE(lacks.find("write-protect"), std::string::npos) << lacks;
    EXPECT_EQ(lacks.find("file"), std::string::npos) << lacks;
    EXPECT_NE(detail::userfaultfd_api_shortcoming(UFFD_FEATURE_PAGEFAULT_FLAG_WP, ioctls)
                  .find("EVENT_UNMAP"),
              std::string::npos);
}

TEST(UserfaultfdDiagnostics, EpermIsBlamedOnTheSysctlOnlyWhenItForbids) {
    const std::string sysctl = detail::explain_userfaultfd_refusal(EINVAL, EPERM, EACCES, 0, false);
    EXPECT_NE(sysctl.find("vm.unprivileged_userfaultfd is 0"), std::string::npos) << sysctl;
    EXPECT_EQ(sysctl.find("seccomp"), std::string::npos) << sysctl;
    for (const std::string& filtered :
         {detail::explain_userfaultfd_refusal(EPERM, EPERM, ENOENT, 0, false),
          detail::explain_userfaultfd_refusal(EINVAL, EPERM, ENOENT, 1, false),
          detail::explain_userfaultfd_refusal(EINVAL, EPERM, ENOENT, 0, true)}) {
        EXPECT_NE(filtered.find("seccomp"), std::string::npos) << filtered;
        EXPECT_EQ(filtered.find("vm.unprivileged_userfaultfd is 0"), std::string::npos) << filtered;
    }
}

// A seccomp filter like a container runtime's: userfaultfd(2) and the
// /dev/userfaultfd ioctl answer EPERM. Installed in a child (filters cannot
// be removed); the child exits 0 when the error names seccomp, not the sysctl.
TEST(UserfaultfdDiagnostics, ASeccompFilterIsNotBlamedOnTheSysctl) {
    const ChildEnd end = run_in_child([] {
        const unsigned int eperm = SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA);
        sock_filter code[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_userfaultfd, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, eperm),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ioctl, 0, 3),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[1])),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, USERFAULTFD_IOC_NEW, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, eperm),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        sock_fprog program{static_cast<unsigned short>(std::size(code)), code};
        if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0) {
            return 3;
        }
        MirrorOptions options;
        options.kind = MonitorKind::Userfaultfd;
        try {
            (void)Mirror::acquire(options);
        } catch (const Error& error) {
            const std::string what = error.what();
            const bool right = what.find("seccomp") != std::string::npos &&
                               what.find("vm.unprivileged_userfaultfd is 0") == std::string::npos;
            if (!right) {
                std::fprintf(stderr, "child: %s\n", what.c_str());
            }
            return right ? 0 : 1;
        }
        return 2;
    });
    ASSERT_FALSE(end.hung) << "the child hung (threads sleeping in:" << end.where << ")";
    ASSERT_TRUE(WIFEXITED(end.status));
    ASSERT_NE(WEXITSTATUS(end.status), 3) << "cannot install a seccomp filter here";
    EXPECT_NE(WEXITSTATUS(end.status), 2) << "the filter did not stop userfaultfd";
    EXPECT_EQ(WEXITSTATUS(end.status), 0) << "the error blamed the sysctl (see the child's stderr)";
}

}  // namespace
}  // namespace odp
