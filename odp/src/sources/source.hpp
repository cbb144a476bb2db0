// The interface between odp::Mirror (delivery to listeners, mirror.cpp) and
// the invalidation sources (module, userfaultfd, none, fake). Internal.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <odp/mirror.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace odp::detail {

// One invalidation. watch_id 0 means "route by range to every overlapping
// watch"; a non-zero id (the module's per-region cookie) names the watch.
struct Event {
    Range range{};
    InvalidationReason reason = InvalidationReason::Other;
    std::uint64_t watch_id = 0;
};

// Implemented by the Mirror; called only from Source::drain().
class EventSink {
  public:
    virtual void deliver(const Event& event) noexcept = 0;
    // Events were lost: every listener must treat everything as stale.
    virtual void deliver_overflow() noexcept = 0;

  protected:
    ~EventSink() = default;
};

class Source {
  public:
    virtual ~Source() = default;

    [[nodiscard]] virtual MonitorKind kind() const noexcept = 0;
    [[nodiscard]] virtual std::string_view description() const noexcept = 0;

    // A descriptor that polls readable while drain() has work, or -1 if the
    // source never produces events.
    [[nodiscard]] virtual int ready_fd() const noexcept = 0;

    // A monotonic count of what the kernel side has recorded so far (events,
    // or read batches). drain() returns the count it has delivered through.
    [[nodiscard]] virtual std::uint64_t recorded() const noexcept = 0;

    // Delivers what is available without blocking. Single caller at a time
    // (the Mirror serialises it).
    virtual std::uint64_t drain(EventSink& sink) = 0;

    // Starts watching `range` for watch `id` (non-zero). Returns what it cannot
    // watch in it; throws odp::Error when it refuses the range altogether.
    virtual std::vector<Unwatched> add(std::uint64_t id, Range range) = 0;
    // Stops watching for `id`. Never throws (logs).
    virtual void remove(std::uint64_t id) noexcept = 0;
    // See Mirror::Watch::arm: returns the parts of `sub` watched now, in
    // address order, adjacent parts merged.
    virtual std::vector<Range> arm(std::uint64_t id, Range sub) = 0;

    // Fake only; the others throw odp::Error(EINVAL).
    virtual void inject(Range range, InvalidationReason reason);
    virtual void inject_overflow();
};

// Opening a source throws odp::Error saying what failed and how to get one.
std::unique_ptr<Source> make_fake_source(const MirrorOptions& options);
std::unique_ptr<Source> make_none_source();
std::unique_ptr<Source> make_userfaultfd_source(const MirrorOptions& options);

// Why userfaultfd cannot be created, from the errnos of the three ways tried
// (userfaultfd(UFFD_USER_MODE_ONLY), userfaultfd(), /dev/userfaultfd), the
// value of vm.unprivileged_userfaultfd (-1 if unreadable) and whether the
// process has CAP_SYS_PTRACE. Tells a seccomp filter or LSM from the sysctl.
[[nodiscard]] std::string explain_userfaultfd_refusal(int user_mode_errno, int syscall_errno,
                                                      int device_errno, int unprivileged_sysctl,
                                                      bool has_ptrace_capability);
// What this kernel's userfaultfd lacks for the source (UFFDIO_API's
// `features` and `ioctls` answers), or "" if nothing.
[[nodiscard]] std::string userfaultfd_api_shortcoming(std::uint64_t features, std::uint64_t ioctls);
std::unique_ptr<Source> make_module_source(const MirrorOptions& options);

// What a CPU write after mprotect(PROT_READ) and back does to an anonymous
// page that something else references (page_copy_probe.cpp).
enum class PageWriteOutcome { Reused, Copied, Unknown };
struct PageCopyProbe {
    PageWriteOutcome outcome = PageWriteOutcome::Unknown;
    std::string detail;  // what was seen, or which call failed
};
// Runs the probe (a page, a pipe, vmsplice, mprotect twice, a write).
[[nodiscard]] PageCopyProbe probe_page_copy_on_write();
// The text of userfaultfd_coherence_problem() for this probe result on a
// kernel of this release ("" when the userfaultfd source is coherent). An
// Unknown outcome falls back on the version (< 5.19 copies).
[[nodiscard]] std::string page_copy_problem(const PageCopyProbe& probe, const std::string& release);

// A bounded single-producer single-consumer queue of events; never blocks and
// never allocates after construction, so the userfaultfd reader can use it.
class EventRing {
  public:
    explicit EventRing(std::size_t capacity);
    // False when full (the caller reports an overflow).
    bool try_push(const Event& event) noexcept;
    bool try_pop(Event& event) noexcept;

  private:
    std::vector<Event> slots_;
    std::size_t mask_;
    alignas(64) std::atomic<std::uint64_t> head_{0};  // written by the producer
    alignas(64) std::atomic<std::uint64_t> tail_{0};  // written by the consumer
};

// Hands a queue-based source's pending overflow (clearing it) and then its
// queued events to `sink`, in that order.
void deliver_queued(EventRing& ring, std::atomic<bool>& overflow, EventSink& sink);

// A file descriptor owned by exactly one object.
class UniqueFd {
  public:
    UniqueFd() noexcept = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept;
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd();
    [[nodiscard]] int get() const noexcept { return fd_; }
    int release() noexcept;

  private:
    int fd_ = -1;
};

// An eventfd used as a wake-up flag: signal() from any thread (one write
// system call, no lock), clear() from the waiter.
class WakeFd {
  public:
    WakeFd();  // throws odp::Error
    void signal() const noexcept;
    void clear() const noexcept;
    [[nodiscard]] int get() const noexcept { return fd_.get(); }

  private:
    UniqueFd fd_;
};

// Blocks every signal in the calling thread while it lives. A thread created
// meanwhile inherits the mask, so libodp's own threads (the userfaultfd
// reader, the Mirror's dispatcher) start with every signal blocked from their
// first instruction: the application's signals then always go to its own
// threads, never into a handler running on a thread that must take no lock
// (the reader) or that runs listeners. Faults (SIGSEGV, SIGBUS...) are
// delivered all the same.
class AllSignalsBlocked {
  public:
    AllSignalsBlocked() noexcept {
        sigset_t all;
        ::sigfillset(&all);
        ::pthread_sigmask(SIG_SETMASK, &all, &previous_);
    }
    ~AllSignalsBlocked() { ::pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }
    AllSignalsBlocked(const AllSignalsBlocked&) = delete;
    AllSignalsBlocked& operator=(const AllSignalsBlocked&) = delete;

  private:
    sigset_t previous_{};
};

template <typename Body>
std::thread start_thread_without_signals(Body&& body) {
    const AllSignalsBlocked blocked;
    return std::thread(std::forward<Body>(body));
}

[[nodiscard]] std::uintptr_t page_size() noexcept;
// [begin rounded down, end rounded up] to pages.
[[nodiscard]] Range page_align(Range range) noexcept;
[[nodiscard]] std::string describe(Range range);

}  // namespace odp::detail
