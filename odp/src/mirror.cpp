// odp::Mirror: one per process, delivery of source events to watches.
//
// Threads and locks, in the order they may be taken:
//   acquire_mutex (process-wide, only in acquire/current)
//   Core::dispatch_mutex: one drain pass at a time (dispatch context)
//   Core::registry_mutex: the watch table; never held across a callback, a
//                         system call or an allocation that the source reader
//                         could wait for
//   Core::sync_mutex:     synchronize() waiters
// The userfaultfd reader thread (sources/userfaultfd_source.cpp) takes none
// of them.
// Boost.Asio's fenced blocks use std::atomic_thread_fence, which GCC warns
// about under -fsanitize=thread (-Wtsan); the fences are correct, TSan just
// cannot model them. Before every include, so that it covers the headers.
#if defined(__SANITIZE_THREAD__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wtsan"
#endif
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <optional>
#include <thread>
#include <utility>

#include "creator_process.hpp"
#include "sources/source.hpp"

namespace odp {

std::string_view to_string(MonitorKind kind) noexcept {
    switch (kind) {
        case MonitorKind::Auto:
            return "auto";
        case MonitorKind::Module:
            return "module";
        case MonitorKind::Userfaultfd:
            return "userfaultfd";
        case MonitorKind::None:
            return "none";
        case MonitorKind::Fake:
            return "fake";
    }
    return "unknown";
}

namespace {

// What kind of part an errno of a source's refusal means.
std::string_view unwatched_kind(int error) noexcept {
    switch (error) {
        case EINVAL:
            return "file-backed or special";
        case EPERM:
            return "read-only file";
        case EBUSY:
            return "registered with another userfaultfd";
        case ENOTSUP:
            return "System V shared memory";
        case ENOMEM:
            return "out of memory or vm.max_map_count";
        case EDEADLK:
            return "libodp's own reader stack";
        default:
            return "other";
    }
}

}  // namespace

std::string summarize(const std::vector<Unwatched>& parts, std::size_t listed) {
    if (parts.empty()) {
        return {};
    }
    std::map<std::string_view, std::size_t> kinds;
    for (const Unwatched& part : parts) {
        ++kinds[unwatched_kind(part.error)];
    }
    std::string text = std::to_string(parts.size()) + (parts.size() == 1 ? " part (" : " parts (");
    bool first = true;
    for (const auto& [kind, count] : kinds) {
        text += (first ? "" : ", ") + std::to_string(count) + " " + std::string(kind);
        first = false;
    }
    text += "): ";
    const std::size_t shown = std::min(listed, parts.size());
    for (std::size_t i = 0; i < shown; ++i) {
        const Unwatched& part = parts[i];
        text += (i == 0 ? "" : ", ") + detail::describe(part.range) + " " +
                (part.mapping.empty() ? part.why : part.mapping);
    }
    if (shown < parts.size()) {
        text += "; and " + std::to_string(parts.size() - shown) + " more";
    }
    return text;
}

namespace {
std::atomic<std::uint64_t> next_watch_id{1};
// Set while this thread delivers events (any Mirror's dispatch pass).
thread_local bool delivering = false;
}  // namespace

class ODP_LOCAL Mirror::Core final : public detail::EventSink,
                                     public std::enable_shared_from_this<Core> {
  public:
    Core(std::unique_ptr<detail::Source> source, boost::asio::io_context* io)
        : source_(std::move(source)), io_(io) {}

    ~Core() { descriptor_.reset(); }

    [[nodiscard]] detail::Source& source() const noexcept { return *source_; }
    [[nodiscard]] boost::asio::io_context* io() const noexcept { return io_; }
    [[nodiscard]] pid_t pid() const noexcept { return creator_.pid(); }

    std::uint64_t add_watch(Range range, InvalidationListener& listener) {
        std::uint64_t id = 0;
        {
            const std::lock_guard lock(registry_mutex_);
            // Unique in the process, across Mirrors: the module's ring is per
            // process, and a dying Mirror's leftovers must not match a new watch.
            id = next_watch_id.fetch_add(1, std::memory_order_relaxed);
            entries_.emplace(id, Entry{range, &listener, {}});
        }
        try {
            std::vector<Unwatched> unwatched = source_->add(id, range);
            const std::lock_guard lock(registry_mutex_);
            entries_.at(id).unwatched = std::move(unwatched);
        } catch (...) {
            const std::lock_guard lock(registry_mutex_);
            entries_.erase(id);
            throw;
        }
        watches_total_.fetch_add(1, std::memory_order_relaxed);
        return id;
    }

    void remove_watch(std::uint64_t id) noexcept {
        if (!creator_.is_current()) {
            // A forked child: the table may have been locked by a thread of
            // the parent at fork time, and a callback "running" there never
            // returns here. The source leaves the parent's registrations.
            return;
        }
        {
            std::unique_lock lock(registry_mutex_);
            entries_.erase(id);
            // On the dispatch context (inside any callback) waiting would deadlock,
            // and is not needed: the running callback is ours or another watch's.
            if (dispatch_thread_.load(std::memory_order_acquire) != std::this_thread::get_id()) {
                registry_cv_.wait(lock, [&] { return running_id_ != id; });
            }
        }
        source_->remove(id);
    }

    [[nodiscard]] std::vector<Unwatched> unwatched(std::uint64_t id) const {
        const std::lock_guard lock(registry_mutex_);
        const auto found = entries_.find(id);
        return found == entries_.end() ? std::vector<Unwatched>{} : found->second.unwatched;
    }

    std::vector<Range> arm(std::uint64_t id, Range sub) {
        std::vector<Range> watched = source_->arm(id, sub);
        armed_.fetch_add(1, std::memory_order_relaxed);
        return watched;
    }

    // One drain of the source, delivering to the listeners.
    void dispatch_pass() {
        const std::lock_guard dispatch_lock(dispatch_mutex_);
        dispatch_thread_.store(std::this_thread::get_id(), std::memory_order_release);
        const bool was_delivering = std::exchange(delivering, true);
        std::uint64_t through = 0;
        try {
            through = source_->drain(*this);
        } catch (const std::exception& error) {
            // A source that cannot be read can no longer promise anything.
            log_error(std::string("mirror: reading the ") +
                      std::string(to_string(source_->kind())) +
                      " source failed, invalidating everything: " + error.what());
            deliver_overflow();
            through = source_->recorded();
        }
        delivering = was_delivering;
        dispatch_thread_.store(std::thread::id{}, std::memory_order_release);
        {
            const std::lock_guard lock(sync_mutex_);
            if (through > applied_.load(std::memory_order_relaxed)) {
                applied_.store(through, std::memory_order_release);
            }
        }
        sync_cv_.notify_all();
    }

    [[nodiscard]] bool up_to_date() const noexcept {
        return source_->recorded() <= applied_.load(std::memory_order_acquire);
    }

    void synchronize() {
        if (dispatch_thread_.load(std::memory_order_acquire) == std::this_thread::get_id()) {
            return;  // inside a callback: the pass in progress delivers the rest
        }
        const std::uint64_t target = source_->recorded();
        if (target <= applied_.load(std::memory_order_acquire)) {
            return;
        }
        if (io_ != nullptr && io_->get_executor().running_in_this_thread()) {
            dispatch_pass();  // we are the dispatch context: deliver inline
            return;
        }
        std::unique_lock lock(sync_mutex_);
        sync_cv_.wait(lock, [&] {
            return applied_.load(std::memory_order_acquire) >= target ||
                   dead_.load(std::memory_order_acquire);
        });
    }

    void deliver(const detail::Event& event) noexcept override {
        events_.fetch_add(1, std::memory_order_relaxed);
        scratch_.clear();
        {
            const std::lock_guard lock(registry_mutex_);
            if (event.watch_id != 0) {
                const auto found = entries_.find(event.watch_id);
                if (found != entries_.end()) {
                    collect(found->first, found->second.range, event.range);
                }
            } else {
                for (const auto& [id, entry] : entries_) {
                    collect(id, entry.range, event.range);
                }
            }
        }
        for (const auto& [id, clipped] : scratch_) {
            invoke(id, [&](InvalidationListener& listener) {
                listener.on_invalidate(clipped, event.reason);
            });
        }
    }

    void deliver_overflow() noexcept override {
        overflows_.fetch_add(1, std::memory_order_relaxed);
        scratch_.clear();
        {
            const std::lock_guard lock(registry_mutex_);
            for (const auto& [id, entry] : entries_) {
                scratch_.emplace_back(id, entry.range);
            }
        }
        for (const auto& [id, range] : scratch_) {
            invoke(id, [](InvalidationListener& listener) {
                listener.on_invalidate_all(InvalidationReason::Overflow);
            });
        }
    }

    [[nodiscard]] MirrorStats stats() const noexcept {
        MirrorStats stats;
        stats.events = events_.load(std::memory_order_relaxed);
        stats.deliveries = deliveries_.load(std::memory_order_relaxed);
        stats.overflows = overflows_.load(std::memory_order_relaxed);
        stats.watches_total = watches_total_.load(std::memory_order_relaxed);
        stats.armed_ranges = armed_.load(std::memory_order_relaxed);
        {
            const std::lock_guard lock(registry_mutex_);
            stats.watches = entries_.size();
        }
        return stats;
    }

    // io_context dispatch: wait for the source's descriptor on a strand.
    void start_async() {
        strand_.emplace(boost::asio::make_strand(*io_));
        const int fd = ::dup(source_->ready_fd());
        if (fd < 0) {
            throw_errno("dup() of the mirror's event descriptor for the io_context");
        }
        descriptor_.emplace(*strand_, fd);
        wait_async();
    }

    // Own-thread dispatch: poll the source and a stop flag.
    void start_thread() {
        thread_ = detail::start_thread_without_signals(
            [core = shared_from_this()] { core->run_thread(); });
    }

    void stop_thread() noexcept {
        if (!creator_.is_current()) {
            // A forked child: stop_ would stop the parent's dispatcher, and
            // ours does not exist here.
            detail::leave_to_parent(thread_);
            return;
        }
        stop_.signal();
        if (thread_.get_id() == std::this_thread::get_id()) {
            // The last reference went away inside a callback: the thread holds
            // its own reference to the core and leaves when the pass returns.
            thread_.detach();
        } else if (thread_.joinable()) {
            thread_.join();
        }
    }

    void stop_async() noexcept {
        if (!creator_.is_current()) {
            // A forked child: removing the descriptor from the io_context's
            // epoll set (which the child shares with the parent) would remove
            // it for the parent too. Leave it to the parent.
            if (descriptor_) {
                detail::leave_to_parent(*descriptor_);
                descriptor_.reset();
            }
            return;
        }
        stopping_.store(true, std::memory_order_release);
        try {
            boost::asio::post(*strand_, [core = shared_from_this()] { core->descriptor_.reset(); });
        } catch (const std::exception& error) {
            log_error(std::string("mirror: stopping the io_context dispatcher: ") + error.what());
        }
    }

  private:
    struct Entry {
        Range range;
        InvalidationListener* listener;
        std::vector<Unwatched> unwatched;
    };

    void collect(std::uint64_t id, Range watched, Range changed) {
        const Range clipped = watched.intersect(changed);
        if (!clipped.empty()) {
            scratch_.emplace_back(id, clipped);
        }
    }

    // Runs one callback of watch `id` unless it was removed meanwhile; a
    // concurrent remove_watch(id) waits until it returns.
    template <typename Call>
    void invoke(std::uint64_t id, const Call& call) noexcept {
        InvalidationListener* listener = nullptr;
        {
            const std::lock_guard lock(registry_mutex_);
            const auto found = entries_.find(id);
            if (found == entries_.end()) {
                return;
            }
            listener = found->second.listener;
            running_id_ = id;
        }
        call(*listener);
        deliveries_.fetch_add(1, std::memory_order_relaxed);
        {
            const std::lock_guard lock(registry_mutex_);
            running_id_ = 0;
        }
        registry_cv_.notify_all();
    }

    void run_thread() noexcept {
        pollfd fds[2] = {{source_->ready_fd(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
        for (;;) {
            const int ready = ::poll(fds, 2, -1);
            if (ready < 0) {
                if (errno == EINTR) {
                    continue;
                }
                log_error(std::string("mirror dispatcher: poll() failed, events are no longer "
                                      "delivered; invalidating everything: ") +
                          std::strerror(errno));
                die();
                return;
            }
            if ((fds[1].revents & POLLIN) != 0) {
                return;
            }
            if ((fds[0].revents & (POLLERR | POLLNVAL)) != 0) {
                // The source is dead: say so once, and treat everything as stale.
                log_error("mirror dispatcher: the " + std::string(to_string(source_->kind())) +
                          " source reported an error; invalidating everything");
                die();
                return;
            }
            try {
                dispatch_pass();
            } catch (const std::exception& error) {
                log_error(std::string("mirror dispatcher: ") + error.what());
            }
        }
    }

    // The dispatcher cannot go on: tell every listener everything is stale,
    // and let synchronize() callers go rather than wait forever.
    void die() noexcept {
        {
            const std::lock_guard dispatch_lock(dispatch_mutex_);
            dispatch_thread_.store(std::this_thread::get_id(), std::memory_order_release);
            deliver_overflow();
            dispatch_thread_.store(std::thread::id{}, std::memory_order_release);
        }
        {
            const std::lock_guard lock(sync_mutex_);
            dead_.store(true, std::memory_order_release);
        }
        sync_cv_.notify_all();
    }

    void wait_async() {
        descriptor_->async_wait(
            boost::asio::posix::descriptor_base::wait_read,
            [core = shared_from_this()](const boost::system::error_code& ec) {
                if (ec || core->stopping_.load(std::memory_order_acquire) || !core->descriptor_) {
                    return;
                }
                core->dispatch_pass();
                core->wait_async();
            });
    }

    const std::unique_ptr<detail::Source> source_;
    boost::asio::io_context* const io_;
    const detail::CreatorProcess creator_;

    mutable std::mutex registry_mutex_;
    std::condition_variable registry_cv_;
    std::map<std::uint64_t, Entry> entries_;
    std::uint64_t running_id_ = 0;  // the watch whose callback runs now (0: none)

    std::mutex dispatch_mutex_;
    std::atomic<std::thread::id> dispatch_thread_{};
    std::vector<std::pair<std::uint64_t, Range>> scratch_;  // under dispatch_mutex_

    std::mutex sync_mutex_;
    std::condition_variable sync_cv_;
    std::atomic<std::uint64_t> applied_{0};
    std::atomic<bool> dead_{false};  // the dispatcher gave up (everything was invalidated)

    std::optional<boost::asio::strand<boost::asio::io_context::executor_type>> strand_;
    std::optional<boost::asio::posix::stream_descriptor> descriptor_;
    std::atomic<bool> stopping_{false};

    std::thread thread_;
    detail::WakeFd stop_;

    std::atomic<std::uint64_t> events_{0};
    std::atomic<std::uint64_t> deliveries_{0};
    std::atomic<std::uint64_t> overflows_{0};
    std::atomic<std::uint64_t> watches_total_{0};
    std::atomic<std::uint64_t> armed_{0};
};

namespace {

std::mutex acquire_mutex;
std::condition_variable teardown_done;
int mirrors_dying = 0;              // under acquire_mutex
std::weak_ptr<Mirror> live_mirror;  // the get-unless-zero lookup: lock() fails once dying

std::unique_ptr<detail::Source> open_source(const MirrorOptions& options) {
    switch (options.kind) {
        case MonitorKind::Fake:
            return detail::make_fake_source(options);
        case MonitorKind::None:
            return detail::make_none_source();
        case MonitorKind::Module:
            return detail::make_module_source(options);
        case MonitorKind::Userfaultfd:
            return detail::make_userfaultfd_source(options);
        case MonitorKind::Auto:
            break;
    }
    std::string module_failure;
    try {
        return detail::make_module_source(options);
    } catch (const Error& error) {
        module_failure = error.what();
    }
    try {
        return detail::make_userfaultfd_source(options);
    } catch (const Error& error) {
        // Allowing userfaultfd helps only where it was denied; where the kernel
        // lacks what it needs (ENOTSUP: events, write-protect mode, or no
        // copy-on-write of pinned pages) only the module does.
        const bool denied = error.errno_value() == EPERM || error.errno_value() == ENOSYS ||
                            error.errno_value() == EACCES;
        throw Error(error.errno_value(),
                    "no invalidation source for emulated ODP. odp_mirror module: " +
                        module_failure + ". userfaultfd: " + error.what() +
                        ". To get one: load the module (insmod odp_mirror.ko, or install "
                        "odp-mirror-dkms)" +
                        (denied ? ", or allow userfaultfd (sysctl "
                                  "vm.unprivileged_userfaultfd=1, CAP_SYS_PTRACE, or read-write "
                                  "access to /dev/userfaultfd)"
                                : "") +
                        ", or choose MonitorKind::None if the application never unmaps or "
                        "remaps registered memory");
    }
}

}  // namespace

Mirror::Mirror(const MirrorOptions& options, Private /*unused*/) {
    core_ = std::make_shared<Core>(open_source(options), options.io_context);
    if (core_->source().ready_fd() < 0) {
        return;  // no events ever: nothing to run
    }
    if (options.io_context != nullptr) {
        core_->start_async();
        return;
    }
    core_->start_thread();
}

Mirror::~Mirror() {
    {
        const std::lock_guard lock(acquire_mutex);
        ++mirrors_dying;
    }
    if (core_->source().ready_fd() >= 0) {
        if (core_->io() != nullptr) {
            core_->stop_async();
        } else {
            core_->stop_thread();
        }
    }
    core_.reset();  // closes the source unless a detached dispatcher still runs
    {
        const std::lock_guard lock(acquire_mutex);
        --mirrors_dying;
    }
    teardown_done.notify_all();
}

std::shared_ptr<Mirror> Mirror::acquire(const MirrorOptions& options) {
    std::unique_lock lock(acquire_mutex);
    if (std::shared_ptr<Mirror> mirror = live_mirror.lock();
        mirror && mirror->core_->pid() == ::getpid()) {
        if (options.kind != MonitorKind::Auto && options.kind != mirror->kind()) {
            throw Error(EBUSY, "Mirror::acquire(" + std::string(to_string(options.kind)) +
                                   "): this process already has a " +
                                   std::string(to_string(mirror->kind())) +
                                   " mirror; there is one per process: ask for MonitorKind::Auto "
                                   "or release the other one first");
        }
        if (options.io_context != nullptr && options.io_context != mirror->core_->io()) {
            throw Error(EBUSY,
                        "Mirror::acquire: this process's mirror already dispatches on another "
                        "context; there is one per process: pass no io_context or the same one");
        }
        return mirror;
    }
    // None alive (or only a copy inherited over fork, whose threads do not
    // exist in this process): a fresh one, once a dying one has closed its
    // source (the module's event ring and userfaultfd registrations are per
    // process).
    // Not from inside a callback, though: a dying Mirror may be joining the
    // very thread that runs it.
    if (!delivering) {
        teardown_done.wait(lock, [] { return mirrors_dying == 0; });
    }
    auto mirror = std::make_shared<Mirror>(options, Private{});
    live_mirror = mirror;
    return mirror;
}

std::shared_ptr<Mirror> Mirror::current() noexcept {
    const std::lock_guard lock(acquire_mutex);
    std::shared_ptr<Mirror> mirror = live_mirror.lock();
    if (mirror && mirror->core_->pid() != ::getpid()) {
        return nullptr;
    }
    return mirror;
}

Mirror::Watch Mirror::watch(Range range, InvalidationListener& listener) {
    if (range.empty()) {
        throw Error(EINVAL,
                    "Mirror::watch: empty range " + detail::describe(range) + ": pass begin < end");
    }
    const std::uint64_t id = core_->add_watch(range, listener);
    return Watch(shared_from_this(), id, range);
}

MonitorKind Mirror::kind() const noexcept {
    return core_->source().kind();
}

std::string_view Mirror::description() const noexcept {
    return core_->source().description();
}

bool Mirror::up_to_date() const noexcept {
    return core_->up_to_date();
}

void Mirror::synchronize() {
    core_->synchronize();
}

void Mirror::inject(Range range, InvalidationReason reason) {
    core_->source().inject(range, reason);
}

void Mirror::inject_overflow() {
    core_->source().inject_overflow();
}

MirrorStats Mirror::stats() const noexcept {
    return core_->stats();
}

Mirror::Watch::Watch(Watch&& other) noexcept
    : mirror_(std::move(other.mirror_)), id_(std::exchange(other.id_, 0)), range_(other.range_) {}

Mirror::Watch& Mirror::Watch::operator=(Watch&& other) noexcept {
    if (this != &other) {
        reset();
        mirror_ = std::move(other.mirror_);
        id_ = std::exchange(other.id_, 0);
        range_ = other.range_;
    }
    return *this;
}

Mirror::Watch::~Watch() {
    reset();
}

void Mirror::Watch::reset() noexcept {
    if (mirror_) {
        mirror_->core_->remove_watch(id_);
        id_ = 0;
        mirror_.reset();  // may destroy the Mirror (last reference)
    }
}

std::vector<Range> Mirror::Watch::arm(Range sub) const {
    if (!mirror_) {
        throw Error(EINVAL, "Mirror::Watch::arm on an empty (moved-from or reset) watch");
    }
    if (sub.empty() || !range_.contains(sub)) {
        throw Error(EINVAL, "Mirror::Watch::arm" + detail::describe(sub) +
                                ": must be a non-empty part of the watched range " +
                                detail::describe(range_));
    }
    return mirror_->core_->arm(id_, sub);
}

std::vector<Unwatched> Mirror::Watch::unwatched() const {
    return mirror_ ? mirror_->core_->unwatched(id_) : std::vector<Unwatched>{};
}

}  // namespace odp
