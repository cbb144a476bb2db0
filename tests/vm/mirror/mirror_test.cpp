// Guest tests of odp_mirror.ko (run as root by run-mirror-tests.sh after insmod).
// Named after the behaviour they check, like the kernel's hmm-tests.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iterator>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "mirror_device.hpp"

using namespace odp_mirror_test;
using namespace std::chrono_literals;

namespace {

const std::uint64_t kPage = page_size();
// The least top of an x86-64 user address space (4-level paging): 2^47 less
// the guard page below the non-canonical hole. 5.10 reports exactly that;
// later kernels built with 5-level paging report more.
const std::uint64_t kUserSpaceTop47 = (1ULL << 47) - kPage;

struct Interval {
    std::uint64_t start;
    std::uint64_t end;
    bool operator==(const Interval&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Interval& i) {
    return os << std::hex << "[0x" << i.start << ", 0x" << i.end << ")" << std::dec;
}

const char* reason_name(unsigned reason) {
    switch (reason) {
        case ODP_MIRROR_REASON_UNMAP:
            return "unmap";
        case ODP_MIRROR_REASON_CLEAR:
            return "clear";
        case ODP_MIRROR_REASON_PROTECTION:
            return "protection";
        case ODP_MIRROR_REASON_MIGRATION:
            return "migration";
        case ODP_MIRROR_REASON_TEARDOWN:
            return "teardown";
        case ODP_MIRROR_REASON_OTHER:
            return "other";
        default:
            return "invalid";
    }
}

std::string describe(const std::vector<odp_mirror_event>& events) {
    std::ostringstream os;
    for (const auto& e : events) {
        os << "\n  seq " << e.seq << " region " << e.region_id << " " << reason_name(e.reason)
           << " " << Interval{e.start, e.end} << " gen " << e.generation;
    }
    return os.str();
}

// Union of the ranges of region @id's events whose reason is in @reasons.
std::vector<Interval> coverage(const std::vector<odp_mirror_event>& events, std::uint32_t id,
                               std::initializer_list<unsigned> reasons) {
    std::vector<Interval> in;
    for (const auto& e : events) {
        if (e.region_id == id &&
            std::find(reasons.begin(), reasons.end(), e.reason) != reasons.end()) {
            in.push_back({e.start, e.end});
        }
    }
    std::sort(in.begin(), in.end(), [](auto& a, auto& b) { return a.start < b.start; });
    std::vector<Interval> out;
    for (const auto& i : in) {
        if (!out.empty() && i.start <= out.back().end) {
            out.back().end = std::max(out.back().end, i.end);
        } else {
            out.push_back(i);
        }
    }
    return out;
}

// Every event well formed, inside its region, in sequence.
void expect_well_formed(const std::vector<odp_mirror_event>& events,
                        const std::vector<odp_mirror_register>& regions) {
    for (std::size_t i = 0; i < events.size(); ++i) {
        const auto& e = events[i];
        if (i > 0) {
            EXPECT_EQ(e.seq, events[i - 1].seq + 1);
        }
        EXPECT_LT(e.start, e.end);
        EXPECT_EQ(e.start % kPage, 0u);
        EXPECT_EQ(e.end % kPage, 0u);
        EXPECT_GE(e.reason, ODP_MIRROR_REASON_UNMAP);
        EXPECT_LE(e.reason, ODP_MIRROR_REASON_OTHER);
        EXPECT_EQ(e.reserved0, 0u);
        EXPECT_EQ(e.reserved1, 0u);
        for (const auto& r : regions) {
            if (r.id == e.region_id) {
                EXPECT_GE(e.start, r.start);
                EXPECT_LE(e.end, r.start + r.length);
                EXPECT_EQ(e.cookie, r.cookie);
                EXPECT_EQ(e.slot, r.slot);
            }
        }
    }
}

// /proc/self/pagemap entry: bit 63 present, bit 62 swapped, bits 0-54 PFN.
std::uint64_t pagemap(const void* addr) {
    Fd fd(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
        throw_errno(errno, "open /proc/self/pagemap");
    }
    std::uint64_t entry = 0;
    const auto off = static_cast<off_t>(reinterpret_cast<std::uintptr_t>(addr) / kPage * 8);
    if (::pread(fd.get(), &entry, sizeof(entry), off) != sizeof(entry)) {
        throw_errno(errno, "pread /proc/self/pagemap");
    }
    return entry;
}
bool page_present(const void* addr) {
    return (pagemap(addr) >> 63) & 1;
}
bool page_swapped(const void* addr) {
    return (pagemap(addr) >> 62) & 1;
}
std::uint64_t page_pfn(const void* addr) {
    return pagemap(addr) & ((1ULL << 55) - 1);
}

// Runs @body in a forked child; its failures come back through a pipe.
class ChildChecks {
  public:
    void expect(bool ok, const std::string& what) {
        if (!ok) {
            failures_ += what + "\n";
        }
    }
    void expect_eq(long long got, long long want, const std::string& what) {
        expect(got == want,
               what + ": got " + std::to_string(got) + ", want " + std::to_string(want));
    }
    std::string failures_;
};

void run_in_child(const std::function<void(ChildChecks&)>& body) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    Fd rd(fds[0]);
    Fd wr(fds[1]);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        rd.reset();
        ChildChecks checks;
        try {
            body(checks);
        } catch (const std::exception& e) {
            checks.failures_ += std::string("exception: ") + e.what() + "\n";
        }
        const auto& f = checks.failures_;
        if (!f.empty() && ::write(wr.get(), f.data(), f.size()) < 0) {
            _exit(3);
        }
        _exit(f.empty() ? 0 : 1);
    }
    wr.reset();
    std::string failures;
    char buf[512];
    ssize_t n;
    while ((n = ::read(rd.get(), buf, sizeof(buf))) > 0) {
        failures.append(buf, static_cast<std::size_t>(n));
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "child status " << status << ", failures:\n"
        << failures;
}

// 0 or the errno of mmap(@len, @prot, @flags) of @fd at @off (unmapped again).
int mmap_errno(int fd, std::size_t len, int prot, int flags, std::uint64_t off) {
    void* p = ::mmap(nullptr, len, prot, flags, fd, static_cast<off_t>(off));
    if (p == MAP_FAILED) {
        return errno;
    }
    ::munmap(p, len);
    return 0;
}

// Writes @value to a sysfs/debugfs/cgroup file for the scope, then puts the
// old value back.
class ScopedWrite {
  public:
    ScopedWrite(std::string path, const std::string& value) : path_(std::move(path)) {
        std::ifstream in(path_);
        in >> old_;
        write(value);
    }
    ~ScopedWrite() { write(old_); }
    ScopedWrite(const ScopedWrite&) = delete;
    ScopedWrite& operator=(const ScopedWrite&) = delete;

  private:
    void write(const std::string& value) const {
        std::ofstream out(path_);
        out << value;
        out.flush();
        if (!out) {
            throw std::runtime_error("cannot write " + value + " to " + path_);
        }
    }
    std::string path_;
    std::string old_;
};

// A module parameter (applies to processes that open the device afterwards).
class ModuleParam : public ScopedWrite {
  public:
    ModuleParam(const std::string& name, const std::string& value)
        : ScopedWrite("/sys/module/odp_mirror/parameters/" + name, value) {}
};

// A test hook of the module in debugfs (inject_*, see docs/kernel-abi.md).
class InjectKnob : public ScopedWrite {
  public:
    InjectKnob(const std::string& name, const std::string& value)
        : ScopedWrite("/sys/kernel/debug/odp_mirror/" + name, value) {}
};

// Waits until @cond holds.  The limit only bounds a hang: a guest under
// emulation on busy host cores can stall for seconds, so no test may pass or
// fail on how soon something happens, only on whether it happens.
bool wait_for(const std::function<bool()>& cond, std::chrono::milliseconds limit = 60s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!cond()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        std::this_thread::sleep_for(10ms);
    }
    return true;
}

// A number the module shows in debugfs (e.g. drops_held).
long long debugfs_number(const std::string& name) {
    std::ifstream in("/sys/kernel/debug/odp_mirror/" + name);
    long long value = -1;
    in >> value;
    return value;
}

// Whether thread @tid of this process sleeps inside poll() (state S, blocked
// in poll or ppoll): it is on the file's wait queue and needs a wakeup.
bool sleeping_in_poll(pid_t tid) {
    const std::string task = "/proc/self/task/" + std::to_string(tid);
    std::ifstream stat_file(task + "/stat");
    std::string stat((std::istreambuf_iterator<char>(stat_file)), {});
    const auto comm_end = stat.rfind(')');
    if (comm_end == std::string::npos || comm_end + 2 >= stat.size() || stat[comm_end + 2] != 'S') {
        return false;
    }
    std::ifstream syscall_file(task + "/syscall");
    long number = -1;
    syscall_file >> number;
    return number == SYS_poll || number == SYS_ppoll;
}

bool module_gauges_zero() {
    auto s = debugfs_stats();
    return s.count("module.open_files") && s["module.open_files"] == 0 && s["module.mms"] == 0 &&
           s["module.regions"] == 0 && s["module.faults_in_flight"] == 0;
}

// Every test starts and ends with no file of the module open in the guest.
class MirrorTest : public ::testing::Test {
  protected:
    void SetUp() override { ASSERT_TRUE(module_gauges_zero()) << "a previous test leaked"; }
    void TearDown() override {
        EXPECT_TRUE(wait_for(module_gauges_zero)) << "module gauges not back to zero";
    }
};

// ---- ABI and basic registration ---------------------------------------------

TEST_F(MirrorTest, QueryReportsVersionFeaturesAndLayout) {
    Mirror m;
    const auto& q = m.query();
    EXPECT_EQ(q.abi_version, ODP_MIRROR_ABI_VERSION);
    const auto all = ODP_MIRROR_FEATURE_EVENT_RING | ODP_MIRROR_FEATURE_GENERATIONS |
                     ODP_MIRROR_FEATURE_FAULT | ODP_MIRROR_FEATURE_SNAPSHOT |
                     ODP_MIRROR_FEATURE_STATS | ODP_MIRROR_FEATURE_POLL;
    EXPECT_EQ(q.features & all, all);
    EXPECT_EQ(q.page_size, kPage);
    EXPECT_EQ(q.event_size, sizeof(odp_mirror_event));
    EXPECT_GT(q.ring_entries, 0u);
    EXPECT_EQ(q.ring_entries & (q.ring_entries - 1), 0u);
    EXPECT_GE(q.ring_mmap_size,
              ODP_MIRROR_RING_EVENTS_OFFSET + q.ring_entries * sizeof(odp_mirror_event));
    EXPECT_GE(q.generations_mmap_size, q.max_regions * sizeof(std::uint64_t));
    EXPECT_GE(q.consumer_mmap_size, sizeof(odp_mirror_ring_consumer));
    EXPECT_GE(q.address_limit, kUserSpaceTop47);
    EXPECT_EQ(q.max_fault_bytes % kPage, 0u);
    EXPECT_EQ(m.header().entries, q.ring_entries);
    EXPECT_EQ(m.head(), 0u);
    EXPECT_EQ(m.lost(), 0u);
    for (auto r : q.reserved) {
        EXPECT_EQ(r, 0u);
    }
}

TEST_F(MirrorTest, RegisterAndUnregisterUpdateCountersAndGeneration) {
    Mirror m;
    Mapping map(4 * kPage);
    const auto before = m.stats();
    const auto reg = m.add(map, 0xC0FFEE);
    EXPECT_NE(reg.id, 0u);
    EXPECT_LT(reg.slot, m.query().max_regions);
    EXPECT_EQ(reg.generation, m.generation(reg.slot));
    auto st = m.stats();
    EXPECT_EQ(st.process.regions, 1u);
    EXPECT_EQ(st.module.regions, 1u);
    EXPECT_EQ(st.process.registrations, before.process.registrations + 1);
    EXPECT_EQ(st.process.open_files, 1u);
    EXPECT_EQ(st.process.mms, 1u);
    EXPECT_EQ(st.module.mms, 1u);

    m.remove(reg.id);
    EXPECT_GT(m.generation(reg.slot), reg.generation) << "UNREGISTER must move the generation on";
    st = m.stats();
    EXPECT_EQ(st.process.regions, 0u);
    EXPECT_EQ(st.process.unregistrations, before.process.unregistrations + 1);
    EXPECT_EQ(m.try_remove(reg.id), ENOENT);
    EXPECT_TRUE(m.drain().empty()) << "UNREGISTER queues no event";
}

TEST_F(MirrorTest, RegisterWholeAddressSpaceFaultsNothing) {
    Mirror m;
    // From the first page to the top of the user address space.
    const std::uint64_t top = m.query().address_limit;
    ASSERT_GE(top, kUserSpaceTop47);
    const auto reg = m.add(kPage, top - kPage);
    const auto st = m.stats();
    EXPECT_EQ(st.process.pages_faulted, 0u);
    EXPECT_EQ(st.process.regions, 1u);
    m.remove(reg.id);
}

TEST_F(MirrorTest, SlotsAreReusedAndTheirGenerationNeverGoesBack) {
    Mirror m;
    Mapping map(kPage);
    const auto a = m.add(map);
    m.remove(a.id);
    const auto b = m.add(map);
    EXPECT_NE(a.id, b.id) << "ids are not reused right away";
    EXPECT_EQ(a.slot, b.slot);
    EXPECT_GT(b.generation, a.generation);
    m.remove(b.id);
}

// ---- events -----------------------------------------------------------------

TEST_F(MirrorTest, MunmapReportsUnmapOfTheRegion) {
    Mirror m;
    Mapping map(8 * kPage);
    map.populate();
    const auto reg = m.add(map, 42);
    const auto gen = m.generation(reg.slot);
    ASSERT_EQ(::munmap(map.data(), map.size()), 0);
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_UNMAP}),
              (std::vector<Interval>{{map.addr(), map.addr() + map.size()}}))
        << describe(events);
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().generation, m.generation(reg.slot));
    EXPECT_GT(m.generation(reg.slot), gen);
    map.release();
    const auto st = m.stats();
    EXPECT_GE(st.process.invalidations_by_reason[ODP_MIRROR_REASON_UNMAP], 1u);
    EXPECT_EQ(st.process.events, events.size());
}

TEST_F(MirrorTest, PartialMunmapReportsOnlyTheUnmappedPart) {
    Mirror m;
    Mapping map(8 * kPage);
    map.populate();
    const auto reg = m.add(map);
    ASSERT_EQ(::munmap(map.data() + 2 * kPage, 3 * kPage), 0);
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id,
                       {ODP_MIRROR_REASON_UNMAP, ODP_MIRROR_REASON_CLEAR,
                        ODP_MIRROR_REASON_PROTECTION, ODP_MIRROR_REASON_OTHER}),
              (std::vector<Interval>{{map.addr() + 2 * kPage, map.addr() + 5 * kPage}}))
        << describe(events);
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_UNMAP}),
              (std::vector<Interval>{{map.addr() + 2 * kPage, map.addr() + 5 * kPage}}));
}

TEST_F(MirrorTest, RegionClipsEventsOfALargerUnmap) {
    Mirror m;
    Mapping map(8 * kPage);
    const auto reg = m.add(map.addr() + 2 * kPage, 2 * kPage);
    ASSERT_EQ(::munmap(map.data(), map.size()), 0);
    map.release();
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_UNMAP}),
              (std::vector<Interval>{{reg.start, reg.start + reg.length}}))
        << describe(events);
}

TEST_F(MirrorTest, MremapMoveReportsUnmapOfTheOldRange) {
    Mirror m;
    Mapping map(4 * kPage);
    Mapping target(4 * kPage);
    map.populate();
    const auto reg = m.add(map);
    void* moved =
        ::mremap(map.data(), map.size(), map.size(), MREMAP_MAYMOVE | MREMAP_FIXED, target.data());
    ASSERT_NE(moved, MAP_FAILED) << strerror(errno);
    map.release();
    EXPECT_EQ(static_cast<char*>(moved)[kPage], 2) << "data moved along";
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_UNMAP}),
              (std::vector<Interval>{{reg.start, reg.start + reg.length}}))
        << describe(events);
}

TEST_F(MirrorTest, MremapShrinkReportsUnmapOfTheTail) {
    Mirror m;
    Mapping map(8 * kPage);
    map.populate();
    const auto reg = m.add(map);
    void* p = ::mremap(map.data(), map.size(), 3 * kPage, 0);
    ASSERT_EQ(p, map.data()) << strerror(errno);
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id,
                       {ODP_MIRROR_REASON_UNMAP, ODP_MIRROR_REASON_CLEAR,
                        ODP_MIRROR_REASON_PROTECTION, ODP_MIRROR_REASON_OTHER}),
              (std::vector<Interval>{{map.addr() + 3 * kPage, map.addr() + 8 * kPage}}))
        << describe(events);
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_UNMAP}),
              (std::vector<Interval>{{map.addr() + 3 * kPage, map.addr() + 8 * kPage}}));
    ::munmap(map.data(), 3 * kPage);
    map.release();
}

TEST_F(MirrorTest, MadviseDontneedReportsClear) {
    Mirror m;
    Mapping map(8 * kPage);
    map.populate();
    const auto reg = m.add(map);
    ASSERT_EQ(::madvise(map.data() + kPage, 2 * kPage, MADV_DONTNEED), 0);
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_CLEAR}),
              (std::vector<Interval>{{map.addr() + kPage, map.addr() + 3 * kPage}}))
        << describe(events);
    EXPECT_EQ(map.data()[kPage], 0) << "DONTNEED dropped the anonymous page";
}

TEST_F(MirrorTest, MprotectReportsProtection) {
    Mirror m;
    Mapping map(8 * kPage);
    map.populate();
    const auto reg = m.add(map);
    ASSERT_EQ(::mprotect(map.data(), map.size(), PROT_READ), 0);
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_PROTECTION}),
              (std::vector<Interval>{{map.addr(), map.addr() + map.size()}}))
        << describe(events);
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_UNMAP, ODP_MIRROR_REASON_CLEAR}).size(),
              0u);
}

TEST_F(MirrorTest, MapFixedOverTheRangeReportsUnmap) {
    Mirror m;
    Mapping map(4 * kPage);
    map.populate();
    const auto reg = m.add(map);
    void* p = ::mmap(map.data() + kPage, kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                     -1, 0);
    ASSERT_EQ(p, map.data() + kPage);
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_UNMAP}),
              (std::vector<Interval>{{map.addr() + kPage, map.addr() + 2 * kPage}}))
        << describe(events);
}

TEST_F(MirrorTest, ForkThenParentWriteReportsProtectionAndClear) {
    Mirror m;
    Mapping map(4 * kPage);
    map.populate();
    const auto reg = m.add(map);
    int go[2];
    ASSERT_EQ(::pipe(go), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        // Keeps the pages shared (copy-on-write) until the parent wrote.
        char c;
        ::close(go[1]);
        _exit(::read(go[0], &c, 1) >= 0 ? 0 : 1);
    }
    ::close(go[0]);
    auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_PROTECTION}),
              (std::vector<Interval>{{map.addr(), map.addr() + map.size()}}))
        << "fork write-protects the parent's pages" << describe(events);

    map.data()[2 * kPage] = 'x';
    events = m.drain();
    ::close(go[1]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_EQ(status, 0);
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_CLEAR}),
              (std::vector<Interval>{{map.addr() + 2 * kPage, map.addr() + 3 * kPage}}))
        << "the copy-on-write break replaces the parent's page" << describe(events);
}

TEST_F(MirrorTest, ChangesOutsideEveryRegionReportNoEvent) {
    Mirror m;
    Mapping map(8 * kPage);
    map.populate();
    const auto reg = m.add(map.addr() + 3 * kPage, 2 * kPage);
    ASSERT_EQ(::madvise(map.data(), 3 * kPage, MADV_DONTNEED), 0);
    ASSERT_EQ(::mprotect(map.data() + 5 * kPage, 3 * kPage, PROT_READ), 0);
    ASSERT_EQ(::munmap(map.data() + 6 * kPage, 2 * kPage), 0);
    Mapping other(16 * kPage);
    other.populate();
    ASSERT_EQ(::munmap(other.data(), other.size()), 0);
    other.release();
    const auto events = m.drain();
    EXPECT_TRUE(events.empty()) << describe(events);
    EXPECT_EQ(m.stats().process.invalidations, 0u);
    ::munmap(map.data(), 6 * kPage);
    map.release();
    EXPECT_FALSE(m.drain().empty()) << "and the region itself still reports";
    (void)reg;
}

TEST_F(MirrorTest, PollReportsQueuedEvents) {
    Mirror m;
    Mapping map(2 * kPage);
    map.populate();
    const auto reg = m.add(map);
    Fd ep(::epoll_create1(EPOLL_CLOEXEC));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ASSERT_EQ(::epoll_ctl(ep.get(), EPOLL_CTL_ADD, m.fd(), &ev), 0);
    epoll_event out{};
    EXPECT_EQ(::epoll_wait(ep.get(), &out, 1, 0), 0) << "nothing queued yet";
    std::thread unmapper([&] {
        std::this_thread::sleep_for(50ms);
        ::madvise(map.data(), kPage, MADV_DONTNEED);
    });
    EXPECT_EQ(::epoll_wait(ep.get(), &out, 1, 60000), 1) << "woken by the event";
    unmapper.join();
    EXPECT_TRUE(out.events & EPOLLIN);
    EXPECT_EQ(m.drain().size(), 1u);
    EXPECT_EQ(::epoll_wait(ep.get(), &out, 1, 0), 0) << "drained";
    m.remove(reg.id);
}

TEST_F(MirrorTest, RingOverflowIsReportedAndCounted) {
    ModuleParam small_ring("ring_entries", "16");
    run_in_child([](ChildChecks& c) {
        Mirror m;
        c.expect_eq(m.query().ring_entries, 16, "ring_entries after setting the parameter");
        Mapping map(kPage);
        map.populate();
        const auto reg = m.add(map);
        for (int i = 0; i < 20; ++i) {
            ::mprotect(map.data(), kPage, PROT_READ);
            ::mprotect(map.data(), kPage, PROT_READ | PROT_WRITE);
            map.data()[0] = 1;
        }
        const auto lost = m.lost();
        c.expect(lost > 0, "events were lost");
        c.expect_eq(m.header().overflow, 1, "overflow flag while the ring is full");
        c.expect_eq(m.head(), 16, "head stops at the ring size");
        const auto st = m.stats();
        c.expect_eq(static_cast<long long>(st.process.events_lost), static_cast<long long>(lost),
                    "events_lost counter == ring header lost");
        c.expect_eq(static_cast<long long>(st.process.events), 16, "events counter");
        c.expect_eq(static_cast<long long>(st.process.invalidations),
                    static_cast<long long>(16 + lost), "every invalidation is queued or counted");
        const auto events = m.drain();
        c.expect_eq(static_cast<long long>(events.size()), 16, "drained events");
        for (std::size_t i = 0; i < events.size(); ++i) {
            c.expect_eq(static_cast<long long>(events[i].seq), static_cast<long long>(i), "seq");
        }
        ::mprotect(map.data(), kPage, PROT_READ);
        c.expect_eq(m.header().overflow, 0, "overflow flag clears once an event fits again");
        c.expect_eq(static_cast<long long>(m.lost()), static_cast<long long>(lost),
                    "lost never goes back");
        c.expect(!m.drain().empty(), "new event after draining");
        m.remove(reg.id);
    });
}

// ---- FAULT and SNAPSHOT -----------------------------------------------------

TEST_F(MirrorTest, FaultMakesPagesPresentWithoutTouchingThem) {
    Mirror m;
    Mapping map(16 * kPage);
    const auto reg = m.add(map);
    auto snap = m.snapshot(reg.id, map.addr(), map.size());
    EXPECT_EQ(snap.result.present, 0u);
    EXPECT_FALSE(page_present(map.data()));

    const auto f = m.fault(reg.id, map.addr() + 4 * kPage, 8 * kPage, true);
    EXPECT_EQ(f.pages_present, 8u);
    EXPECT_EQ(f.generation, m.generation(reg.slot));
    snap = m.snapshot(reg.id, map.addr(), map.size());
    EXPECT_EQ(snap.result.present, 8u);
    EXPECT_EQ(snap.result.writable, 8u);
    for (std::size_t i = 0; i < 16; ++i) {
        const bool inside = i >= 4 && i < 12;
        EXPECT_EQ(snap.pages[i], inside ? (ODP_MIRROR_PAGE_PRESENT | ODP_MIRROR_PAGE_WRITABLE) : 0u)
            << "page " << i;
        EXPECT_EQ(page_present(map.data() + i * kPage), inside) << "pagemap of page " << i;
        if (inside) {
            EXPECT_NE(page_pfn(map.data() + i * kPage), 0u);
        }
    }
    EXPECT_TRUE(m.drain().empty()) << "faulting in invalidates nothing";
    const auto st = m.stats();
    EXPECT_EQ(st.process.faults, 1u);
    EXPECT_EQ(st.process.pages_faulted, 8u);
    EXPECT_EQ(st.process.faults_in_flight, 0u);
}

TEST_F(MirrorTest, ReadFaultMapsPagesReadOnly) {
    Mirror m;
    Mapping map(4 * kPage);
    const auto reg = m.add(map);
    EXPECT_EQ(m.fault(reg.id, map.addr(), map.size(), false).pages_present, 4u);
    const auto snap = m.snapshot(reg.id, map.addr(), map.size());
    EXPECT_EQ(snap.result.present, 4u);
    EXPECT_EQ(snap.result.writable, 0u) << "a read fault of anonymous memory maps the zero page";
    EXPECT_EQ(m.fault(reg.id, map.addr(), map.size(), true).pages_present, 4u);
    EXPECT_EQ(m.snapshot(reg.id, map.addr(), map.size()).result.writable, 4u);
}

TEST_F(MirrorTest, FaultGenerationGoesStaleOnInvalidation) {
    Mirror m;
    Mapping map(4 * kPage);
    const auto reg = m.add(map);
    const auto f = m.fault(reg.id, map.addr(), map.size(), true);
    ASSERT_EQ(f.generation, m.generation(reg.slot));
    ASSERT_EQ(::madvise(map.data(), kPage, MADV_DONTNEED), 0);
    EXPECT_NE(m.generation(reg.slot), f.generation);
    const auto events = m.drain();
    ASSERT_EQ(events.size(), 1u) << describe(events);
    EXPECT_EQ(events[0].generation, m.generation(reg.slot));
    EXPECT_EQ(m.snapshot(reg.id, map.addr(), map.size()).result.present, 3u);
}

TEST_F(MirrorTest, FaultOnUnmappedOrInaccessibleMemoryFails) {
    Mirror m;
    Mapping map(4 * kPage);
    const auto reg = m.add(map);
    ASSERT_EQ(::munmap(map.data() + 2 * kPage, kPage), 0);
    EXPECT_EQ(m.try_fault(reg.id, map.addr(), map.size(), false), EFAULT);
    EXPECT_EQ(m.try_fault(reg.id, map.addr(), 2 * kPage, false), 0);
    ASSERT_EQ(::mprotect(map.data(), kPage, PROT_NONE), 0);
    EXPECT_EQ(m.try_fault(reg.id, map.addr(), kPage, false), EFAULT);
    ASSERT_EQ(::mprotect(map.data(), kPage, PROT_READ), 0);
    EXPECT_EQ(m.try_fault(reg.id, map.addr(), kPage, true), EPERM);
    EXPECT_EQ(m.try_fault(reg.id, map.addr(), kPage, false), 0);
    auto snap = m.snapshot(reg.id, map.addr(), map.size());
    EXPECT_EQ(snap.pages[2], 0u) << "a hole reads as not present";
    const auto st = m.stats();
    EXPECT_EQ(st.process.faults_in_flight, 0u);
    EXPECT_EQ(st.module.faults_in_flight, 0u);
}

TEST_F(MirrorTest, FaultedPageIsNotPinnedMigrationMovesIt) {
    Mirror m;
    Mapping map(kPage);
    const auto reg = m.add(map);
    m.fault(reg.id, map.addr(), kPage, true);
    map.data()[0] = 'm';
    (void)m.drain();
    const auto pfn_before = page_pfn(map.data());
    ASSERT_NE(pfn_before, 0u);

    std::string how;
    if (std::filesystem::exists("/sys/devices/system/node/node1")) {
        // Two NUMA nodes: move_pages to the node the page is not on.
        void* pages[1] = {map.data()};
        int status[1] = {-1};
        ASSERT_EQ(::syscall(SYS_move_pages, 0, 1, pages, nullptr, status, 0), 0);
        int node[1] = {status[0] == 0 ? 1 : 0};
        ASSERT_EQ(::syscall(SYS_move_pages, 0, 1, pages, node, status, 2 /* MPOL_MF_MOVE */), 0);
        ASSERT_EQ(status[0], node[0]) << "move_pages status";
        how = "move_pages";
    } else {
        // One node: soft-offline migrates the page to a fresh one the same way.
        constexpr int kMadvSoftOffline = 101;
        ASSERT_EQ(::madvise(map.data(), kPage, kMadvSoftOffline), 0)
            << "MADV_SOFT_OFFLINE: " << strerror(errno);
        how = "MADV_SOFT_OFFLINE";
    }
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_CLEAR, ODP_MIRROR_REASON_MIGRATION}),
              (std::vector<Interval>{{map.addr(), map.addr() + kPage}}))
        << how << describe(events);
    EXPECT_EQ(map.data()[0], 'm') << "contents migrated";
    EXPECT_NE(page_pfn(map.data()), pfn_before) << how << " moved the page: it was not pinned";
}

TEST_F(MirrorTest, MigratePagesMovesTheProcessAndReportsEvents) {
    if (!std::filesystem::exists("/sys/devices/system/node/node1")) {
        GTEST_SKIP() << "one NUMA node: migrate_pages has nowhere to go (odp-vm --numa 2)";
    }
    Mirror m;
    Mapping map(4 * kPage);
    const auto reg = m.add(map);
    m.fault(reg.id, map.addr(), map.size(), true);
    map.populate();
    (void)m.drain();
    void* pages[1] = {map.data()};
    int status[1] = {-1};
    ASSERT_EQ(::syscall(SYS_move_pages, 0, 1, pages, nullptr, status, 0), 0);
    const int from = status[0];
    ASSERT_GE(from, 0);
    const unsigned long old_nodes = 1UL << from;
    const unsigned long new_nodes = 1UL << (from == 0 ? 1 : 0);
    const auto pfn_before = page_pfn(map.data());
    const long left =
        ::syscall(SYS_migrate_pages, 0, 8 * sizeof(unsigned long), &old_nodes, &new_nodes);
    // Shared pages (libraries) stay where they are; ours is private.
    ASSERT_GE(left, 0) << "migrate_pages: " << strerror(errno);
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_CLEAR, ODP_MIRROR_REASON_MIGRATION}),
              (std::vector<Interval>{{map.addr(), map.addr() + map.size()}}))
        << describe(events);
    ASSERT_EQ(::syscall(SYS_move_pages, 0, 1, pages, nullptr, status, 0), 0);
    EXPECT_EQ(status[0], from == 0 ? 1 : 0) << "the page is on the other node now";
    EXPECT_NE(page_pfn(map.data()), pfn_before);
    EXPECT_EQ(map.data()[kPage], 2) << "contents migrated";
}

TEST_F(MirrorTest, FaultedPageIsNotPinnedPageoutSwapsIt) {
    if (!std::filesystem::exists("/proc/swaps")) {
        GTEST_SKIP() << "no /proc/swaps";
    }
    std::ifstream swaps("/proc/swaps");
    std::string line;
    int lines = 0;
    while (std::getline(swaps, line)) {
        ++lines;
    }
    if (lines < 2) {
        GTEST_SKIP() << "no swap device (run-mirror-tests.sh sets up zram swap when it can)";
    }
    Mirror m;
    Mapping map(4 * kPage);
    const auto reg = m.add(map);
    m.fault(reg.id, map.addr(), map.size(), true);
    map.populate();
    (void)m.drain();
    constexpr int kMadvPageout = 21;
    ASSERT_EQ(::madvise(map.data(), map.size(), kMadvPageout), 0) << strerror(errno);
    const auto events = m.drain();
    expect_well_formed(events, {reg});
    EXPECT_EQ(coverage(events, reg.id, {ODP_MIRROR_REASON_CLEAR}),
              (std::vector<Interval>{{map.addr(), map.addr() + map.size()}}))
        << describe(events);
    EXPECT_EQ(m.snapshot(reg.id, map.addr(), map.size()).result.present, 0u);
    EXPECT_TRUE(page_swapped(map.data())) << "pagemap says swapped out";
    EXPECT_EQ(map.data()[kPage], 2) << "and back in";
}

// ---- sharing and ownership --------------------------------------------------

TEST_F(MirrorTest, TwoFilesOfOneProcessShareOneMm) {
    auto a = std::make_unique<Mirror>();
    Mirror b;
    auto st = b.stats();
    EXPECT_EQ(st.process.open_files, 2u);
    EXPECT_EQ(st.process.mms, 1u);
    EXPECT_EQ(st.module.mms, 1u);
    EXPECT_EQ(st.module.open_files, 2u);

    Mapping map(2 * kPage);
    map.populate();
    const auto reg = a->add(map);
    EXPECT_EQ(b.generation(reg.slot), reg.generation) << "one generation array";
    EXPECT_EQ(b.fault(reg.id, map.addr(), map.size(), true).pages_present, 2u)
        << "one region table";
    ASSERT_EQ(::madvise(map.data(), kPage, MADV_DONTNEED), 0);
    const auto events = b.drain();
    ASSERT_EQ(events.size(), 1u) << "one ring" << describe(events);
    EXPECT_EQ(events[0].region_id, reg.id);
    EXPECT_EQ(a->head(), 1u);

    a.reset();  // closing the registering file removes its regions
    st = b.stats();
    EXPECT_EQ(st.process.open_files, 1u);
    EXPECT_EQ(st.process.regions, 0u);
    EXPECT_EQ(b.try_remove(reg.id), ENOENT);
    EXPECT_GT(b.generation(reg.slot), reg.generation);
}

TEST_F(MirrorTest, FileInheritedByAChildIsRefused) {
    Mirror m;
    Mapping map(kPage);
    const auto reg = m.add(map);
    const int fd = m.fd();
    run_in_child([fd, &map](ChildChecks& c) {
        auto q = sized<odp_mirror_query>();
        c.expect_eq(::ioctl(fd, ODP_MIRROR_IOC_QUERY, &q) == 0 ? 0 : errno, EPERM, "QUERY");
        auto r = sized<odp_mirror_register>();
        r.start = map.addr();
        r.length = kPage;
        c.expect_eq(::ioctl(fd, ODP_MIRROR_IOC_REGISTER, &r) == 0 ? 0 : errno, EPERM, "REGISTER");
        auto st = sized<odp_mirror_stats>();
        c.expect_eq(::ioctl(fd, ODP_MIRROR_IOC_STATS, &st) == 0 ? 0 : errno, EPERM, "STATS");
        void* p = ::mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd, 0);
        c.expect_eq(p == MAP_FAILED ? errno : 0, EPERM, "mmap");
        pollfd pfd{fd, POLLIN, 0};
        c.expect_eq(::poll(&pfd, 1, 0), 1, "poll returns");
        c.expect(pfd.revents & POLLERR, "poll reports POLLERR");
        // The child's own file is its own odp_mm.
        Mirror own;
        c.expect_eq(static_cast<long long>(own.stats().module.mms), 2, "two odp_mm objects");
        c.expect_eq(static_cast<long long>(own.stats().process.regions), 0,
                    "none of the parent's regions");
    });
    EXPECT_EQ(m.fault(reg.id, map.addr(), kPage, true).pages_present, 1u) << "parent unaffected";
    EXPECT_EQ(m.stats().module.mms, 1u);
}

TEST_F(MirrorTest, FilePassedOverAUnixSocketIsRefused) {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    Fd parent_end(sv[0]);
    Fd child_end(sv[1]);
    // The receiver exists before the file does: nothing is inherited.
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        parent_end.reset();
        const int fd = recv_fd(child_end.get());
        if (fd < 0) {
            _exit(2);
        }
        auto q = sized<odp_mirror_query>();
        const int err = ::ioctl(fd, ODP_MIRROR_IOC_QUERY, &q) == 0 ? 0 : errno;
        void* p = ::mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd, 0);
        const int map_err = p == MAP_FAILED ? errno : 0;
        _exit(err == EPERM && map_err == EPERM ? 0 : 1);
    }
    child_end.reset();
    Mirror m;
    ASSERT_TRUE(send_fd(parent_end.get(), m.fd()));
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "the receiver's ioctl and mmap must fail with EPERM (status " << status << ")";
    EXPECT_EQ(m.stats().module.mms, 1u) << "the receiver got no odp_mm of its own";
}

TEST_F(MirrorTest, LastCloseAfterTheOwnerExitedFreesEverything) {
    // The owner registers, forks a holder that inherits the file, and exits
    // with live regions; the holder closes the file long after the owner's
    // address space was torn down (the case upstream's struct hmm leaked on).
    int go[2];
    ASSERT_EQ(::pipe(go), 0);
    const pid_t owner = ::fork();
    ASSERT_GE(owner, 0);
    if (owner == 0) {
        try {
            Mirror m;
            Mapping map(8 * kPage);
            const auto reg = m.add(map);
            m.fault(reg.id, map.addr(), map.size(), true);
            if (::fork() == 0) {
                // Holder: keeps the inherited file (and its ring mapping is not
                // inherited) until the test says go, then exits.
                char c;
                _exit(::read(go[0], &c, 1) == 1 ? 0 : 1);
            }
            _exit(0);
        } catch (...) {
            _exit(1);
        }
    }
    int status = 0;
    ASSERT_EQ(::waitpid(owner, &status, 0), owner);
    ASSERT_EQ(status, 0);
    auto s = debugfs_stats();
    EXPECT_EQ(s["module.open_files"], 1) << "the holder still has the file";
    EXPECT_EQ(s["module.mms"], 1);
    EXPECT_EQ(s["module.regions"], 1) << "the region lives as long as its file";
    ASSERT_EQ(::write(go[1], "g", 1), 1);
    ::close(go[0]);
    ::close(go[1]);
    // The holder is the owner's child: reparented, reaped by init; wait for the gauges.
    EXPECT_TRUE(wait_for(module_gauges_zero)) << "the last close freed the region and odp_mm";
}

// ---- process exit -----------------------------------------------------------

void exit_with_live_regions_and_faults(bool kill) {
    const auto before = debugfs_stats();
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::close(ready[0]);
        try {
            Mirror m;
            Mirror second;
            const std::size_t len = 64ULL << 20;
            Mapping big(len);  // _exit() below leaves every mapping and file to the kernel
            const auto reg = m.add(big);
            Mapping small(4 * kPage);
            small.populate();
            m.add(small, 1);
            second.add(small, 2);
            std::vector<std::thread> faulters;
            std::atomic<int> faulted{0};  // faulters done with their first call
            for (int t = 0; t < 2; ++t) {
                faulters.emplace_back([&m, &faulted, reg, len, t] {
                    for (std::uint64_t i = 0;; ++i) {
                        const std::uint64_t off =
                            (i * 2 + static_cast<std::uint64_t>(t)) % 32 * (2ULL << 20);
                        (void)m.try_fault(reg.id, reg.start + off,
                                          std::min<std::uint64_t>(len - off, 2ULL << 20), true);
                        if (i == 0) {
                            faulted++;
                        }
                    }
                });
            }
            // Both faulters ran a fault and are into their next ones.
            while (faulted.load() < 2) {
                std::this_thread::sleep_for(1ms);
            }
            if (::write(ready[1], "r", 1) != 1) {
                _exit(2);
            }
            if (!kill) {
                std::this_thread::sleep_for(50ms);
                _exit(0);  // exit_group with both faulters in the kernel or about to be
            }
            for (;;) {
                std::this_thread::sleep_for(1s);
            }
        } catch (...) {
            _exit(1);
        }
    }
    ::close(ready[1]);
    char c = 0;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    ::close(ready[0]);
    if (kill) {
        std::this_thread::sleep_for(50ms);
        ::kill(pid, SIGKILL);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(kill ? WIFSIGNALED(status) : (WIFEXITED(status) && WEXITSTATUS(status) == 0))
        << "status " << status;
    EXPECT_TRUE(wait_for(module_gauges_zero)) << "files, odp_mm, regions, faults all gone";
    const auto after = debugfs_stats();
    EXPECT_GE(
        after.at("module.invalidations_teardown") - before.at("module.invalidations_teardown"), 3)
        << "every live region saw the teardown";
    EXPECT_GE(after.at("module.faults") - before.at("module.faults"), 1) << "faults really ran";
    EXPECT_EQ(after.at("module.registrations") - before.at("module.registrations"),
              after.at("module.unregistrations") - before.at("module.unregistrations"));
}

TEST_F(MirrorTest, ExitWithLiveRegionsAndFaultsInFlightLeavesNothing) {
    exit_with_live_regions_and_faults(false);
}

TEST_F(MirrorTest, KillWithLiveRegionsAndFaultsInFlightLeavesNothing) {
    exit_with_live_regions_and_faults(true);
}

// process_mrelease() reaps a dying process's memory the way the OOM reaper
// does: with a non-blockable notifier range.  The callback must handle it
// (it only takes spinlocks) and report it as teardown.
TEST_F(MirrorTest, ReapingADyingProcessIsANonBlockableTeardown) {
    constexpr long kPidfdOpen = 434;
    constexpr long kProcessMrelease = 448;
    const auto before = debugfs_stats();
    bool reaped = false;
    // A race with the child's own exit that the reaper usually wins; enough
    // attempts that a busy host cannot make it lose them all.
    for (int attempt = 0; attempt < 20 && !reaped; ++attempt) {
        int ready[2];
        ASSERT_EQ(::pipe(ready), 0);
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            ::close(ready[0]);
            try {
                Mirror m;
                Mapping map(32ULL << 20);
                map.populate();
                m.add(map);
                if (::write(ready[1], "r", 1) != 1) {
                    _exit(2);
                }
                for (;;) {
                    ::pause();
                }
            } catch (...) {
                _exit(1);
            }
        }
        ::close(ready[1]);
        char c = 0;
        ASSERT_EQ(::read(ready[0], &c, 1), 1);
        ::close(ready[0]);
        Fd pidfd(static_cast<int>(::syscall(kPidfdOpen, pid, 0)));
        ASSERT_GE(pidfd.get(), 0) << strerror(errno);
        ASSERT_EQ(::kill(pid, SIGKILL), 0);
        // Fails with ESRCH/EINVAL when the child already tore its mm down.
        if (::syscall(kProcessMrelease, pidfd.get(), 0) != 0 && errno == ENOSYS) {
            ::waitpid(pid, nullptr, 0);
            GTEST_SKIP() << "no process_mrelease() on this kernel (it came in 5.15): the "
                            "OOM reaper's path cannot be forced here";
        }
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        const auto after = debugfs_stats();
        reaped = after.at("module.invalidations_nonblocking") >
                 before.at("module.invalidations_nonblocking");
    }
    EXPECT_TRUE(reaped) << "process_mrelease never beat the exit in 20 attempts";
    EXPECT_TRUE(wait_for(module_gauges_zero));
    const auto after = debugfs_stats();
    EXPECT_GE(
        after.at("module.invalidations_teardown") - before.at("module.invalidations_teardown"),
        after.at("module.invalidations_nonblocking") -
            before.at("module.invalidations_nonblocking"))
        << "every non-blockable invalidation counts as teardown";
}

// ---- bad arguments ----------------------------------------------------------

struct BadCase {
    const char* what;
    unsigned long cmd;
    std::function<void(std::vector<std::uint8_t>&)> mutate;  // on a valid argument
    int expected;
};

template <typename T>
std::vector<std::uint8_t> bytes_of(const T& t) {
    std::vector<std::uint8_t> b(sizeof(T));
    std::memcpy(b.data(), &t, sizeof(T));
    return b;
}

template <typename T, typename F>
std::function<void(std::vector<std::uint8_t>&)> edit(F f) {
    return [f](std::vector<std::uint8_t>& b) {
        T t;
        std::memcpy(&t, b.data(), sizeof(T));
        f(t);
        std::memcpy(b.data(), &t, sizeof(T));
    };
}

TEST_F(MirrorTest, BadArgumentsFailWithTheDocumentedErrnoAndLeakNothing) {
    Mirror m;
    Mapping map(4 * kPage);
    const auto live = m.add(map);
    const auto before = m.stats();

    auto reg = sized<odp_mirror_register>();
    reg.start = map.addr();
    reg.length = map.size();
    auto unreg = sized<odp_mirror_unregister>();
    unreg.id = live.id;
    auto fault = sized<odp_mirror_fault>();
    fault.id = live.id;
    fault.start = map.addr();
    fault.length = kPage;
    auto snap = sized<odp_mirror_snapshot>();
    snap.id = live.id;
    snap.start = map.addr();
    snap.length = kPage;
    auto stats = sized<odp_mirror_stats>();
    auto query = sized<odp_mirror_query>();
    const std::map<unsigned long, std::vector<std::uint8_t>> valid = {
        {ODP_MIRROR_IOC_REGISTER, bytes_of(reg)}, {ODP_MIRROR_IOC_UNREGISTER, bytes_of(unreg)},
        {ODP_MIRROR_IOC_FAULT, bytes_of(fault)},  {ODP_MIRROR_IOC_SNAPSHOT, bytes_of(snap)},
        {ODP_MIRROR_IOC_STATS, bytes_of(stats)},  {ODP_MIRROR_IOC_QUERY, bytes_of(query)},
    };
    const std::uint64_t top = m.query().address_limit;
    using R = odp_mirror_register;
    using F = odp_mirror_fault;
    using S = odp_mirror_snapshot;
    const std::vector<BadCase> cases = {
        {"register zero length", ODP_MIRROR_IOC_REGISTER, edit<R>([](R& r) { r.length = 0; }),
         EINVAL},
        {"register unaligned start", ODP_MIRROR_IOC_REGISTER, edit<R>([](R& r) { r.start += 1; }),
         EINVAL},
        {"register unaligned length", ODP_MIRROR_IOC_REGISTER,
         edit<R>([](R& r) { r.length = kPage + 8; }), EINVAL},
        {"register start+length wraps", ODP_MIRROR_IOC_REGISTER, edit<R>([](R& r) {
             r.start = ~0ULL - kPage + 1;
             r.length = 2 * kPage;
         }),
         EOVERFLOW},
        {"register huge length wraps", ODP_MIRROR_IOC_REGISTER,
         edit<R>([](R& r) { r.length = ~0ULL - kPage + 1; }), EOVERFLOW},
        {"register past the end of the address space", ODP_MIRROR_IOC_REGISTER,
         edit<R>([top](R& r) {
             r.start = top - kPage;
             r.length = 2 * kPage;
         }),
         ERANGE},
        {"register kernel addresses", ODP_MIRROR_IOC_REGISTER, edit<R>([](R& r) {
             r.start = 0xffff880000000000ULL;
             r.length = kPage;
         }),
         ERANGE},
        {"register unknown flags", ODP_MIRROR_IOC_REGISTER, edit<R>([](R& r) { r.flags = 1; }),
         EINVAL},
        {"register reserved", ODP_MIRROR_IOC_REGISTER, edit<R>([](R& r) { r.reserved[1] = 1; }),
         EINVAL},
        {"register output field set", ODP_MIRROR_IOC_REGISTER, edit<R>([](R& r) { r.id = 7; }),
         EINVAL},
        {"register short size", ODP_MIRROR_IOC_REGISTER,
         edit<R>([](R& r) { r.size = sizeof(R) - 8; }), EINVAL},
        {"register zero size", ODP_MIRROR_IOC_REGISTER, edit<R>([](R& r) { r.size = 0; }), EINVAL},
        {"register long size, non-zero tail", ODP_MIRROR_IOC_REGISTER,
         [](std::vector<std::uint8_t>& b) {
             b.resize(sizeof(R) + 16, 0);
             b[sizeof(R) + 3] = 1;
             const std::uint32_t sz = sizeof(R) + 16;
             std::memcpy(b.data(), &sz, 4);
         },
         E2BIG},
        {"register size beyond a page", ODP_MIRROR_IOC_REGISTER,
         [](std::vector<std::uint8_t>& b) {
             b.resize(2 * kPage, 0);
             const auto sz = static_cast<std::uint32_t>(2 * kPage);
             std::memcpy(b.data(), &sz, 4);
         },
         E2BIG},
        {"unregister unknown id", ODP_MIRROR_IOC_UNREGISTER,
         edit<odp_mirror_unregister>([](auto& u) { u.id = 0x7fff0000; }), ENOENT},
        {"unregister id 0", ODP_MIRROR_IOC_UNREGISTER,
         edit<odp_mirror_unregister>([](auto& u) { u.id = 0; }), ENOENT},
        {"unregister reserved", ODP_MIRROR_IOC_UNREGISTER,
         edit<odp_mirror_unregister>([](auto& u) { u.reserved[0] = 1; }), EINVAL},
        {"unregister short size", ODP_MIRROR_IOC_UNREGISTER,
         edit<odp_mirror_unregister>([](auto& u) { u.size = 4; }), EINVAL},
        {"fault unknown id", ODP_MIRROR_IOC_FAULT, edit<F>([](F& f) { f.id = 0x7fff0000; }),
         ENOENT},
        {"fault outside the region", ODP_MIRROR_IOC_FAULT,
         edit<F>([](F& f) { f.start += 4 * kPage; }), ERANGE},
        {"fault straddling the region end", ODP_MIRROR_IOC_FAULT, edit<F>([](F& f) {
             f.start += 3 * kPage;
             f.length = 2 * kPage;
         }),
         ERANGE},
        {"fault zero length", ODP_MIRROR_IOC_FAULT, edit<F>([](F& f) { f.length = 0; }), EINVAL},
        {"fault unaligned", ODP_MIRROR_IOC_FAULT, edit<F>([](F& f) { f.start += 16; }), EINVAL},
        {"fault wraps", ODP_MIRROR_IOC_FAULT, edit<F>([](F& f) { f.length = ~0ULL - kPage + 1; }),
         EOVERFLOW},
        {"fault longer than max_fault_bytes", ODP_MIRROR_IOC_FAULT,
         edit<F>([](F& f) { f.length = 2ULL << 30; }), EINVAL},
        {"fault unknown flags", ODP_MIRROR_IOC_FAULT, edit<F>([](F& f) { f.flags = 0x10; }),
         EINVAL},
        {"fault reserved0", ODP_MIRROR_IOC_FAULT, edit<F>([](F& f) { f.reserved0 = 1; }), EINVAL},
        {"fault reserved", ODP_MIRROR_IOC_FAULT, edit<F>([](F& f) { f.reserved[0] = 1; }), EINVAL},
        {"fault long size, zero tail is accepted", ODP_MIRROR_IOC_FAULT,
         [](std::vector<std::uint8_t>& b) {
             b.resize(sizeof(F) + 64, 0);
             const std::uint32_t sz = sizeof(F) + 64;
             std::memcpy(b.data(), &sz, 4);
         },
         0},
        {"snapshot pages pointer not writable", ODP_MIRROR_IOC_SNAPSHOT,
         edit<S>([](S& s) { s.pages = 0x10; }), EFAULT},
        {"snapshot pages pointer to read-only memory", ODP_MIRROR_IOC_SNAPSHOT,
         edit<S>([](S& s) { s.pages = reinterpret_cast<std::uintptr_t>("read-only literal"); }),
         EFAULT},
        {"snapshot reserved", ODP_MIRROR_IOC_SNAPSHOT, edit<S>([](S& s) { s.reserved[1] = 1; }),
         EINVAL},
        {"snapshot outside the region", ODP_MIRROR_IOC_SNAPSHOT,
         edit<S>([](S& s) { s.start -= kPage; }), ERANGE},
        {"stats flags", ODP_MIRROR_IOC_STATS, edit<odp_mirror_stats>([](auto& s) { s.flags = 1; }),
         EINVAL},
        {"stats output field set", ODP_MIRROR_IOC_STATS,
         edit<odp_mirror_stats>([](auto& s) { s.process.regions = 1; }), EINVAL},
        {"stats module output field set", ODP_MIRROR_IOC_STATS,
         edit<odp_mirror_stats>([](auto& s) { s.module.reserved[9] = 1; }), EINVAL},
        {"stats short size", ODP_MIRROR_IOC_STATS,
         edit<odp_mirror_stats>([](auto& s) { s.size = 8; }), EINVAL},
        {"query output field set", ODP_MIRROR_IOC_QUERY,
         edit<odp_mirror_query>([](auto& q) { q.features = 1; }), EINVAL},
        {"query reserved", ODP_MIRROR_IOC_QUERY,
         edit<odp_mirror_query>([](auto& q) { q.reserved[2] = 1; }), EINVAL},
        {"query address_limit set", ODP_MIRROR_IOC_QUERY,
         edit<odp_mirror_query>([](auto& q) { q.address_limit = 1; }), EINVAL},
    };
    for (const auto& c : cases) {
        auto arg = valid.at(c.cmd);
        c.mutate(arg);
        EXPECT_EQ(m.try_ioctl(c.cmd, arg.data()), c.expected) << c.what;
    }
    // Bad pointers for the argument itself.
    for (const auto& [cmd, _] : valid) {
        EXPECT_EQ(m.try_ioctl(cmd, nullptr), EFAULT) << "null argument, cmd " << std::hex << cmd;
        EXPECT_EQ(m.try_ioctl(cmd, reinterpret_cast<void*>(1)), EFAULT) << "bad pointer";
    }
    // A struct that ends in unmapped memory.
    {
        Mapping guard(2 * kPage);
        ASSERT_EQ(::munmap(guard.data() + kPage, kPage), 0);
        auto* tail = guard.data() + kPage - 8;
        const std::uint32_t sz = sizeof(odp_mirror_register);
        std::memcpy(tail, &sz, 4);
        EXPECT_EQ(m.try_ioctl(ODP_MIRROR_IOC_REGISTER, tail), EFAULT)
            << "struct crossing into a hole";
        ::munmap(guard.data(), kPage);
        guard.release();
    }
    EXPECT_EQ(m.try_ioctl(_IOWR(ODP_MIRROR_IOC_MAGIC, 0x3f, odp_mirror_query), &query), ENOTTY);
    EXPECT_EQ(m.try_ioctl(_IOWR('x', 0x00, odp_mirror_query), &query), ENOTTY);

    // mmap: offsets, sizes, protections, sharing.
    const auto& q = m.query();
    auto mmap_errno = [&](std::size_t len, int prot, int flags, std::uint64_t off) {
        return ::mmap_errno(m.fd(), len, prot, flags, off);
    };
    EXPECT_EQ(mmap_errno(kPage, PROT_READ, MAP_SHARED, 3 * kPage), EINVAL) << "unknown offset";
    EXPECT_EQ(mmap_errno(q.ring_mmap_size + kPage, PROT_READ, MAP_SHARED, ODP_MIRROR_MMAP_RING),
              EINVAL)
        << "longer than the ring";
    EXPECT_EQ(mmap_errno(q.generations_mmap_size + kPage, PROT_READ, MAP_SHARED,
                         ODP_MIRROR_MMAP_GENERATIONS),
              EINVAL);
    EXPECT_EQ(mmap_errno(kPage, PROT_READ | PROT_WRITE, MAP_SHARED, ODP_MIRROR_MMAP_RING), EACCES);
    EXPECT_EQ(mmap_errno(kPage, PROT_READ | PROT_WRITE, MAP_SHARED, ODP_MIRROR_MMAP_GENERATIONS),
              EACCES);
    EXPECT_EQ(mmap_errno(kPage, PROT_READ, MAP_PRIVATE, ODP_MIRROR_MMAP_RING), EINVAL);
    EXPECT_EQ(mmap_errno(kPage, PROT_READ, MAP_SHARED, ODP_MIRROR_MMAP_RING), 0);
    {
        void* p =
            ::mmap(nullptr, kPage, PROT_READ, MAP_SHARED, m.fd(), ODP_MIRROR_MMAP_GENERATIONS);
        ASSERT_NE(p, MAP_FAILED);
        EXPECT_NE(::mprotect(p, kPage, PROT_READ | PROT_WRITE), 0) << "no upgrade to writable";
        EXPECT_EQ(errno, EACCES);
        ::munmap(p, kPage);
    }

    // Nothing leaked or changed by any of the above.
    const auto after = m.stats();
    EXPECT_EQ(after.process.regions, 1u);
    EXPECT_EQ(after.process.registrations, before.process.registrations);
    EXPECT_EQ(after.process.faults_in_flight, 0u);
    EXPECT_EQ(after.module.regions, 1u);
    EXPECT_EQ(after.module.mms, 1u);
    m.remove(live.id);
}

TEST_F(MirrorTest, RegionLimitFailsWithEnospc) {
    ModuleParam few("max_regions", "4");
    run_in_child([](ChildChecks& c) {
        Mirror m;
        c.expect_eq(m.query().max_regions, 4, "max_regions after setting the parameter");
        Mapping map(kPage);
        std::vector<odp_mirror_register> regs;
        for (int i = 0; i < 4; ++i) {
            regs.push_back(m.add(map));
        }
        auto reg = sized<odp_mirror_register>();
        reg.start = map.addr();
        reg.length = kPage;
        c.expect_eq(m.try_ioctl(ODP_MIRROR_IOC_REGISTER, &reg), ENOSPC, "fifth region");
        m.remove(regs[2].id);
        const auto again = m.add(map);
        c.expect_eq(again.slot, regs[2].slot, "freed slot reused");
        c.expect_eq(static_cast<long long>(m.stats().process.regions), 4, "regions");
    });
}

TEST_F(MirrorTest, ModuleParametersRejectBadValues) {
    for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
             {"ring_entries", "100"}, {"ring_entries", "8"}, {"max_regions", "0"}}) {
        std::ofstream out("/sys/module/odp_mirror/parameters/" + name);
        out << value;
        out.flush();
        EXPECT_FALSE(out.good()) << name << "=" << value << " must be refused";
    }
}

// ---- adversity: bounded and accounted state, wakeups, stalls ---------------

// Opens a mirror in a short-lived child (running as @uid), registers a page,
// sends the file back over a unix socket and exits: the per-process state
// then outlives its process.  The received fd, or -errno of the child's open.
int open_in_exiting_child(uid_t uid) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        return -errno;
    }
    Fd ours(sv[0]);
    Fd theirs(sv[1]);
    const pid_t pid = ::fork();
    if (pid < 0) {
        return -errno;
    }
    if (pid == 0) {
        if (uid != 0 && (::setresgid(uid, uid, uid) != 0 || ::setresuid(uid, uid, uid) != 0)) {
            _exit(send_fd(theirs.get(), -errno) ? 0 : 1);
        }
        const int fd = ::open(ODP_MIRROR_DEVICE_PATH, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            _exit(send_fd(theirs.get(), -errno) ? 0 : 1);
        }
        void* page =
            ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        auto reg = sized<odp_mirror_register>();
        reg.start = reinterpret_cast<std::uintptr_t>(page);
        reg.length = kPage;
        if (page == MAP_FAILED || ::ioctl(fd, ODP_MIRROR_IOC_REGISTER, &reg) != 0) {
            _exit(send_fd(theirs.get(), -errno) ? 0 : 1);
        }
        _exit(send_fd(theirs.get(), fd) ? 0 : 1);
    }
    theirs.reset();
    const int fd = recv_fd(ours.get());
    int status = 0;
    ::waitpid(pid, &status, 0);
    return fd;
}

TEST_F(MirrorTest, PerUserLimitCountsStatesThatOutliveTheirProcess) {
    std::vector<Fd> held;
    held.emplace_back(open_in_exiting_child(0));
    ASSERT_GE(held.back().get(), 0) << strerror(-held.back().get());
    auto s = debugfs_stats();
    const long long one = s["user0.bytes"];
    ASSERT_GT(one, 0) << "debugfs user0.bytes: a state is charged to the user who opened it";
    EXPECT_EQ(s["user0.mms"], 1);
    EXPECT_EQ(s["module.mms"], 1) << "the state outlived its process";
    EXPECT_EQ(s["module.regions"], 1) << "and so did its region";

    ModuleParam limit("max_user_bytes", std::to_string(3 * one + one / 2));
    for (int i = 0; i < 2; ++i) {
        held.emplace_back(open_in_exiting_child(0));
        ASSERT_GE(held.back().get(), 0)
            << "state " << i + 2 << ": " << strerror(-held.back().get());
    }
    EXPECT_EQ(open_in_exiting_child(0), -EDQUOT) << "a fourth state is over max_user_bytes";
    s = debugfs_stats();
    EXPECT_EQ(s["user0.bytes"], 3 * one);
    EXPECT_EQ(s["user0.mms"], 3);
    EXPECT_EQ(s["module.mms"], 3);

    Fd other(open_in_exiting_child(65534));
    EXPECT_GE(other.get(), 0) << "another user has a limit of its own: " << strerror(-other.get());
    EXPECT_EQ(debugfs_stats()["user65534.bytes"], one);

    held.clear();
    other.reset();
    EXPECT_TRUE(wait_for(module_gauges_zero)) << "the last holder's close freed everything";
    s = debugfs_stats();
    EXPECT_EQ(s.count("user0.bytes") + s.count("user65534.bytes"), 0u) << "no charge left";
}

TEST_F(MirrorTest, FileKeptOverExecKeepsItsStateUntilTheNewImageExits) {
    int go[2], execed[2];
    ASSERT_EQ(::pipe(go), 0);
    ASSERT_EQ(::pipe2(execed, O_CLOEXEC), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::close(go[1]);
        ::close(execed[0]);
        const int fd = ::open(ODP_MIRROR_DEVICE_PATH, O_RDWR);  // no O_CLOEXEC
        void* page =
            ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        auto reg = sized<odp_mirror_register>();
        reg.start = reinterpret_cast<std::uintptr_t>(page);
        reg.length = kPage;
        if (fd < 0 || ::ioctl(fd, ODP_MIRROR_IOC_REGISTER, &reg) != 0 || ::dup2(go[0], 0) != 0) {
            _exit(1);
        }
        // The new image knows nothing of the file; it waits for the test.
        ::execl("/bin/sh", "sh", "-c", "read line", static_cast<char*>(nullptr));
        _exit(2);
    }
    ::close(go[0]);
    ::close(execed[1]);
    char c;
    EXPECT_EQ(::read(execed[0], &c, 1), 0) << "exec happened (the CLOEXEC pipe closed)";
    ::close(execed[0]);
    auto s = debugfs_stats();
    EXPECT_EQ(s["module.open_files"], 1) << "the file survived exec";
    EXPECT_EQ(s["module.mms"], 1) << "its state is the old address space's";
    EXPECT_EQ(s["module.regions"], 1);
    EXPECT_GT(s["user0.bytes"], 0) << "still charged to its user";
    ASSERT_EQ(::write(go[1], "\n", 1), 1);
    ::close(go[1]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
    EXPECT_TRUE(wait_for(module_gauges_zero));
    EXPECT_EQ(debugfs_stats().count("user0.bytes"), 0u);
}

// A memory cgroup v2 for the scope (run-mirror-tests.sh mounts cgroup2).
class MemoryCgroup {
  public:
    MemoryCgroup() : path_("/sys/fs/cgroup/odp-mirror-test-" + std::to_string(::getpid())) {
        std::ofstream("/sys/fs/cgroup/cgroup.subtree_control") << "+memory" << std::flush;
        if (::mkdir(path_.c_str(), 0755) != 0) {
            throw_errno(errno, "mkdir " + path_ + " (is cgroup2 mounted on /sys/fs/cgroup?)");
        }
    }
    ~MemoryCgroup() { ::rmdir(path_.c_str()); }
    MemoryCgroup(const MemoryCgroup&) = delete;
    MemoryCgroup& operator=(const MemoryCgroup&) = delete;

    void enter() const { write("cgroup.procs", "0"); }
    void set_max(long long bytes) const { write("memory.max", std::to_string(bytes)); }
    long long current() const {
        std::ifstream in(path_ + "/memory.current");
        long long v = -1;
        in >> v;
        return v;
    }

  private:
    void write(const std::string& file, const std::string& value) const {
        std::ofstream out(path_ + "/" + file);
        out << value << std::flush;
        if (!out) {
            throw std::runtime_error("cannot write " + value + " to " + path_ + "/" + file);
        }
    }
    std::string path_;
};

TEST_F(MirrorTest, StateMemoryIsChargedToTheOpenersMemoryCgroup) {
    MemoryCgroup cgroup;
    ModuleParam ring("ring_entries", "65536");  // a 4 MiB ring per state
    run_in_child([&cgroup](ChildChecks& c) {
        cgroup.enter();
        const long long before = cgroup.current();
        long long with = 0;
        {
            Mirror m(false);
            with = cgroup.current();
        }
        c.expect(with - before >= (4LL << 20),
                 "memory.current grew by the 4 MiB ring: " + std::to_string(before) + " -> " +
                     std::to_string(with));
        c.expect(cgroup.current() < with - (3LL << 20), "and shrank on close");
        cgroup.set_max(cgroup.current() + (8LL << 20));
        ModuleParam big("ring_entries", "1048576");  // 64 MiB
        const int fd = ::open(ODP_MIRROR_DEVICE_PATH, O_RDWR | O_CLOEXEC);
        c.expect_eq(fd < 0 ? errno : 0, ENOMEM, "open of a 64 MiB ring 8 MiB under memory.max");
        if (fd >= 0) {
            ::close(fd);
        }
    });
}

// The reader drains while a dropped event is held (inject_drop_hold) between
// reading the tail and counting itself lost, then sleeps in poll: releasing
// the drop must wake it, and poll must report the loss it has not handled.
// Each step waits for the one before (the module's drops_held, the poller's
// state in /proc), so the order is the same however slowly the guest runs.
// The held drop comes from punching a hole in shared memory: that holds no
// lock of the address space (madvise would hold mmap_lock, and the reader's
// own mmap, brk and thread creation would wait for the hold).
TEST_F(MirrorTest, PollWakesForAnEventDroppedWhileTheReaderCaughtUp) {
    if (std::thread::hardware_concurrency() < 2) {
        GTEST_SKIP() << "needs 2 vCPUs: the held drop spins on one with preemption off";
    }
    // NUMA balancing write-protects pages now and then (PROTECTION events),
    // which would wake the reader for another reason.
    std::optional<ScopedWrite> no_numa_balancing;
    if (std::filesystem::exists("/proc/sys/kernel/numa_balancing")) {
        no_numa_balancing.emplace("/proc/sys/kernel/numa_balancing", "0");
    }
    ModuleParam small_ring("ring_entries", "16");
    run_in_child([](ChildChecks& c) {
        Mirror m;
        c.expect((m.query().features & ODP_MIRROR_FEATURE_POLL_LOST) != 0, "feature POLL_LOST");
        m.set_consumer_flags(ODP_MIRROR_CONSUMER_POLL_LOST);
        Fd shm(::memfd_create("odp-mirror-poll-drop", MFD_CLOEXEC));
        c.expect(shm.get() >= 0 && ::ftruncate(shm.get(), static_cast<off_t>(kPage)) == 0,
                 std::string("memfd: ") + strerror(errno));
        Mapping map(kPage, PROT_READ | PROT_WRITE, MAP_SHARED, shm.get());
        m.add(map);
        for (int i = 0; i < 64 && m.head() < 16; ++i) {
            ::madvise(map.data(), kPage, MADV_DONTNEED);  // one event each
        }
        c.expect_eq(static_cast<long long>(m.head()), 16, "ring full");
        std::optional<InjectKnob> hold(std::in_place, "inject_drop_hold", "1");
        std::thread dropper([&] {
            ::fallocate(shm.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                        static_cast<off_t>(kPage));
        });
        c.expect(wait_for([] { return debugfs_number("drops_held") == 1; }),
                 "the drop reached its hold");
        m.drain();
        c.expect_eq(static_cast<long long>(m.lost()), 0, "the drop is still held");
        m.set_lost_seen(m.lost());
        std::atomic<pid_t> poller_tid{0};
        std::atomic<int> ready{-2};
        std::thread poller([&] {
            poller_tid = static_cast<pid_t>(::syscall(SYS_gettid));
            pollfd pfd{m.fd(), POLLIN, 0};
            ready = ::poll(&pfd, 1, -1);
        });
        c.expect(wait_for([&] { return poller_tid != 0 && sleeping_in_poll(poller_tid); }),
                 "the reader sleeps in poll");
        c.expect_eq(debugfs_number("drops_held"), 1,
                    "the drop is still held (its 10 s bound ran out: guest too slow)");
        hold.reset();  // the drop counts itself lost and must wake the reader
        const bool woke = wait_for([&] { return ready != -2; });
        if (!woke) {
            ::madvise(map.data(), kPage, MADV_DONTNEED);  // a queued event ends the poll
        }
        poller.join();
        dropper.join();
        if (!woke) {
            c.expect(false, "poll slept through the dropped event (60 s)");
            return;
        }
        c.expect_eq(ready, 1, "poll reports the dropped event");
        c.expect_eq(static_cast<long long>(m.lost()), 1, "lost");
        const auto queued = m.drain();
        c.expect(queued.empty(), "nothing queued after the drop:" + describe(queued));
        pollfd pfd{m.fd(), POLLIN, 0};
        c.expect_eq(::poll(&pfd, 1, 0), 1, "readable while the loss is not handled");
        m.set_lost_seen(m.lost());
        c.expect_eq(::poll(&pfd, 1, 0), 0, "not readable once the loss is handled");
    });
}

// A poller against a producer whose bursts overflow a 16-slot ring.  The
// proof does not depend on the producer's pace: a poll that ends with nothing
// to read although an event was made after the reader drained has missed it
// (each one is queued or counted lost, and both make the file readable).
TEST_F(MirrorTest, StressPollerNeverSleepsThroughQueuedOrLostEvents) {
    ModuleParam small_ring("ring_entries", "16");
    run_in_child([](ChildChecks& c) {
        Mirror m;
        m.set_consumer_flags(ODP_MIRROR_CONSUMER_POLL_LOST);
        Mapping map(8 * kPage);
        m.add(map);
        // One burst that overflows before the poller starts: a loss to handle.
        for (int i = 0; i < 40; ++i) {
            ::madvise(map.data() + (i % 8) * kPage, kPage, MADV_DONTNEED);
        }
        std::atomic<bool> stop{false};
        std::atomic<std::uint64_t> started{0}, done{0};  // madvise calls
        std::thread producer([&] {
            std::mt19937 rng(11);
            while (!stop.load()) {
                // Bursts that overflow the ring now and then, short pauses.
                for (auto i = rng() % 40 + 1; i > 0; --i) {
                    started++;
                    ::madvise(map.data() + (rng() % 8) * kPage, kPage, MADV_DONTNEED);
                    done++;
                }
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
            }
        });
        long long polls = 0, idle = 0, missed = 0;
        const auto end = std::chrono::steady_clock::now() + 3s;
        while (std::chrono::steady_clock::now() < end) {
            m.drain();
            m.set_lost_seen(m.lost());
            const auto started_after_drain = started.load();
            pollfd pfd{m.fd(), POLLIN, 0};
            if (::poll(&pfd, 1, 2000) == 0) {
                // More calls done than had started at the drain: one started
                // after it and made its event before the poll ended.
                (done.load() > started_after_drain ? missed : idle)++;
            }
            polls++;
        }
        stop = true;
        producer.join();
        std::printf("poll stress: %lld polls (%lld idle), %llu events, %llu lost\n", polls, idle,
                    static_cast<unsigned long long>(m.head()),
                    static_cast<unsigned long long>(m.lost()));
        c.expect_eq(missed, 0, "polls that slept through queued or lost events");
        c.expect(m.lost() > 0, "the ring overflowed");
    });
}

// REGISTER's result goes to a page whose writes stall (userfaultfd
// write-protect, nobody resolving the fault), like a page on a hung FUSE
// file.  Other ioctls and closes of the process must not wait for it.
TEST_F(MirrorTest, RegisterStalledOnItsOutputBlocksNoOtherIoctlOrClose) {
    Mirror m;
    Mapping map(4 * kPage);
    const auto victim = m.add(map.addr(), kPage);
    auto second = std::make_unique<Mirror>(false);
    second->add(map.addr() + kPage, kPage);

    Fd uffd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
    ASSERT_GE(uffd.get(), 0) << "userfaultfd: " << strerror(errno);
    uffdio_api api{};
    api.api = UFFD_API;
    ASSERT_EQ(::ioctl(uffd.get(), UFFDIO_API, &api), 0) << strerror(errno);
    Mapping arg_page(kPage);
    arg_page.populate();
    uffdio_register uregister{};
    uregister.range = {arg_page.addr(), kPage};
    uregister.mode = UFFDIO_REGISTER_MODE_WP;
    ASSERT_EQ(::ioctl(uffd.get(), UFFDIO_REGISTER, &uregister), 0) << strerror(errno);
    auto reg = sized<odp_mirror_register>();
    reg.start = map.addr() + 2 * kPage;
    reg.length = kPage;
    std::memcpy(arg_page.data(), &reg, sizeof(reg));
    uffdio_writeprotect wp{};
    wp.range = {arg_page.addr(), kPage};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    ASSERT_EQ(::ioctl(uffd.get(), UFFDIO_WRITEPROTECT, &wp), 0) << strerror(errno);

    int stalled_err = -1;
    std::thread stalled(
        [&] { stalled_err = m.try_ioctl(ODP_MIRROR_IOC_REGISTER, arg_page.data()); });
    pollfd pfd{uffd.get(), POLLIN, 0};
    const bool faulted = ::poll(&pfd, 1, 60000) == 1;
    std::atomic<bool> done{false};
    int unregister_err = -1;
    std::thread other([&] {
        unregister_err = m.try_remove(victim.id);
        second.reset();  // close() of another file with a region
        done = true;
    });
    // Bounds a hang only: with the bug, they wait until the stall is lifted.
    const bool completed = wait_for([&] { return done.load(); });
    // Let the stalled REGISTER go in any case, so that nothing hangs.
    wp.mode = 0;
    EXPECT_EQ(::ioctl(uffd.get(), UFFDIO_WRITEPROTECT, &wp), 0) << strerror(errno);
    stalled.join();
    other.join();
    EXPECT_TRUE(faulted) << "REGISTER never wrote its result into the protected page";
    EXPECT_TRUE(completed) << "UNREGISTER and close() waited for the stalled REGISTER";
    EXPECT_EQ(unregister_err, 0);
    EXPECT_EQ(stalled_err, 0);
    std::memcpy(&reg, arg_page.data(), sizeof(reg));
    EXPECT_NE(reg.id, 0u);
    EXPECT_EQ(m.stats().process.regions, 1u) << "the stalled one, nothing else";
}

// MADV_DOFORK clears VM_DONTCOPY unless the mapping is VM_IO.
TEST_F(MirrorTest, RingMappingsStayOutOfForkChildrenEvenAfterMadvDofork) {
    Mirror m;
    const auto& q = m.query();
    Mapping ring(q.ring_mmap_size, PROT_READ, MAP_SHARED, m.fd(), ODP_MIRROR_MMAP_RING);
    Mapping consumer(q.consumer_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd(),
                     static_cast<off_t>(ODP_MIRROR_MMAP_CONSUMER));
    EXPECT_NE(::madvise(ring.data(), ring.size(), MADV_DOFORK), 0);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_NE(::madvise(consumer.data(), consumer.size(), MADV_DOFORK), 0);
    EXPECT_EQ(errno, EINVAL);
    run_in_child([&](ChildChecks& c) {
        // msync() fails with ENOMEM on addresses that are not mapped.
        c.expect(::msync(ring.data(), kPage, MS_ASYNC) != 0 && errno == ENOMEM,
                 "the ring is not mapped in the child");
        c.expect(::msync(consumer.data(), kPage, MS_ASYNC) != 0 && errno == ENOMEM,
                 "the consumer page is not mapped in the child");
    });
}

TEST_F(MirrorTest, ReadOnlyFileMapsTheReadOnlyAreas) {
    Fd fd(::open(ODP_MIRROR_DEVICE_PATH, O_RDONLY | O_CLOEXEC));
    ASSERT_GE(fd.get(), 0) << strerror(errno);
    auto q = sized<odp_mirror_query>();
    ASSERT_EQ(::ioctl(fd.get(), ODP_MIRROR_IOC_QUERY, &q), 0) << strerror(errno);
    auto mmap_errno = [&](std::size_t len, int prot, int flags, std::uint64_t off) {
        return ::mmap_errno(fd.get(), len, prot, flags, off);
    };
    EXPECT_EQ(mmap_errno(q.ring_mmap_size, PROT_READ, MAP_SHARED, ODP_MIRROR_MMAP_RING), 0);
    EXPECT_EQ(
        mmap_errno(q.generations_mmap_size, PROT_READ, MAP_SHARED, ODP_MIRROR_MMAP_GENERATIONS), 0);
    EXPECT_EQ(mmap_errno(kPage, PROT_READ | PROT_WRITE, MAP_SHARED, ODP_MIRROR_MMAP_CONSUMER),
              EACCES)
        << "a read-only file cannot map the consumer page writable";
    EXPECT_EQ(mmap_errno(kPage, PROT_READ, MAP_PRIVATE, ODP_MIRROR_MMAP_RING), EINVAL);
}

// Four 2 MiB batches, each seeing its result invalidated for 600 ms: with a
// budget per batch every batch would succeed within its own 1 s; with one
// budget per call the call gives up (EBUSY) once the retries add up to 1 s.
// The errno is the proof, not a wall-clock bound (guests run emulated).
TEST_F(MirrorTest, FaultRetriesAreBoundedPerCallNotPerBatch) {
    Mirror m;
    Mapping map(8ULL << 20);
    const auto reg = m.add(map);
    InjectKnob retry("inject_retry_ms", "600");
    EXPECT_EQ(m.try_fault(reg.id, map.addr(), map.size(), true), EBUSY);
    EXPECT_GT(m.stats().process.fault_retries, 0u);
}

// Retries injected for 2 minutes within a retry budget of 1 minute: only a
// signal ends the call early (EINTR; EBUSY would mean it was ignored), so
// the test does not depend on when the call starts retrying or how long the
// signaller takes to run.  The signal is repeated until the call returns.
TEST_F(MirrorTest, FaultRetryingIsInterruptedByASignal) {
    struct sigaction quiet {};
    quiet.sa_handler = [](int) {};  // no SA_RESTART
    struct sigaction old {};
    ASSERT_EQ(::sigaction(SIGUSR1, &quiet, &old), 0);
    Mirror m;
    Mapping map(2ULL << 20);
    const auto reg = m.add(map);
    InjectKnob retry("inject_retry_ms", "120000");
    InjectKnob budget("inject_retry_budget_ms", "60000");
    const pthread_t faulting = ::pthread_self();
    std::atomic<bool> done{false};
    std::thread signaller([faulting, &done] {
        while (!done.load()) {
            std::this_thread::sleep_for(50ms);
            if (!done.load())
                ::pthread_kill(faulting, SIGUSR1);
        }
    });
    const int err = m.try_fault(reg.id, map.addr(), map.size(), true);
    done.store(true);
    signaller.join();
    ::sigaction(SIGUSR1, &old, nullptr);
    EXPECT_EQ(err, EINTR);
    EXPECT_GT(m.stats().process.fault_retries, 0u);
}

TEST_F(MirrorTest, RegisterAtTheRegionLimitFailsBeforeInsertingANotifier) {
    ModuleParam few("max_regions", "2");
    run_in_child([](ChildChecks& c) {
        Mirror m;
        Mapping map(kPage);
        m.add(map);
        const auto before = debugfs_stats()["module.notifier_inserts"];
        m.add(map);
        const auto one = debugfs_stats()["module.notifier_inserts"];
        c.expect_eq(one - before, 1, "a registration inserts one notifier");
        auto reg = sized<odp_mirror_register>();
        reg.start = map.addr();
        reg.length = kPage;
        c.expect_eq(m.try_ioctl(ODP_MIRROR_IOC_REGISTER, &reg), ENOSPC, "third region");
        c.expect_eq(debugfs_stats()["module.notifier_inserts"], one,
                    "the refused registration inserted no notifier");
    });
}

// ---- stress -----------------------------------------------------------------

TEST_F(MirrorTest, StressFaultsRaceUnmapRemapAndMadvise) {
    constexpr std::size_t kChunks = 64;
    const std::size_t chunk = 16 * kPage;
    const std::size_t window_len = kChunks * chunk;
    Mirror m;
    Mapping window(window_len);
    const auto whole = m.add(window, 1);
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> faults_ok{0}, faults_err{0}, mutations{0}, drained{0};
    std::atomic<int> unexpected_errno{0};

    auto faulter = [&](unsigned seed) {
        std::mt19937 rng(seed);
        while (!stop.load(std::memory_order_relaxed)) {
            const std::size_t c = rng() % kChunks;
            const int err = m.try_fault(whole.id, window.addr() + c * chunk, chunk, rng() % 2);
            if (err == 0) {
                faults_ok++;
            } else if (err == EFAULT || err == EPERM || err == EBUSY) {
                faults_err++;
            } else {
                unexpected_errno = err;
            }
        }
    };
    auto mutator = [&](unsigned seed) {
        std::mt19937 rng(seed);
        while (!stop.load(std::memory_order_relaxed)) {
            char* c = window.data() + (rng() % kChunks) * chunk;
            switch (rng() % 5) {
                case 0:
                    ::munmap(c, chunk);
                    ::mmap(c, chunk, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                    break;
                case 1:
                    ::madvise(c, chunk, MADV_DONTNEED);
                    break;
                case 2: {
                    char* d = window.data() + (rng() % kChunks) * chunk;
                    if (d != c &&
                        ::mremap(c, chunk, chunk, MREMAP_MAYMOVE | MREMAP_FIXED, d) != MAP_FAILED) {
                        ::mmap(c, chunk, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                    }
                    break;
                }
                case 3:
                    ::mprotect(c, chunk, PROT_READ);
                    ::mprotect(c, chunk, PROT_READ | PROT_WRITE);
                    break;
                default:
                    ::mremap(c, chunk, chunk / 2, 0);
                    ::mmap(c, chunk, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                    break;
            }
            mutations++;
        }
    };
    auto registrar = [&] {
        std::mt19937 rng(7);
        while (!stop.load(std::memory_order_relaxed)) {
            const std::size_t c = rng() % kChunks;
            auto reg = sized<odp_mirror_register>();
            reg.start = window.addr() + c * chunk;
            reg.length = chunk;
            reg.cookie = 2;
            int err = m.try_ioctl(ODP_MIRROR_IOC_REGISTER, &reg);
            if (err == 0) {
                err = m.try_fault(reg.id, reg.start, chunk, true);
                if (err == EFAULT || err == EPERM || err == EBUSY) {
                    err = 0;
                }
                if (const int rm = m.try_remove(reg.id); rm != 0) {
                    err = rm;
                }
            }
            if (err != 0) {
                unexpected_errno = err;
            }
        }
    };
    std::vector<odp_mirror_event> bad_events;
    std::uint64_t expected_seq = 0;
    auto reader = [&] {
        pollfd pfd{m.fd(), POLLIN, 0};
        while (!stop.load(std::memory_order_relaxed)) {
            ::poll(&pfd, 1, 20);
            for (const auto& e : m.drain()) {
                if (e.seq != expected_seq || e.start >= e.end ||
                    (e.region_id == whole.id &&
                     (e.start < window.addr() || e.end > window.addr() + window_len))) {
                    bad_events.push_back(e);
                }
                expected_seq = e.seq + 1;
                drained++;
            }
        }
    };
    std::vector<std::thread> threads;
    threads.emplace_back(faulter, 1);
    threads.emplace_back(faulter, 2);
    threads.emplace_back(mutator, 3);
    threads.emplace_back(mutator, 4);
    threads.emplace_back(registrar);
    threads.emplace_back(reader);
    // 4 s of racing, and on until every kind of work happened at least once
    // (a busy host can starve a thread for seconds).
    std::this_thread::sleep_for(4s);
    wait_for([&] { return faults_ok > 0 && mutations > 0 && drained > 0; });
    stop = true;
    for (auto& t : threads) {
        t.join();
    }
    const auto st = m.stats();
    std::printf(
        "stress: %llu faults ok, %llu failed on a changing mapping, %llu mutations, "
        "%llu events drained, %llu lost, %llu retries\n",
        static_cast<unsigned long long>(faults_ok.load()),
        static_cast<unsigned long long>(faults_err.load()),
        static_cast<unsigned long long>(mutations.load()),
        static_cast<unsigned long long>(drained.load()), static_cast<unsigned long long>(m.lost()),
        static_cast<unsigned long long>(st.process.fault_retries));
    EXPECT_EQ(unexpected_errno.load(), 0);
    EXPECT_TRUE(bad_events.empty()) << describe(bad_events);
    EXPECT_GT(faults_ok.load(), 0u);
    EXPECT_GT(mutations.load(), 0u);
    EXPECT_GT(drained.load(), 0u);
    EXPECT_EQ(st.process.faults_in_flight, 0u);
    EXPECT_EQ(st.process.regions, 1u);
    EXPECT_EQ(st.process.events + st.process.events_lost, st.process.invalidations);
    m.remove(whole.id);
}

}  // namespace
