// Hostile-use fuzzer for /dev/odp_mirror (run as root in a guest by
// run-mirror-tests.sh, after the gtest cases):
//
//   odp_mirror_fuzz --seed N --duration SECONDS [--workers N]
//
// Worker processes, each with a few threads, throw random and malformed
// ioctls and mmaps at the device while other threads register, fault,
// snapshot, unregister, remap, madvise and close; workers fork children that
// try their inherited files, pass files to the fuzzer over SCM_RIGHTS (it
// keeps them for a while, so states outlive their process) and are killed
// with SIGKILL at random, often in the middle of a FAULT.  Every ioctl and
// mmap must fail only with a documented errno, and every event read from the
// ring must be well formed.  The exit status is non-zero if anything was
// unexpected; run-mirror-tests.sh then checks that the module gauges are
// zero, that rmmod works and that the kernel log is clean.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "mirror_device.hpp"

using namespace odp_mirror_test;
using Clock = std::chrono::steady_clock;

namespace {

const std::size_t kPage = page_size();
constexpr int kMadvPopulateWrite = 23;      // Linux 5.14
constexpr int kMremapDontUnmap = 4;         // Linux 5.7
constexpr std::size_t kWindowPages = 4096;  // 16 MiB the workers fight over

// Errnos the ABI documents for ioctls, mmaps and opens; anything else is a bug.
// EBADF, ENODEV: another thread closed the file (its number may even be
// reused by another kind of file), which is part of the game.
const std::set<int> kIoctlErrnos = {EINVAL, E2BIG,     EFAULT, ENOTTY, ENOENT,
                                    ERANGE, EOVERFLOW, ENOSPC, EPERM,  EBUSY,
                                    EINTR,  ESRCH,     ENOMEM, EDQUOT, EBADF};
const std::set<int> kMmapErrnos = {EINVAL, EACCES, EPERM, ENOMEM, EAGAIN, EBADF, ENODEV};
const std::set<int> kOpenErrnos = {ENOMEM, EDQUOT, EMFILE};

// What every worker did, in shared memory: calls and successes per operation.
enum Op { kRegister, kUnregister, kFault, kSnapshot, kRandomIoctl, kStats, kQuery, kMmap, kOps };
const char* const kOpNames[kOps] = {"REGISTER",     "UNREGISTER", "FAULT", "SNAPSHOT",
                                    "random ioctl", "STATS",      "QUERY", "mmap"};
struct Tally {
    std::atomic<int> unexpected{0};
    std::atomic<long long> calls[kOps] = {};
    std::atomic<long long> ok[kOps] = {};
    std::atomic<long long> events_checked{0};
};
static_assert(sizeof(Tally) <= 4096, "the tally lives in one shared page");
Tally* g_tally = nullptr;

void unexpected(const char* what, int err) {
    std::fprintf(stderr, "odp_mirror_fuzz: unexpected: %s: %s (errno %d)\n", what, strerror(err),
                 err);
    g_tally->unexpected.fetch_add(1);
}

void count(Op op, bool ok) {
    g_tally->calls[op].fetch_add(1, std::memory_order_relaxed);
    if (ok) {
        g_tally->ok[op].fetch_add(1, std::memory_order_relaxed);
    }
}

// In a fork child of a threaded process (so only system calls, no malloc or
// stdio): whether /proc/self/maps shows the device mapped at `address`.
// Whether anything at all is mapped there says less: the test is about the
// device's pages, not about what else the address space holds.
bool device_mapped_at(const void* address) {
    const int maps = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (maps < 0) {
        return false;
    }
    const auto want = reinterpret_cast<std::uintptr_t>(address);
    char buffer[4096];
    char line[512];
    std::size_t used = 0;
    bool found = false;
    for (ssize_t got; !found && (got = ::read(maps, buffer, sizeof buffer)) > 0;) {
        for (ssize_t i = 0; i < got && !found; ++i) {
            if (buffer[i] != '\n') {
                if (used + 1 < sizeof line) {
                    line[used++] = buffer[i];
                }
                continue;
            }
            line[used] = '\0';
            used = 0;
            // "start-end perms offset dev inode path"
            char* end = nullptr;
            const std::uintptr_t start = std::strtoull(line, &end, 16);
            const std::uintptr_t stop = *end == '-' ? std::strtoull(end + 1, nullptr, 16) : 0;
            found = start <= want && want < stop && std::strstr(line, "odp_mirror") != nullptr;
        }
    }
    ::close(maps);
    return found;
}

// One worker process: a few files, a window of memory, threads doing random things.
class Worker {
  public:
    Worker(std::uint64_t seed, int holder_sock)
        : seed_(seed), holder_(holder_sock), window_(kWindowPages * kPage) {
        bad_page_ = Mapping(kPage, PROT_READ);
        for (int i = 0; i < 2; ++i) {
            open_file(i, O_RDWR);
        }
    }

    void run(std::chrono::milliseconds lifetime) {
        const auto end = Clock::now() + lifetime;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < 4; ++t) {
            threads.emplace_back([this, t, end] {
                std::mt19937_64 rng(seed_ * 16 + t);
                while (Clock::now() < end) {
                    step(rng);
                }
            });
        }
        for (auto& t : threads) {
            t.join();
        }
    }

  private:
    static constexpr int kFiles = 3;

    int fd(std::mt19937_64& rng) { return files_[rng() % kFiles].load(); }

    void open_file(int i, int mode) {
        const int fd = ::open(ODP_MIRROR_DEVICE_PATH, mode | O_CLOEXEC);
        if (fd < 0 && !kOpenErrnos.count(errno)) {
            unexpected("open", errno);
        }
        const int old = files_[i].exchange(fd);
        if (old >= 0) {
            ::close(old);
        }
    }

    // A pointer for an ioctl argument: mostly good, sometimes hostile.
    void* pointer(std::mt19937_64& rng, void* good) {
        switch (rng() % 16) {
            case 0:
                return nullptr;
            case 1:
                return reinterpret_cast<void*>(0xffff888000000000ULL);  // kernel address
            case 2:
                return bad_page_.data();  // read-only
            case 3:
                return window_.data() + (rng() % kWindowPages) * kPage;  // may be unmapped
            default:
                return good;
        }
    }

    std::uint64_t random_start(std::mt19937_64& rng) {
        switch (rng() % 8) {
            case 0:
                return rng();
            case 1:
                return rng() % (1ULL << 47) & ~(kPage - 1);
            default:
                return window_.addr() + (rng() % kWindowPages) * kPage;
        }
    }
    std::uint64_t random_length(std::mt19937_64& rng) {
        switch (rng() % 8) {
            case 0:
                return rng();
            case 1:
                return 0;
            case 2:
                return (rng() % 512 + 1) * kPage * 8;  // several FAULT batches
            default:
                return (rng() % 64 + 1) * kPage;
        }
    }
    std::uint32_t random_id(std::mt19937_64& rng) {
        if (rng() % 8 == 0) {
            return static_cast<std::uint32_t>(rng());
        }
        return ids_[rng() % ids_.size()].load();
    }

    static void check_ioctl(Op op, int rc) {
        count(op, rc == 0);
        if (rc != 0 && !kIoctlErrnos.count(errno)) {
            unexpected(kOpNames[op], errno);
        }
    }

    void step(std::mt19937_64& rng) {
        const int f = fd(rng);
        switch (rng() % 14) {
            case 0:
            case 1: {
                auto reg = sized<odp_mirror_register>();
                reg.start = random_start(rng);
                reg.length = random_length(rng);
                reg.cookie = rng();
                const int rc = ::ioctl(f, ODP_MIRROR_IOC_REGISTER, pointer(rng, &reg));
                check_ioctl(kRegister, rc);
                if (rc == 0) {
                    ids_[rng() % ids_.size()] = reg.id;
                }
                break;
            }
            case 2: {
                auto unreg = sized<odp_mirror_unregister>();
                unreg.id = random_id(rng);
                check_ioctl(kUnregister, ::ioctl(f, ODP_MIRROR_IOC_UNREGISTER, &unreg));
                break;
            }
            case 3:
            case 4: {
                auto fault = sized<odp_mirror_fault>();
                fault.id = random_id(rng);
                fault.start = random_start(rng);
                fault.length = random_length(rng);
                fault.flags = rng() % 2;
                check_ioctl(kFault, ::ioctl(f, ODP_MIRROR_IOC_FAULT, pointer(rng, &fault)));
                break;
            }
            case 5: {
                auto snap = sized<odp_mirror_snapshot>();
                std::vector<std::uint8_t> pages(64);
                snap.id = random_id(rng);
                snap.start = random_start(rng);
                snap.length = (rng() % 64 + 1) * kPage;
                snap.pages = reinterpret_cast<std::uintptr_t>(pointer(rng, pages.data()));
                check_ioctl(kSnapshot, ::ioctl(f, ODP_MIRROR_IOC_SNAPSHOT, &snap));
                break;
            }
            case 6: {
                // Random bytes, random size field, random command number.
                std::vector<std::uint8_t> arg(rng() % 700 + 4);
                for (auto& b : arg) {
                    b = rng() % 4 == 0 ? static_cast<std::uint8_t>(rng()) : 0;
                }
                const std::uint32_t sizes[] = {0,
                                               8,
                                               64,
                                               72,
                                               96,
                                               520,
                                               static_cast<std::uint32_t>(arg.size()),
                                               static_cast<std::uint32_t>(rng())};
                const std::uint32_t size = sizes[rng() % 8];
                std::memcpy(arg.data(), &size, 4);
                const unsigned nr = static_cast<unsigned>(rng() % 9);
                const unsigned long cmd =
                    rng() % 8 == 0 ? static_cast<unsigned long>(rng())
                                   : _IOC(rng() % 4, ODP_MIRROR_IOC_MAGIC, nr, rng() % 1024);
                check_ioctl(kRandomIoctl, ::ioctl(f, cmd, pointer(rng, arg.data())));
                break;
            }
            case 7:
                mutate_window(rng);
                break;
            case 8:
                map_device(rng, f);
                break;
            case 9: {
                auto st = sized<odp_mirror_stats>();
                check_ioctl(kStats, ::ioctl(f, ODP_MIRROR_IOC_STATS, &st));
                auto q = sized<odp_mirror_query>();
                check_ioctl(kQuery, ::ioctl(f, ODP_MIRROR_IOC_QUERY, &q));
                pollfd pfd{f, POLLIN, 0};
                ::poll(&pfd, 1, static_cast<int>(rng() % 3));
                break;
            }
            case 10:
                if (rng() % 4 == 0) {
                    open_file(static_cast<int>(rng() % kFiles), rng() % 4 == 0 ? O_RDONLY : O_RDWR);
                }
                break;
            case 11:
                if (holder_ >= 0 && f >= 0 && rng() % 4 == 0) {
                    send_fd(holder_, f, MSG_DONTWAIT);
                }
                break;
            case 12:
                if (rng() % 16 == 0) {
                    inherited_file_child(f);
                }
                break;
            default:
                read_ring(rng, f);
                break;
        }
    }

    // The window must never have holes: a device mapping placed in one by
    // the kernel would be overwritten by the next MAP_FIXED here (the thread
    // reading it then dies of SIGSEGV, or it looks like a mapping that a fork
    // child inherited).  So "unmap" is a MAP_FIXED replacement (the module
    // sees the same UNMAP invalidation) and a move leaves its source mapped
    // (MREMAP_DONTUNMAP).  But a MAP_FIXED call unmaps its target first and
    // may then fail: before 6.17 an mremap of a range that spans several
    // mappings fails with EFAULT after the unmap, which the window's
    // mprotects make common.  So a change holds layout_ exclusively, fills
    // any place it emptied, and checks that it left no hole; device mmaps
    // hold it shared from mmap to munmap, so none lands in a hole meanwhile.
    void mutate_window(std::mt19937_64& rng) {
        const std::size_t pages = rng() % 64 + 1;
        char* at = window_.data() + (rng() % (kWindowPages - pages)) * kPage;
        const std::size_t len = pages * kPage;
        const std::unique_lock layout(layout_);
        const auto replace = [len](char* where, int prot) {
            return ::mmap(where, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
                   MAP_FAILED;
        };
        char* emptied = nullptr;  // a MAP_FIXED target, if the call failed
        switch (const auto kind = rng() % 6) {
            case 0:
            case 1:
                if (!replace(at, kind == 0 ? PROT_NONE : PROT_READ | PROT_WRITE)) {
                    emptied = at;
                }
                break;
            case 2:
                ::madvise(at, len, rng() % 2 ? MADV_DONTNEED : MADV_PAGEOUT);
                break;
            case 3:
                ::mprotect(at, len, rng() % 2 ? PROT_READ : PROT_READ | PROT_WRITE);
                break;
            case 4: {
                char* to = window_.data() + (rng() % (kWindowPages - pages)) * kPage;
                if (to != at &&
                    ::mremap(at, len, len, MREMAP_MAYMOVE | MREMAP_FIXED | kMremapDontUnmap, to) ==
                        MAP_FAILED) {
                    emptied = to;
                }
                break;
            }
            default:
                // Make pages present without risking SIGSEGV on holes and
                // read-only parts (EINVAL before 5.14).
                ::madvise(at, len, kMadvPopulateWrite);
                break;
        }
        if (emptied != nullptr) {
            replace(emptied, PROT_NONE);
        }
        // mincore fails with ENOMEM on any unmapped page of the range.
        if (::mincore(window_.data(), window_.size(), resident_.data()) != 0 && errno == ENOMEM) {
            unexpected("a hole in the fuzzer's own window after a change", errno);
        }
    }

    void map_device(std::mt19937_64& rng, int f) {
        const std::uint64_t offsets[] = {ODP_MIRROR_MMAP_RING, ODP_MIRROR_MMAP_CONSUMER,
                                         ODP_MIRROR_MMAP_GENERATIONS, rng() & ~(kPage - 1), kPage};
        const std::uint64_t off = offsets[rng() % 5];
        const std::size_t len = (rng() % 80 + 1) * kPage;
        const int prot = rng() % 3 == 0 ? PROT_READ | PROT_WRITE : PROT_READ;
        const int flags = rng() % 5 == 0 ? MAP_PRIVATE : MAP_SHARED;
        const std::shared_lock layout(layout_);
        void* p = ::mmap(nullptr, len, prot, flags, f, static_cast<off_t>(off));
        count(kMmap, p != MAP_FAILED);
        if (p == MAP_FAILED) {
            if (!kMmapErrnos.count(errno)) {
                unexpected("mmap of the device", errno);
            }
            return;
        }
        // None of these may let the mapping escape into a child or become writable.
        ::madvise(p, len, MADV_DOFORK);
        ::mprotect(p, len, PROT_READ | PROT_WRITE);
        ::mremap(p, len, len * 2, 0);
        if (rng() % 4 == 0) {
            const pid_t pid = ::fork();
            if (pid == 0) {
                _exit(device_mapped_at(p) ? 1 : 0);
            }
            int status = 0;
            if (pid > 0 && ::waitpid(pid, &status, 0) == pid && status != 0) {
                unexpected("a device mapping was inherited by a fork child", EEXIST);
            }
        }
        ::munmap(p, len);
    }

    void read_ring(std::mt19937_64& rng, int f) {
        if (f < 0) {
            return;
        }
        const std::shared_lock layout(layout_);
        void* ring = ::mmap(nullptr, kPage * 2, PROT_READ, MAP_SHARED, f, ODP_MIRROR_MMAP_RING);
        void* cons = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, f,
                            static_cast<off_t>(ODP_MIRROR_MMAP_CONSUMER));
        if (ring != MAP_FAILED && cons != MAP_FAILED) {
            const auto* hdr = static_cast<const odp_mirror_ring_header*>(ring);
            auto* c = static_cast<odp_mirror_ring_consumer*>(cons);
            const auto* events = reinterpret_cast<const odp_mirror_event*>(
                static_cast<const char*>(ring) + ODP_MIRROR_RING_EVENTS_OFFSET);
            const std::uint64_t h = __atomic_load_n(&hdr->head, __ATOMIC_ACQUIRE);
            if (hdr->entries < 16 || (hdr->entries & (hdr->entries - 1)) != 0) {
                unexpected("the ring header's entries is not a power of two >= 16", EPROTO);
            }
            const std::uint64_t visible = kPage / sizeof(odp_mirror_event);  // second page only
            for (std::uint64_t t = __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE); t != h; ++t) {
                const std::uint64_t slot = t & (hdr->entries - 1);
                if (slot >= visible || h - t > hdr->entries) {
                    break;
                }
                const odp_mirror_event e = events[slot];
                g_tally->events_checked.fetch_add(1, std::memory_order_relaxed);
                if (e.seq == t && (e.start >= e.end || e.start % kPage != 0 || e.reason == 0 ||
                                   e.reason > ODP_MIRROR_REASON_OTHER)) {
                    unexpected("a malformed event in the ring", EPROTO);
                }
            }
            switch (rng() % 4) {
                case 0:  // a bogus tail: the kernel must only drop events
                    __atomic_store_n(&c->tail, rng(), __ATOMIC_RELEASE);
                    break;
                case 1:
                    __atomic_store_n(&c->lost_seen, rng(), __ATOMIC_RELEASE);
                    __atomic_store_n(&c->flags, static_cast<std::uint32_t>(rng()),
                                     __ATOMIC_RELEASE);
                    break;
                default:
                    __atomic_store_n(&c->tail, h, __ATOMIC_RELEASE);
                    __atomic_store_n(&c->lost_seen, hdr->lost, __ATOMIC_RELEASE);
                    break;
            }
        }
        if (ring != MAP_FAILED) {
            ::munmap(ring, kPage * 2);
        }
        if (cons != MAP_FAILED) {
            ::munmap(cons, kPage);
        }
    }

    // A fork child has another address space: its inherited file refuses it.
    static void inherited_file_child(int f) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            auto q = sized<odp_mirror_query>();
            const bool refused = f < 0 || (::ioctl(f, ODP_MIRROR_IOC_QUERY, &q) != 0 &&
                                           (errno == EPERM || errno == EBADF));
            _exit(refused ? 0 : 1);
        }
        int status = 0;
        if (pid > 0 && ::waitpid(pid, &status, 0) == pid && status != 0) {
            unexpected("a fork child used its parent's file", EEXIST);
        }
    }

    std::uint64_t seed_;
    int holder_;
    Mapping window_;
    Mapping bad_page_;
    std::atomic<int> files_[kFiles] = {-1, -1, -1};
    std::array<std::atomic<std::uint32_t>, 16> ids_{};
    std::shared_mutex layout_;  // see mutate_window
    std::vector<unsigned char> resident_ = std::vector<unsigned char>(kWindowPages);  // layout_
};

struct Options {
    std::uint64_t seed = 1;
    int seconds = 60;
    int workers = 3;
};

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string name = argv[i];
        const char* value = argv[i + 1];
        if (name == "--seed") {
            o.seed = std::strtoull(value, nullptr, 0);
        } else if (name == "--duration") {
            o.seconds = std::atoi(value);
        } else if (name == "--workers") {
            o.workers = std::max(1, std::atoi(value));
        } else {
            std::fprintf(stderr, "usage: %s --seed N --duration SECONDS [--workers N]\n", argv[0]);
            std::exit(2);
        }
    }
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    const Options opt = parse(argc, argv);
    std::printf("odp_mirror_fuzz: seed %llu, %d s, %d workers\n",
                static_cast<unsigned long long>(opt.seed), opt.seconds, opt.workers);
    std::fflush(stdout);
    void* shared =
        ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        std::perror("mmap");
        return 2;
    }
    g_tally = new (shared) Tally;
    struct sigaction skip {};
    skip.sa_handler = SIG_IGN;
    ::sigaction(SIGPIPE, &skip, nullptr);

    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0) {
        std::perror("socketpair");
        return 2;
    }
    Fd holder(sv[0]);
    Fd worker_end(sv[1]);
    std::mt19937_64 rng(opt.seed);
    std::vector<pid_t> alive;
    std::vector<Fd> held;  // files passed to us: their states outlive their processes
    long long spawned = 0, killed = 0, received = 0;
    const auto end = Clock::now() + std::chrono::seconds(opt.seconds);
    while (Clock::now() < end) {
        while (static_cast<int>(alive.size()) < opt.workers) {
            const std::uint64_t seed = rng();
            const auto lifetime = std::chrono::milliseconds(rng() % 1500 + 100);
            const pid_t pid = ::fork();
            if (pid == 0) {
                holder.reset();
                try {
                    Worker(seed, worker_end.get()).run(lifetime);
                } catch (const std::exception& e) {
                    // Setup failures only (the window mmap); not the module's fault.
                    std::fprintf(stderr, "odp_mirror_fuzz: worker: %s\n", e.what());
                }
                _exit(0);  // with everything still open and mapped
            }
            if (pid > 0) {
                alive.push_back(pid);
                spawned++;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 50));
        if (!alive.empty() && rng() % 3 == 0) {
            ::kill(alive[rng() % alive.size()], SIGKILL);  // often mid-FAULT
            killed++;
        }
        for (int fd; (fd = recv_fd(holder.get(), MSG_DONTWAIT)) >= 0;) {
            held.emplace_back(fd);
            received++;
        }
        if (held.size() > 64 || (!held.empty() && rng() % 4 == 0)) {
            held.erase(held.begin() + static_cast<long>(rng() % held.size()));
        }
        for (auto it = alive.begin(); it != alive.end();) {
            int status = 0;
            if (::waitpid(*it, &status, WNOHANG) == *it) {
                it = alive.erase(it);
            } else {
                ++it;
            }
        }
    }
    for (const pid_t pid : alive) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }
    while (::waitpid(-1, nullptr, 0) > 0) {
    }
    for (int fd; (fd = recv_fd(holder.get(), MSG_DONTWAIT)) >= 0;) {
        ::close(fd);
        received++;
    }
    held.clear();
    const int bad = g_tally->unexpected.load();
    for (int op = 0; op < kOps; ++op) {
        std::printf("odp_mirror_fuzz: %-12s %8lld calls, %8lld succeeded\n", kOpNames[op],
                    g_tally->calls[op].load(), g_tally->ok[op].load());
    }
    std::printf(
        "odp_mirror_fuzz: %lld workers, %lld killed, %lld files passed over SCM_RIGHTS, "
        "%lld events checked, %d unexpected results\n",
        spawned, killed, received, g_tally->events_checked.load(), bad);
    return bad == 0 ? 0 : 1;
}
