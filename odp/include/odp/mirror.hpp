// odp::Mirror: the one per-process view of "the mapping under this address
// range changed", fed by an invalidation source (the odp_mirror kernel module,
// userfaultfd, nothing, or a fake for tests) and delivered to listeners.
//
//   auto mirror = odp::Mirror::acquire();            // Auto: module, else userfaultfd
//   odp::Mirror::Watch watch = mirror->watch(range, listener);
//   watch.arm(chunk);       // before pinning a chunk: make sure it is watched
//   ...                     // listener.on_invalidate(range, reason) on the dispatch context
//
// Lifetime (DESIGN.md, "The lifetime rules"): acquire() returns the process's
// Mirror if one is alive, creates one otherwise; a Mirror whose last reference
// is being dropped is never handed out (a fresh one is created instead). Every
// Watch holds a reference, so the Mirror lives until the last Watch and the last
// acquire()d pointer are gone.
//
// Threads. Callbacks run on the dispatch context: the Mirror's own thread, or
// the caller's boost::asio::io_context (MirrorOptions::io_context). They never
// run on the thread that unmapped the memory. The userfaultfd source always
// reads the kernel on a thread of its own that takes no lock and allocates
// nothing, because the kernel makes the unmapping thread wait until its event
// is read (see docs/sources.md).
#pragma once

#include <odp/export.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <odp/listener.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace odp {

// Where invalidation events come from.
enum class MonitorKind {
    Auto,         // Module if /dev/odp_mirror opens, else Userfaultfd, else an error
    Module,       // odp_mirror.ko: every change to the address range, no syscall to check
    Userfaultfd,  // UNMAP / REMOVE / REMAP events of registered anonymous/shmem memory
    None,         // no monitor: the application promises never to change watched mappings
    Fake,         // tests inject events with Mirror::inject()
};

[[nodiscard]] ODP_API std::string_view to_string(MonitorKind kind) noexcept;

// Why the userfaultfd source cannot keep emulated regions coherent on this
// kernel, and what to do instead, or "" when it can. Before Linux 5.19 a CPU
// write can give the process a copy of a pinned anonymous page (after
// mprotect() to read-only and back, or a swap-in) with no userfaultfd event;
// MonitorKind::Userfaultfd then throws odp::Error(ENOTSUP) with this text.
// Probed once per process (docs/sources.md).
[[nodiscard]] ODP_API std::string userfaultfd_coherence_problem();

// A part of a watched range that the source cannot watch, and why.
struct Unwatched {
    Unwatched() = default;
    Unwatched(Range range_in, std::string why_in, int error_in = 0, std::string mapping_in = {})
        : range(range_in),
          why(std::move(why_in)),
          error(error_in),
          mapping(std::move(mapping_in)) {}

    Range range;
    std::string why;      // the mapping and the reason, in a sentence
    int error = 0;        // the errno it was refused with: EINVAL, EPERM, EBUSY, ENOTSUP, ...
    std::string mapping;  // "/usr/lib/.../libc.so.6 r--p" as /proc/self/maps names it, if known
};

// One line for logs and tools: how many parts, counted by kind, and the first
// `listed` of them ("12 parts (11 file-backed or special mappings, 1 read-only
// file mapping): [0x.., 0x..) /usr/lib/..., ...; 9 more"); "" when empty.
[[nodiscard]] std::string summarize(const std::vector<Unwatched>& parts, std::size_t listed = 3);

struct MirrorOptions {
    MonitorKind kind = MonitorKind::Auto;
    // Run callbacks on this io_context instead of a thread of the Mirror's own.
    // It must outlive the Mirror, and some thread must run it while events are
    // expected (Mirror::synchronize() waits for it).
    boost::asio::io_context* io_context = nullptr;
    // Events buffered between the kernel reader and the dispatcher (userfaultfd
    // and fake sources; rounded up to a power of two). A full buffer never
    // blocks the reader: it reports an overflow, and every listener gets
    // on_invalidate_all(Overflow).
    std::size_t event_capacity = 4096;
    // The module's character device (Module and Auto).
    std::string module_path = "/dev/odp_mirror";
    // Fake only: parts of the address space that Watch::arm() reports as not
    // watchable, to test how callers handle it.
    std::vector<Unwatched> fake_unwatchable;
};

// Counters since the Mirror was created.
struct MirrorStats {
    std::uint64_t events = 0;         // events received from the source
    std::uint64_t deliveries = 0;     // on_invalidate calls made
    std::uint64_t overflows = 0;      // times the source lost events (all invalidated)
    std::uint64_t watches = 0;        // live watches
    std::uint64_t watches_total = 0;  // watches ever created
    std::uint64_t armed_ranges = 0;   // successful Watch::arm() calls
};

class ODP_API Mirror : public std::enable_shared_from_this<Mirror> {
  public:
    class Watch;
    class Core;  // internal

    // The process's Mirror, created on first use. If one is alive and
    // `options` asks for a different kind (other than Auto) or another
    // io_context, throws odp::Error(EBUSY). Throws odp::Error when the source
    // cannot be opened, saying how to get one.
    static std::shared_ptr<Mirror> acquire(const MirrorOptions& options = {});

    // The live Mirror, or nullptr; never creates one.
    static std::shared_ptr<Mirror> current() noexcept;

    // Starts delivering invalidations of `range` (byte range, end exclusive,
    // begin < end; holes allowed) to `listener`, which must outlive the Watch.
    // Events are clipped to `range`. Throws odp::Error (EINVAL for an empty or
    // wrapping range, the source's errno when it refuses the range).
    [[nodiscard]] Watch watch(Range range, InvalidationListener& listener);

    [[nodiscard]] MonitorKind kind() const noexcept;
    // What this source can and cannot see, one paragraph, for tools and logs.
    [[nodiscard]] std::string_view description() const noexcept;

    // True when every event the source has recorded so far has been
    // delivered. A few atomic loads, no system call: the hit path checks this.
    [[nodiscard]] bool up_to_date() const noexcept;

    // Waits until every event recorded before the call has been delivered to
    // the listeners. A munmap/madvise/mremap that returned before this call
    // is then reflected. Returns at once on the dispatch context itself (from
    // a callback, or on a thread running the Mirror's io_context it delivers
    // the pending events inline). Do not call it while holding a lock that a
    // listener's callback takes.
    void synchronize();

    // Fake only (odp::Error(EINVAL) otherwise): record an event as the kernel
    // would; it is delivered on the dispatch context like a real one.
    void inject(Range range, InvalidationReason reason);
    // Fake only: report lost events (every listener gets on_invalidate_all(Overflow)).
    void inject_overflow();

    [[nodiscard]] MirrorStats stats() const noexcept;

    ~Mirror();
    Mirror(const Mirror&) = delete;
    Mirror& operator=(const Mirror&) = delete;

  private:
    struct Private {
        explicit Private() = default;
    };

  public:
    // Use acquire(); public only for std::make_shared.
    Mirror(const MirrorOptions& options, Private);

  private:
    friend class Watch;
    std::shared_ptr<Core> core_;
};

// Move-only registration of one listener on one range.
//
// Destruction rule: when ~Watch (or reset()) returns, no callback for this
// watch is running or will run. If a callback of this watch is running on
// another thread, the destructor waits for it; destroying a Watch from inside
// any callback (its own or another watch's) does not wait and is safe. So never
// destroy a Watch while holding a lock that its listener's callback takes,
// except on the dispatch context itself.
class ODP_API Mirror::Watch {
  public:
    Watch() noexcept = default;
    Watch(Watch&& other) noexcept;
    Watch& operator=(Watch&& other) noexcept;
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;
    ~Watch();

    // Makes sure the memory mapped now in `sub` (inside range()) is watched:
    // call it before pinning memory there, after noting which events were
    // delivered. Module: the module watches addresses, not mappings, but
    // reports a change when it starts (MADV_DONTNEED, reclaim): waits until
    // no change of the watched range is in progress, so none that was
    // delivered can still remove pages after they are pinned. None, Fake:
    // nothing to do. Userfaultfd: registers the
    // mappings created since watch() (a new mmap inside the range is not
    // watched until armed), each whole so that the application's VMAs are
    // never split; and waits until every madvise(2) whose REMOVE event was
    // read so far has returned (REMOVE comes before the pages go; EAGAIN if
    // that cannot be seen within a second). Returns the parts of `sub` watched now (all of it, but
    // for userfaultfd's holes), in order: memory mapped into a hole after arm() is not watched, so
    // pin only inside them (or arm again). Throws odp::Error naming the first part that cannot be
    // watched and why (EINVAL file mapping, EPERM read-only, EBUSY another userfaultfd) and what to
    // do.
    std::vector<Range> arm(Range sub) const;

    // What watch() could not watch in range() (empty when all of it is).
    [[nodiscard]] std::vector<Unwatched> unwatched() const;

    [[nodiscard]] Range range() const noexcept { return range_; }
    [[nodiscard]] const std::shared_ptr<Mirror>& mirror() const noexcept { return mirror_; }
    explicit operator bool() const noexcept { return mirror_ != nullptr; }

    // Unregisters now (same guarantee as the destructor).
    void reset() noexcept;

  private:
    friend class Mirror;
    Watch(std::shared_ptr<Mirror> mirror, std::uint64_t id, Range range) noexcept
        : mirror_(std::move(mirror)), id_(id), range_(range) {}

    std::shared_ptr<Mirror> mirror_;
    std::uint64_t id_ = 0;
    Range range_{};
};

}  // namespace odp
