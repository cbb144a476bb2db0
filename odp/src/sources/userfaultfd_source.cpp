// MonitorKind::Userfaultfd: userfaultfd's non-cooperative events.
//
// Registration: UFFDIO_REGISTER_MODE_WP and nothing else, and no page is ever
// write-protected (no UFFDIO_WRITEPROTECT, no UFFD_FEATURE_WP_UNPOPULATED or
// WP_ASYNC). MODE_MISSING would route every first touch of anonymous memory
// to us; MODE_WP with nothing protected routes no fault at all, yet the VMA
// carries our context, which is all the UNMAP/REMOVE/REMAP events need.
//
// The kernel makes a thread that munmaps, mremaps or madvise(DONTNEED)s
// registered memory sleep until this process has read the event. So the
// reader below runs on a thread of its own, takes no lock and allocates
// nothing: it reads, copies events into a bounded ring (a full ring is an
// overflow, never a wait) and wakes the dispatcher. A listener therefore can
// never stall an unmapping thread, and an unmapping thread holding any lock
// (malloc's arena lock when free() trims the heap, a region lock) can never
// stall the reader. (libfabric's userfaultfd monitor hung in free() for want
// of exactly this: ofiwg/libfabric#5554, #5662.)
#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <odp/error.hpp>
#include <set>
#include <string>

#include "../creator_process.hpp"
#include "../memory_map.hpp"
#include "../test_hooks.hpp"
#include "source.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace odp::detail {
namespace {

// What AddressSanitizer's runtime maps for itself (none in other builds):
// its shadow memory and its allocator's heap. The runtime remaps pages there
// (mmap MAP_FIXED) from any thread, the reader included (shadow of a stack,
// a size class's next region): registered, such a remap is an unmap event
// that waits for the reader, which then waits for itself (seen as hangs of
// the ASan tests of whole-address-space regions).
std::vector<Range> sanitizer_runtime_memory() {
#if defined(__SANITIZE_ADDRESS__)
    std::size_t scale = 0;
    std::size_t offset = 0;
    __asan_get_shadow_mapping(&scale, &offset);
    // The shadow of the whole 47-bit user address space, its gap included;
    // the primary allocator's space of compiler-rt on x86-64 (4 TiB at
    // 0x600000000000, asan_allocator.h).
    return {Range{offset, offset + ((std::uintptr_t{1} << 47) >> scale)},
            Range{0x600000000000ULL, 0x640000000000ULL}};
#else
    return {};
#endif
}

constexpr std::uint64_t required_features =
    UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_REMAP;

// Registration is per mapping and always of the whole mapping: registering a
// part would split the application's VMA, and before Linux 6.17 its own
// mremap() of a range spanning the split fails with EFAULT.

// A part that cannot be registered, with the errno that says why.
struct Refusal {
    Range range;
    int errno_value;
    std::string why;
    std::string mapping;  // path and permissions
};

// What register_range() did to a range.
struct Registration {
    std::vector<Range> watched;  // registered now, in order, adjacent ones merged
    std::vector<Refusal> refusals;
};

void append_merged(std::vector<Range>& ranges, Range range) {
    if (!ranges.empty() && ranges.back().end == range.begin) {
        ranges.back().end = range.end;
    } else {
        ranges.push_back(range);
    }
}

// vm.unprivileged_userfaultfd, or -1 when it cannot be read.
int read_unprivileged_sysctl() {
    std::ifstream file("/proc/sys/vm/unprivileged_userfaultfd");
    int value = -1;
    file >> value;
    return file ? value : -1;
}

bool has_ptrace_capability() {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (::syscall(SYS_capget, &header, data) != 0) {
        return false;
    }
    return (data[CAP_TO_INDEX(CAP_SYS_PTRACE)].effective & CAP_TO_MASK(CAP_SYS_PTRACE)) != 0;
}

std::string errno_text(int errno_value) {
    return std::strerror(errno_value);
}

// userfaultfd(2) with UFFD_USER_MODE_ONLY first: we never handle faults, and
// that flag is allowed without privilege even when vm.unprivileged_userfaultfd
// is 0. Then without it, then /dev/userfaultfd (Linux 6.1+, file permissions
// instead of the sysctl).
UniqueFd open_userfaultfd(std::string& how) {
    const int flags = O_CLOEXEC | O_NONBLOCK;
    int fd = static_cast<int>(::syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY));
    if (fd >= 0) {
        how = "userfaultfd(UFFD_USER_MODE_ONLY)";
        return UniqueFd(fd);
    }
    const int user_mode_errno = errno;
    fd = static_cast<int>(::syscall(SYS_userfaultfd, flags));
    if (fd >= 0) {
        how = "userfaultfd()";
        return UniqueFd(fd);
    }
    const int syscall_errno = errno;
    int device_errno = 0;
    const UniqueFd device(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
    if (device.get() >= 0) {
        fd = ::ioctl(device.get(), USERFAULTFD_IOC_NEW, flags);
        if (fd >= 0) {
            how = "/dev/userfaultfd";
            return UniqueFd(fd);
        }
    }
    device_errno = errno;
    throw Error(
        syscall_errno,
        "cannot create a userfaultfd: userfaultfd(UFFD_USER_MODE_ONLY): " +
            errno_text(user_mode_errno) + "; userfaultfd(): " + errno_text(syscall_errno) +
            "; /dev/userfaultfd: " + errno_text(device_errno) + " (" +
            explain_userfaultfd_refusal(user_mode_errno, syscall_errno, device_errno,
                                        read_unprivileged_sysctl(), has_ptrace_capability()) +
            ")");
}

// The same, once the kernel has been found not to copy pinned pages behind
// userfaultfd's back (page_copy_probe.cpp).
UniqueFd open_coherent_userfaultfd(std::string& how) {
    if (const std::string problem = userfaultfd_coherence_problem(); !problem.empty()) {
        throw Error(ENOTSUP, problem);
    }
    return open_userfaultfd(how);
}

// The reader's thread, on a stack of its own: a mapping between two PROT_NONE
// guard pages, so a VMA of its own that never merges with the application's
// memory, and that register_range() never registers. A glibc thread stack is
// plain anonymous memory: before Linux 6.7 (MAP_STACK did not yet mark it) a
// buffer mapped right above one merges with it into one VMA, registered whole
// when the buffer is watched, and still registered once the buffer is
// munmap()ped. At exit glibc madvise(DONTNEED)s a thread's stack; on a
// registered stack the exiting reader would sleep until that event was read,
// that is forever (the guide example hung so on Linux 6.1). For the same
// reason the thread is a pthread, not a std::thread (whose state the new
// thread frees at exit, which can trim the heap): nothing the reader does
// after its loop can wait for a reader.
class ReaderThread {
  public:
    ReaderThread() {
        const std::size_t guard = page_size();
        void* const mapping = ::mmap(nullptr, stack_bytes + 2 * guard, PROT_NONE,
                                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mapping == MAP_FAILED) {
            const int error = errno;
            throw Error(error, "mmap of the userfaultfd reader thread's stack: " +
                                   std::string(std::strerror(error)));
        }
        mapping_ = Range{reinterpret_cast<std::uintptr_t>(mapping),
                         reinterpret_cast<std::uintptr_t>(mapping) + stack_bytes + 2 * guard};
        if (::mprotect(stack(), stack_bytes, PROT_READ | PROT_WRITE) != 0) {
            const int error = errno;
            ::munmap(mapping, mapping_.length());
            throw Error(error, "mprotect of the userfaultfd reader thread's stack: " +
                                   std::string(std::strerror(error)));
        }
    }
    ~ReaderThread() {
        join();
        if (!abandoned_) {
            ::munmap(reinterpret_cast<void*>(mapping_.begin), mapping_.length());
        }
    }
    ReaderThread(const ReaderThread&) = delete;
    ReaderThread& operator=(const ReaderThread&) = delete;

    // Starts body(argument) with every signal blocked. Throws odp::Error.
    void start(void* (*body)(void*), void* argument) {
        pthread_attr_t attributes;
        ::pthread_attr_init(&attributes);
        int error = ::pthread_attr_setstack(&attributes, stack(), stack_bytes);
        if (error == 0) {
            const AllSignalsBlocked blocked;
            error = ::pthread_create(&thread_, &attributes, body, argument);
        }
        ::pthread_attr_destroy(&attributes);
        if (error != 0) {
            throw Error(error, "cannot start the userfaultfd reader thread: " +
                                   std::string(std::strerror(error)));
        }
        running_ = true;
        ::pthread_setname_np(thread_, "odp-uffd-reader");  // for ps and debuggers
    }

    // Waits for the body, which the caller has made return.
    void join() noexcept {
        if (running_) {
            ::pthread_join(thread_, nullptr);
            running_ = false;
        }
    }

    // In a forked child: the thread is the parent's and does not exist here.
    void abandon() noexcept {
        running_ = false;
        abandoned_ = true;
    }

    // The stack, guard pages excluded (a guard may merge with a neighbouring
    // PROT_NONE mapping, which may then be registered: harmless).
    [[nodiscard]] Range stack_range() const noexcept {
        return Range{mapping_.begin + page_size(), mapping_.end - page_size()};
    }

  private:
    // Ample for read_loop() (a few KiB), glibc's thread control block and static
    // TLS, and a sanitizer's runtime; pages never touched cost nothing.
    static constexpr std::size_t stack_bytes = std::size_t{1} << 20;

    [[nodiscard]] void* stack() const noexcept {
        return reinterpret_cast<void*>(mapping_.begin + page_size());
    }

    Range mapping_;
    pthread_t thread_{};
    bool running_ = false;
    bool abandoned_ = false;
};

// What /proc/self/task/<tid>/syscall (proc(5)) says of one thread: the system
// call it is blocked in, "-1" outside any, "running" while it is runnable
// (nothing can be read then).
enum class ThreadCall { Gone, Outside, Zapping, Unknown };

ThreadCall thread_call(const char* tid) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/syscall", tid);
    const UniqueFd file(::open(path, O_RDONLY | O_CLOEXEC));
    if (file.get() < 0) {
        return errno == ENOENT ? ThreadCall::Gone : ThreadCall::Unknown;
    }
    char text[32] = {};
    if (::read(file.get(), text, sizeof text - 1) <= 0) {
        return ThreadCall::Unknown;  // exited meanwhile reads as empty: decided next round
    }
    if (text[0] != '-' && (text[0] < '0' || text[0] > '9')) {
        return ThreadCall::Unknown;  // "running"
    }
    const long number = std::strtol(text, nullptr, 10);
    // madvise(DONTNEED/FREE/REMOVE) zaps after its REMOVE was read; io_uring
    // can run an madvise inside io_uring_enter.
    return number == SYS_madvise || number == SYS_io_uring_enter ? ThreadCall::Zapping
                                                                 : ThreadCall::Outside;
}

// The mappings overlapping `within` that are registered with a userfaultfd
// in write-protect mode now ("uw" in /proc/self/smaps VmFlags), whole, in
// address order. The only way to see a registration: UFFDIO_REGISTER says
// nothing of the holes it skipped. Throws odp::Error.
std::vector<Range> registered_mappings(Range within) {
    std::ifstream smaps("/proc/self/smaps");
    if (!smaps) {
        throw Error(errno, "cannot read /proc/self/smaps: " + errno_text(errno));
    }
    std::vector<Range> registered;
    Range current{};
    for (std::string line; std::getline(smaps, line);) {
        if (line.starts_with("VmFlags:")) {
            if (current.overlaps(within) && (line + " ").find(" uw ") != std::string::npos) {
                registered.push_back(current);
            }
            continue;
        }
        // A mapping's first line: "begin-end perms offset dev inode [path]".
        char* end_of_begin = nullptr;
        const std::uintptr_t begin = std::strtoull(line.c_str(), &end_of_begin, 16);
        if (end_of_begin != nullptr && *end_of_begin == '-') {
            char* end_of_end = nullptr;
            const std::uintptr_t end = std::strtoull(end_of_begin + 1, &end_of_end, 16);
            if (end_of_end != nullptr && *end_of_end == ' ') {
                current = Range{begin, end};
            }
        }
    }
    return registered;
}

// How long a fault waits for madvise calls that sent a REMOVE to return.
constexpr std::chrono::seconds removal_wait_limit{1};

class UserfaultfdSource final : public Source {
  public:
    explicit UserfaultfdSource(const MirrorOptions& options)
        : uffd_(open_coherent_userfaultfd(how_)), ring_(options.event_capacity) {
        uffdio_api api{};
        api.api = UFFD_API;
        api.features = required_features;
        if (::ioctl(uffd_.get(), UFFDIO_API, &api) != 0) {
            throw Error(errno, "UFFDIO_API(EVENT_UNMAP|EVENT_REMOVE|EVENT_REMAP) on " + how_ +
                                   ": " + errno_text(errno) +
                                   " (the kernel lacks non-cooperative userfaultfd events; "
                                   "load odp_mirror.ko instead)");
        }
        if (const std::string lacks = userfaultfd_api_shortcoming(api.features, api.ioctls);
            !lacks.empty()) {
            throw Error(ENOTSUP,
                        "userfaultfd on this kernel " + lacks + "; load odp_mirror.ko instead");
        }
        features_ = api.features;
        reader_.start(
            [](void* self) -> void* {
                static_cast<UserfaultfdSource*>(self)->read_loop();
                return nullptr;
            },
            this);
    }

    ~UserfaultfdSource() override {
        if (!creator_.is_current()) {
            // A forked child: the reader is the parent's thread (stop_ would
            // stop it there) and the registrations are the parent's. Closing
            // the child's copies of the descriptors touches neither.
            reader_.abandon();
            return;
        }
        stop_.signal();
        reader_.join();
        // Close the descriptor before anything else is freed: that drops every
        // registration and releases any thread waiting for an event to be
        // read. A registration can outlive every watch (a buffer merged with a
        // neighbouring mapping is registered whole, and only the buffer is
        // unmapped), so the mapping that holds the event ring, or a heap that
        // freeing the members trims, may be registered; unmapping it with no
        // reader left would wait forever.
        uffd_ = UniqueFd();
    }

    UserfaultfdSource(const UserfaultfdSource&) = delete;
    UserfaultfdSource& operator=(const UserfaultfdSource&) = delete;

    [[nodiscard]] MonitorKind kind() const noexcept override { return MonitorKind::Userfaultfd; }

    [[nodiscard]] std::string_view description() const noexcept override {
        return "userfaultfd: sees munmap, mremap (move, shrink), mmap(MAP_FIXED) over, brk "
               "shrink and madvise(DONTNEED/FREE/REMOVE) of anonymous and shmem memory that was "
               "watched or armed. Cannot see: System V shared memory (shmdt sends no event; "
               "refused), file-backed mappings (refused), mprotect, fork and copy-on-write, page "
               "migration, truncation or hole punching of a shmem file, and mappings created in a "
               "watched range after it was armed (armed again before pinning). Unmapping threads "
               "wait until the reader thread has read their event.";
    }

    [[nodiscard]] int ready_fd() const noexcept override { return ready_.get(); }

    [[nodiscard]] std::uint64_t recorded() const noexcept override {
        return begun_.load(std::memory_order_acquire);
    }

    std::uint64_t drain(EventSink& sink) override {
        ready_.clear();
        // Everything of batches up to `through` is in the ring before this load.
        const std::uint64_t through = read_through_.load(std::memory_order_acquire);
        deliver_queued(ring_, overflow_, sink);
        return through;
    }

    std::vector<Unwatched> add(std::uint64_t id, Range range) override {
        refuse_in_a_child();
        const Range aligned = page_align(range);
        const std::lock_guard lock(mutex_);
        forget_armed_if_unmapped();
        Registration registration = register_range(aligned);
        watches_.emplace(id, aligned);
        std::vector<Unwatched> unwatched;
        unwatched.reserve(registration.refusals.size());
        for (Refusal& refusal : registration.refusals) {
            unwatched.push_back(Unwatched{refusal.range, std::move(refusal.why),
                                          refusal.errno_value, std::move(refusal.mapping)});
        }
        return unwatched;
    }

    void remove(std::uint64_t id) noexcept override {
        if (!creator_.is_current()) {
            return;  // a forked child: the registrations are the parent's
        }
        try {
            const std::lock_guard lock(mutex_);
            const auto found = watches_.find(id);
            if (found == watches_.end()) {
                return;
            }
            const Range removed = found->second;
            watches_.erase(found);
            armed_.clear();  // what stays registered is re-learnt at the next arm
            unregister_unwatched_mappings(removed);
        } catch (const std::exception& error) {
            log_error(std::string("userfaultfd: unregistering a watch: ") + error.what());
        }
    }

    std::vector<Range> arm(std::uint64_t /*id*/, Range sub) override {
        refuse_in_a_child();
        wait_for_removals();
        const Range aligned = page_align(sub);
        const std::lock_guard lock(mutex_);
        // A range registered since the last unmap anywhere is still
        // registered: only munmap, mremap and mmap over it (all sending an
        // event) drop a registration; a mapping made in a hole was never in
        // armed_. This skips a mappings query and an ioctl per chunk fault.
        forget_armed_if_unmapped();
        if (armed_covers(aligned)) {
            return {aligned};
        }
        Registration registration = register_range(aligned);
        if (!registration.refusals.empty()) {
            const Refusal& first = registration.refusals.front();
            throw Error(first.errno_value,
                        "cannot watch " + describe(first.range) +
                            " with userfaultfd: " + first.why +
                            ". Load odp_mirror.ko (it watches any mapping), or register this "
                            "memory in Pinned mode");
        }
        return std::move(registration.watched);
    }

  private:
    // madvise(DONTNEED/FREE/REMOVE) sends REMOVE *before* it zaps, and no
    // event follows the zap: a chunk pinned after the REMOVE was delivered but
    // before the zap is over holds pages that then leave the mapping, and
    // nothing reports it. userfaultfd offers no way to wait for the zap, so
    // this waits for the madvise calls themselves: the thread that sent a
    // REMOVE is inside madvise(2) when we read the event, and once it is seen
    // outside (or gone), its zap is over. Until every other thread of the
    // process has been seen so, nothing is pinned: a runnable thread cannot be
    // looked at, and a thread that stays inside madvise may be the sender.
    // A REMOVE read later was delivered after the fault noted its chunk's
    // sequence, which then fails its re-check. Throws EAGAIN after
    // removal_wait_limit.
    void wait_for_removals() {
        const std::uint64_t target = removes_read_.load(std::memory_order_acquire);
        if (target <= removes_settled_.load(std::memory_order_acquire)) {
            return;  // no REMOVE since the last wait: one load
        }
        const auto self = std::to_string(::gettid());
        const auto deadline = std::chrono::steady_clock::now() + removal_wait_limit;
        std::set<std::string> seen_outside;
        for (std::string waiting_for;; waiting_for.clear()) {
            const std::unique_ptr<DIR, int (*)(DIR*)> tasks(::opendir("/proc/self/task"),
                                                            ::closedir);
            if (!tasks) {
                waiting_for = "/proc/self/task: " + errno_text(errno);
            }
            while (const dirent* entry = tasks ? ::readdir(tasks.get()) : nullptr) {
                const std::string tid = entry->d_name;
                if (tid.front() == '.' || tid == self || seen_outside.contains(tid)) {
                    continue;
                }
                const ThreadCall call = thread_call(entry->d_name);
                if (call == ThreadCall::Gone || call == ThreadCall::Outside) {
                    seen_outside.insert(tid);
                } else if (waiting_for.empty()) {
                    waiting_for =
                        "thread " + tid +
                        (call == ThreadCall::Zapping ? " is inside madvise or io_uring_enter"
                                                     : " is running or cannot be observed");
                }
            }
            if (waiting_for.empty()) {
                break;
            }
            if (std::chrono::steady_clock::now() >= deadline) {
                throw Error(EAGAIN,
                            "userfaultfd: a madvise(MADV_DONTNEED) of watched memory "
                            "may still be discarding pages after " +
                                std::to_string(removal_wait_limit.count()) + " s (" + waiting_for +
                                "); nothing was pinned: retry later, or load "
                                "odp_mirror.ko, which can wait for it exactly");
            }
            const timespec pause{0, 200'000};
            ::nanosleep(&pause, nullptr);
        }
        std::uint64_t settled = removes_settled_.load(std::memory_order_relaxed);
        while (settled < target &&
               !removes_settled_.compare_exchange_weak(settled, target, std::memory_order_release,
                                                       std::memory_order_relaxed)) {
        }
    }

    void refuse_in_a_child() const {
        if (!creator_.is_current()) {
            throw Error(EPERM, "this userfaultfd belongs to process " +
                                   std::to_string(creator_.pid()) +
                                   ", of which this process is a fork: the Mirror, Devices and "
                                   "Regions of the parent cannot be used in a child; create new "
                                   "ones here");
        }
    }

    // Registers every mapping that overlaps `range`, whole (see the top of
    // the file); holes are skipped (nothing to pin there), and what cannot be
    // registered is returned, clipped to `range`. What was registered is
    // remembered in armed_. Caller holds mutex_.
    Registration register_range(Range range) {
        Registration registration;
        std::vector<Range> accepted;  // whole mappings UFFDIO_REGISTER accepted
        const std::vector<Mapping> mappings = read_mappings(range);
        run_test_hook(HookPoint::UserfaultfdMappingsRead);
        const std::vector<Range> sanitizer = sanitizer_runtime_memory();
        for (const Mapping& mapping : mappings) {
            const Range piece = mapping.range.intersect(range);
            const std::string name =
                (mapping.path.empty() ? std::string("anonymous") : mapping.path) + " " +
                mapping.permissions;
            if (mapping.range.overlaps(reader_.stack_range())) {
                registration.refusals.push_back(Refusal{
                    piece, EDEADLK,
                    name + ": the stack of libodp's own userfaultfd reader thread, which must "
                           "never wait for an event it would have to read itself",
                    name});
                continue;
            }
            if (std::any_of(sanitizer.begin(), sanitizer.end(),
                            [&](Range used) { return mapping.range.overlaps(used); })) {
                registration.refusals.push_back(Refusal{
                    piece, EDEADLK,
                    name + ": AddressSanitizer's own memory (shadow or heap), which its runtime "
                           "remaps from any thread, libodp's userfaultfd reader included",
                    name});
                continue;
            }
            if (mapping.path.starts_with("/SYSV")) {
                registration.refusals.push_back(Refusal{
                    piece, ENOTSUP,
                    name + ": System V shared memory: shmdt() sends no userfaultfd event", name});
                continue;
            }
            uffdio_register request{};
            request.range.start = mapping.range.begin;
            request.range.len = mapping.range.length();
            request.mode = UFFDIO_REGISTER_MODE_WP;
            if (::ioctl(uffd_.get(), UFFDIO_REGISTER, &request) == 0) {
                accepted.push_back(mapping.range);
                continue;
            }
            const int error = errno;
            registration.refusals.push_back(
                Refusal{piece, error, name + ": " + why_refused(error, mapping), name});
        }
        if (accepted.empty()) {
            return registration;
        }
        // UFFDIO_REGISTER registers what is mapped in its range when it runs
        // and skips holes without an error. A part of a mapping that the
        // application unmapped after the mappings were read (no event: it was
        // not registered yet) and maps again later is not registered, yet it
        // lies in a range the call accepted. Such a part shows in the
        // mappings read now: as a hole, or as a mapping of its own (an
        // unregistered mapping never merges with a registered one). Each
        // accepted mapping still within one mapping cannot have had one. If
        // not, only what smaps says is registered now is watched (and
        // remembered); pages pinned outside it make the fault arm again.
        const std::vector<Mapping> now = read_mappings(range);
        const bool intact = std::all_of(accepted.begin(), accepted.end(), [&](Range mapping) {
            return std::any_of(now.begin(), now.end(), [&](const Mapping& current) {
                return current.range.begin <= mapping.begin && mapping.end <= current.range.end;
            });
        });
        for (const Range registered : intact ? accepted : registered_mappings(range)) {
            for (const Range& mapping : accepted) {
                const Range both = registered.intersect(mapping);
                if (!both.empty()) {
                    remember_armed(both);
                    const Range piece = both.intersect(range);
                    if (!piece.empty()) {
                        append_merged(registration.watched, piece);
                    }
                }
            }
        }
        return registration;
    }

    [[nodiscard]] std::string why_refused(int error, const Mapping& mapping) const {
        const bool shared = mapping.permissions.size() > 3 && mapping.permissions[3] == 's';
        const bool anonymous = mapping.path.empty() || mapping.path.starts_with("[heap]") ||
                               mapping.path.starts_with("[stack");
        switch (error) {
            case EINVAL:
                if (shared && (features_ & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) == 0) {
                    return "shared memory, which this kernel's userfaultfd cannot register in "
                           "write-protect mode (that needs Linux 5.19+), or a file mapping it "
                           "cannot watch at all";
                }
                if (anonymous) {
                    return "anonymous memory the kernel refused to register (UFFDIO_REGISTER "
                           "in write-protect mode: EINVAL)";
                }
                return "not anonymous, shmem or hugetlbfs memory (file-backed or special "
                       "mapping), which userfaultfd cannot watch";
            case EPERM:
                return "a mapping that can never become writable (read-only file), which "
                       "userfaultfd refuses";
            case EBUSY:
                return "already registered with another userfaultfd (another memory monitor "
                       "in this process, such as a libfabric provider's)";
            case ENOMEM:
                return "out of memory, or vm.max_map_count reached";
            default:
                return "UFFDIO_REGISTER failed: " + errno_text(error);
        }
    }

    // Unregisters each whole mapping overlapping `removed` that no remaining
    // watch overlaps (a part would split the mapping) and that is this
    // source's. UFFDIO_UNREGISTER does not ask who registered a mapping: on a
    // mapping of another userfaultfd of the process (the application's own, a
    // libfabric provider's) it would end that one's registration, and its
    // owner would never hear of that memory again. UFFDIO_REGISTER does ask:
    // it succeeds only on a mapping registered with this descriptor (a no-op)
    // or with none, and answers EBUSY on another's, so only what it accepts is
    // unregistered. Caller holds mutex_.
    void unregister_unwatched_mappings(Range removed) const {
        for (const Mapping& mapping : read_mappings(removed)) {
            const bool still_watched = std::any_of(
                watches_.begin(), watches_.end(),
                [&](const auto& watch) { return watch.second.overlaps(mapping.range); });
            if (still_watched || mapping.range.overlaps(reader_.stack_range())) {
                continue;  // the reader's stack is never registered
            }
            uffdio_register claim{};
            claim.range = uffdio_range{mapping.range.begin, mapping.range.length()};
            claim.mode = UFFDIO_REGISTER_MODE_WP;
            if (::ioctl(uffd_.get(), UFFDIO_REGISTER, &claim) != 0) {
                continue;  // another userfaultfd's, or memory userfaultfd cannot watch
            }
            uffdio_range request{mapping.range.begin, mapping.range.length()};
            ::ioctl(uffd_.get(), UFFDIO_UNREGISTER, &request);
        }
    }

    // armed_ holds page ranges registered since the reader last saw an event
    // that can drop a registration (unmaps_seen_ then moves on and armed_ is
    // emptied). Caller holds mutex_.
    void forget_armed_if_unmapped() {
        const std::uint64_t seen = unmaps_seen_.load(std::memory_order_acquire);
        if (seen != armed_as_of_) {
            armed_.clear();
            armed_as_of_ = seen;
        }
    }
    void remember_armed(Range piece) {
        // Merge with neighbours so that a chunk over adjacent pieces is found.
        auto next = armed_.lower_bound(piece.begin);
        if (next != armed_.begin()) {
            auto previous = std::prev(next);
            if (previous->second >= piece.begin) {
                piece = Range{previous->first, std::max(previous->second, piece.end)};
                next = armed_.erase(previous);
            }
        }
        while (next != armed_.end() && next->first <= piece.end) {
            piece.end = std::max(piece.end, next->second);
            next = armed_.erase(next);
        }
        armed_.emplace(piece.begin, piece.end);
    }
    [[nodiscard]] bool armed_covers(Range range) const {
        auto found = armed_.upper_bound(range.begin);
        if (found == armed_.begin()) {
            return false;
        }
        --found;
        return found->first <= range.begin && range.end <= found->second;
    }

    // The reader thread. No lock, no allocation, no call into user code.
    void read_loop() noexcept {
        pollfd fds[2] = {{uffd_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
        uffd_msg messages[64];
        for (;;) {
            if (::poll(fds, 2, -1) < 0) {
                if (errno != EINTR) {
                    report_loss_and_pause();
                }
                continue;
            }
            if ((fds[1].revents & POLLIN) != 0) {
                return;
            }
            if ((fds[0].revents & POLLIN) == 0) {
                report_loss_and_pause();  // POLLERR: should not happen once the API is set
                continue;
            }
            // Announce the batch before reading: a thread released by the read
            // returns from munmap only after this, so up_to_date() is false
            // until the batch has been delivered.
            const std::uint64_t batch = begun_.fetch_add(1, std::memory_order_acq_rel) + 1;
            for (;;) {
                const ssize_t got = ::read(uffd_.get(), messages, sizeof messages);
                if (got < 0) {
                    if (errno == EINTR) {
                        continue;
                    }
                    if (errno != EAGAIN) {
                        unmaps_seen_.fetch_add(1, std::memory_order_release);
                        removes_read_.fetch_add(1, std::memory_order_release);  // maybe one
                        overflow_.store(true, std::memory_order_release);
                    }
                    break;
                }
                run_test_hook(HookPoint::UserfaultfdEventsRead);
                const auto count = static_cast<std::size_t>(got) / sizeof(uffd_msg);
                for (std::size_t i = 0; i < count; ++i) {
                    handle(messages[i]);
                }
            }
            read_through_.store(batch, std::memory_order_release);
            ready_.signal();
        }
    }

    void handle(const uffd_msg& message) noexcept {
        switch (message.event) {
            case UFFD_EVENT_UNMAP:
                unmaps_seen_.fetch_add(1, std::memory_order_release);
                push(Range{message.arg.remove.start, message.arg.remove.end},
                     InvalidationReason::Unmap);
                break;
            case UFFD_EVENT_REMOVE:
                removes_read_.fetch_add(1, std::memory_order_release);  // before it is delivered
                push(Range{message.arg.remove.start, message.arg.remove.end},
                     InvalidationReason::Clear);
                break;
            case UFFD_EVENT_REMAP: {
                unmaps_seen_.fetch_add(1, std::memory_order_release);
                const auto& remap = message.arg.remap;
                // The pages left `from`; whatever `to` held was replaced.
                push(Range{remap.from, remap.from + remap.len}, InvalidationReason::Unmap);
                push(Range{remap.to, remap.to + remap.len}, InvalidationReason::Unmap);
                break;
            }
            case UFFD_EVENT_PAGEFAULT:
                // Never expected (nothing is write-protected). Never leave the
                // faulting thread asleep: unprotect and wake it.
                release_fault(message.arg.pagefault.address, message.arg.pagefault.flags);
                break;
            default:
                // Not asked for; treat as unknown change of everything.
                unmaps_seen_.fetch_add(1, std::memory_order_release);
                removes_read_.fetch_add(1, std::memory_order_release);
                overflow_.store(true, std::memory_order_release);
                break;
        }
    }

    void push(Range range, InvalidationReason reason) noexcept {
        if (range.empty()) {
            return;
        }
        if (!ring_.try_push(Event{range, reason, 0})) {
            overflow_.store(true, std::memory_order_release);
        }
    }

    void release_fault(std::uint64_t address, std::uint64_t flags) const noexcept {
        const std::uint64_t page = address & ~static_cast<std::uint64_t>(page_size() - 1);
        if ((flags & UFFD_PAGEFAULT_FLAG_WP) != 0) {
            uffdio_writeprotect unprotect{};
            unprotect.range = uffdio_range{page, page_size()};
            unprotect.mode = 0;  // clear write protection and wake
            if (::ioctl(uffd_.get(), UFFDIO_WRITEPROTECT, &unprotect) == 0) {
                return;
            }
        }
        uffdio_range wake{page, page_size()};
        ::ioctl(uffd_.get(), UFFDIO_WAKE, &wake);
    }

    void report_loss_and_pause() noexcept {
        unmaps_seen_.fetch_add(1, std::memory_order_release);  // events of any kind lost
        removes_read_.fetch_add(1, std::memory_order_release);
        overflow_.store(true, std::memory_order_release);
        begun_.fetch_add(1, std::memory_order_acq_rel);
        read_through_.store(begun_.load(std::memory_order_acquire), std::memory_order_release);
        ready_.signal();
        const timespec pause{0, 1'000'000};
        ::nanosleep(&pause, nullptr);
    }

    const CreatorProcess creator_;
    std::string how_;
    UniqueFd uffd_;
    std::uint64_t features_ = 0;  // UFFDIO_API's answer
    WakeFd ready_;                // reader -> dispatcher
    WakeFd stop_;                 // destructor -> reader
    EventRing ring_;
    std::atomic<std::uint64_t> begun_{0};         // read batches started
    std::atomic<std::uint64_t> read_through_{0};  // last batch fully in the ring
    std::atomic<bool> overflow_{false};
    // Events that can drop a registration (unmap, remap, loss), as read.
    std::atomic<std::uint64_t> unmaps_seen_{0};
    std::atomic<std::uint64_t> removes_read_{0};     // REMOVE events read
    std::atomic<std::uint64_t> removes_settled_{0};  // ... whose madvise has returned
    ReaderThread reader_;

    std::mutex mutex_;                        // watches_ and registration (application threads)
    std::map<std::uint64_t, Range> watches_;  // page-aligned watched ranges
    std::map<std::uintptr_t, std::uintptr_t> armed_;  // registered [begin, end), merged
    std::uint64_t armed_as_of_ = 0;                   // unmaps_seen_ when armed_ was valid
};

}  // namespace

std::string explain_userfaultfd_refusal(int user_mode_errno, int syscall_errno, int device_errno,
                                        int unprivileged_sysctl, bool has_ptrace_capability) {
    if (syscall_errno == ENOSYS) {
        return "the kernel has no CONFIG_USERFAULTFD, or a seccomp filter (e.g. a container "
               "runtime's default profile) answers ENOSYS for the system call";
    }
    if (syscall_errno != EPERM) {
        return "unexpected error";
    }
    // UFFD_USER_MODE_ONLY is allowed to everyone whatever the sysctl says
    // (where the kernel knows the flag, 5.11+: EINVAL otherwise), and
    // CAP_SYS_PTRACE or the sysctl allow the plain call: EPERM despite them
    // comes from a seccomp filter or a security module.
    const bool sysctl_allows = unprivileged_sysctl == 1 || has_ptrace_capability;
    if (user_mode_errno == EPERM || sysctl_allows) {
        std::string why =
            "a seccomp filter (e.g. a container runtime's default profile) or a security "
            "module (SELinux, AppArmor) denies the userfaultfd system call";
        if (user_mode_errno != EPERM) {
            why += std::string(", although ") + (has_ptrace_capability
                                                     ? "the process has CAP_SYS_PTRACE"
                                                     : "vm.unprivileged_userfaultfd is 1");
        }
        why +=
            ": allow it there (e.g. docker --security-opt seccomp=<profile allowing "
            "userfaultfd>)";
        if (device_errno == ENOENT) {
            why += " or expose /dev/userfaultfd to the container";
        }
        return why;
    }
    return std::string("vm.unprivileged_userfaultfd is ") +
           (unprivileged_sysctl == 0 ? "0" : "unreadable") +
           " and the process lacks CAP_SYS_PTRACE: set the sysctl to 1, or give the user "
           "read-write access to /dev/userfaultfd (Linux 6.1+)";
}

std::string userfaultfd_api_shortcoming(std::uint64_t features, std::uint64_t ioctls) {
    if ((features & required_features) != required_features) {
        return "lacks the EVENT_UNMAP, EVENT_REMOVE or EVENT_REMAP events (Linux 4.11+)";
    }
    if ((features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) == 0) {
        return "has no write-protect mode (UFFDIO_REGISTER_MODE_WP: Linux 5.7+, on an "
               "architecture that supports it), which the source registers memory with so "
               "that no page fault is ever routed to it";
    }
    if ((ioctls & (std::uint64_t{1} << _UFFDIO_REGISTER)) == 0) {
        return "has no UFFDIO_REGISTER";
    }
    return {};
}

std::unique_ptr<Source> make_userfaultfd_source(const MirrorOptions& options) {
    return std::make_unique<UserfaultfdSource>(options);
}

}  // namespace odp::detail
