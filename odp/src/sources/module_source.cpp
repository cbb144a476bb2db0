// MonitorKind::Module: /dev/odp_mirror (kernel-glue/odp_mirror.ko, ABI in
// kernel-glue/include/uapi/odp_mirror.h, documented in docs/kernel-abi.md).
//
// One REGISTER per watch (cookie = watch id) puts an mmu interval notifier on
// exactly the watched addresses, mapped or not, so every change of any
// mapping there is reported; arm() only waits for changes still in progress,
// and only when the region's generation says one may have started (see
// there). Events are read from the
// read-only ring mapped into this process and consumed by storing the tail in
// the consumer page: draining takes no system call; poll() only wakes the
// dispatcher. The kernel never waits for us: a full ring drops the event and
// counts it in `lost`, which we turn into on_invalidate_all(Overflow).
#include <fcntl.h>
#include <odp_mirror.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <mutex>
#include <odp/error.hpp>
#include <utility>

#include "../creator_process.hpp"
#include "source.hpp"

namespace odp::detail {
namespace {

// A shared mapping of one of the module's areas.
class ModuleMapping {
  public:
    ModuleMapping() noexcept = default;
    ModuleMapping(int fd, std::uint64_t offset, std::size_t length, int protection,
                  const char* what)
        : length_(length) {
        void* address =
            ::mmap(nullptr, length, protection, MAP_SHARED, fd, static_cast<off_t>(offset));
        if (address == MAP_FAILED) {
            throw Error(errno, std::string("mmap of the odp_mirror ") + what + " (" +
                                   format_bytes(length) + "): " + std::strerror(errno) +
                                   " (module and library ABI mismatch? rebuild both)");
        }
        address_ = address;
    }
    ModuleMapping(ModuleMapping&& other) noexcept
        : address_(std::exchange(other.address_, nullptr)), length_(other.length_) {}
    ModuleMapping& operator=(ModuleMapping&&) = delete;
    ModuleMapping(const ModuleMapping&) = delete;
    ModuleMapping& operator=(const ModuleMapping&) = delete;
    ~ModuleMapping() {
        if (address_ != nullptr && ::munmap(address_, length_) != 0) {
            log_error(std::string("munmap of an odp_mirror area: ") + std::strerror(errno));
        }
    }
    [[nodiscard]] void* get() const noexcept { return address_; }

  private:
    void* address_ = nullptr;
    std::size_t length_ = 0;
};

template <typename Struct>
Struct sized() {
    Struct value{};
    value.size = sizeof(Struct);
    return value;
}

UniqueFd open_device(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        const int error = errno;
        std::string hint;
        if (error == ENOENT || error == ENODEV || error == ENXIO) {
            hint =
                "the odp_mirror module is not loaded: insmod odp_mirror.ko (built as "
                "<build>/kernel-glue/<kernel>/odp_mirror.ko)";
        } else if (error == EACCES || error == EPERM) {
            hint = "no permission: give this user read-write access to " + path +
                   " (e.g. a udev rule)";
        } else {
            hint = "unexpected error";
        }
        throw Error(error, "open(" + path + "): " + std::strerror(error) + " (" + hint + ")");
    }
    return UniqueFd(fd);
}

InvalidationReason to_reason(std::uint16_t reason) noexcept {
    switch (reason) {
        case ODP_MIRROR_REASON_UNMAP:
            return InvalidationReason::Unmap;
        case ODP_MIRROR_REASON_CLEAR:
            return InvalidationReason::Clear;
        case ODP_MIRROR_REASON_PROTECTION:
            return InvalidationReason::Protection;
        case ODP_MIRROR_REASON_MIGRATION:
            return InvalidationReason::Migration;
        case ODP_MIRROR_REASON_TEARDOWN:
            return InvalidationReason::Teardown;
        default:
            return InvalidationReason::Other;
    }
}

class ModuleSource final : public Source {
  public:
    explicit ModuleSource(const MirrorOptions& options)
        : path_(options.module_path),
          fd_(open_device(path_)),
          query_(query(fd_.get(), path_)),
          ring_(fd_.get(), ODP_MIRROR_MMAP_RING, query_.ring_mmap_size, PROT_READ, "event ring"),
          consumer_(fd_.get(), ODP_MIRROR_MMAP_CONSUMER, query_.consumer_mmap_size,
                    PROT_READ | PROT_WRITE, "consumer page"),
          generations_mapping_(fd_.get(), ODP_MIRROR_MMAP_GENERATIONS, query_.generations_mmap_size,
                               PROT_READ, "generation array") {
        generations_ = static_cast<const std::uint64_t*>(generations_mapping_.get());
        if (query_.generations_mmap_size <
            std::uint64_t{query_.max_regions} * sizeof(std::uint64_t)) {
            throw Error(EPROTO, path_ + ": the generation array holds " +
                                    std::to_string(query_.generations_mmap_size) +
                                    " bytes, less than one counter per region slot (" +
                                    std::to_string(query_.max_regions) +
                                    "): module and library ABI mismatch? rebuild both");
        }
        header_ = static_cast<const odp_mirror_ring_header*>(ring_.get());
        events_ = reinterpret_cast<const odp_mirror_event*>(static_cast<const char*>(ring_.get()) +
                                                            ODP_MIRROR_RING_EVENTS_OFFSET);
        cons_ = static_cast<odp_mirror_ring_consumer*>(consumer_.get());
        entries_ = header_->entries;
        if (entries_ == 0 || (entries_ & (entries_ - 1)) != 0 ||
            ODP_MIRROR_RING_EVENTS_OFFSET + std::uint64_t{entries_} * sizeof(odp_mirror_event) >
                query_.ring_mmap_size) {
            throw Error(EPROTO, path_ + ": the event ring header says " + std::to_string(entries_) +
                                    " entries, which does not fit the ring area (module and "
                                    "library ABI mismatch? rebuild both)");
        }
        // Start after anything queued before we existed (another Mirror of
        // this process that just died may have left events for its regions).
        tail_ = __atomic_load_n(&header_->head, __ATOMIC_ACQUIRE);
        __atomic_store_n(&cons_->tail, tail_, __ATOMIC_RELEASE);
        lost_seen_ = __atomic_load_n(&header_->lost, __ATOMIC_ACQUIRE);
        base_ = tail_ + lost_seen_;
        // poll() then also wakes us for events the kernel had to drop after
        // we caught up, which head alone would never show.
        if ((query_.features & ODP_MIRROR_FEATURE_POLL_LOST) != 0) {
            __atomic_store_n(&cons_->lost_seen, lost_seen_, __ATOMIC_RELEASE);
            __atomic_store_n(&cons_->flags, ODP_MIRROR_CONSUMER_POLL_LOST, __ATOMIC_RELEASE);
        }
    }

    [[nodiscard]] MonitorKind kind() const noexcept override { return MonitorKind::Module; }

    [[nodiscard]] std::string_view description() const noexcept override {
        return "module (odp_mirror.ko): an mmu interval notifier on exactly the watched "
               "addresses sees every change of the mapping there, whatever the memory type: "
               "munmap, mremap, mmap(MAP_FIXED), brk, shmdt, madvise, mprotect, fork "
               "copy-on-write, page migration, reclaim, truncation and process exit. The "
               "kernel never waits for the reader; a full event ring is reported as an "
               "overflow (everything stale). Before a chunk is pinned, changes still in progress "
               "in the region are waited for (they are reported when they start).";
    }

    [[nodiscard]] int ready_fd() const noexcept override { return fd_.get(); }

    // head + lost: every event the kernel produced, queued or dropped.
    [[nodiscard]] std::uint64_t recorded() const noexcept override {
        const std::uint64_t head = __atomic_load_n(&header_->head, __ATOMIC_ACQUIRE);
        const std::uint64_t lost = __atomic_load_n(&header_->lost, __ATOMIC_ACQUIRE);
        return head + lost - base_;
    }

    std::uint64_t drain(EventSink& sink) override {
        const std::uint64_t head = __atomic_load_n(&header_->head, __ATOMIC_ACQUIRE);
        for (; tail_ != head; ++tail_) {
            const odp_mirror_event& slot = events_[tail_ & (entries_ - 1)];
            const odp_mirror_event event = slot;  // the kernel never rewrites an unconsumed slot
            sink.deliver(
                Event{Range{event.start, event.end}, to_reason(event.reason), event.cookie});
        }
        __atomic_store_n(&cons_->tail, tail_, __ATOMIC_RELEASE);
        const std::uint64_t lost = __atomic_load_n(&header_->lost, __ATOMIC_ACQUIRE);
        if (lost != lost_seen_) {
            lost_seen_ = lost;
            __atomic_store_n(&cons_->lost_seen, lost, __ATOMIC_RELEASE);
            sink.deliver_overflow();
        }
        return head + lost - base_;
    }

    std::vector<Unwatched> add(std::uint64_t id, Range range) override {
        Range aligned = page_align(range);
        // Nothing can ever be mapped past the end of the user address space,
        // so watching up to there is watching all of it (the module refuses
        // more with ERANGE); a region of the whole address space fits.
        if (query_.address_limit != 0 && aligned.end > query_.address_limit) {
            aligned.end = query_.address_limit;
        }
        if (aligned.empty()) {
            const std::lock_guard lock(mutex_);
            regions_.erase(id);
            return {};
        }
        auto request = sized<odp_mirror_register>();
        request.start = aligned.begin;
        request.length = aligned.length();
        request.cookie = id;
        if (::ioctl(fd_.get(), ODP_MIRROR_IOC_REGISTER, &request) != 0) {
            const int error = errno;
            std::string hint;
            if (error == ENOSPC) {
                hint = "this process has " + std::to_string(query_.max_regions) +
                       " regions registered already, the module's limit: raise its parameter "
                       "or register fewer, larger regions";
            } else if (error == ERANGE) {
                hint = "the range ends above the top of the user address space";
            } else if (error == EPERM) {
                hint = "the device file belongs to another process (inherited over fork?)";
            } else {
                hint = "see docs/kernel-abi.md";
            }
            throw Error(error, "odp_mirror REGISTER " + describe(aligned) + ": " +
                                   std::strerror(error) + " (" + hint + ")");
        }
        {
            const std::lock_guard lock(mutex_);
            regions_[id] = ModuleRegion{.id = request.id, .slot = request.slot};
        }
        // A change running when the notifier went in may never reach it:
        // wait for it here, once, rather than in the region's first chunk
        // fault (registration is the explicit, cheap call; the first touch
        // is in the data path). If this fails, the first arm() waits.
        try {
            settle(id,
                   wait_for_changes(request.id, Range::from_length(aligned.begin, page_size())));
        } catch (const Error&) {
        }
        return {};
    }

    void remove(std::uint64_t id) noexcept override {
        if (!creator_.is_current()) {
            return;  // a forked child: the regions are the parent's (the module says EPERM)
        }
        std::uint32_t region = 0;
        {
            const std::lock_guard lock(mutex_);
            const auto found = regions_.find(id);
            if (found == regions_.end()) {
                return;
            }
            region = found->second.id;
            regions_.erase(found);
        }
        auto request = sized<odp_mirror_unregister>();
        request.id = region;
        if (::ioctl(fd_.get(), ODP_MIRROR_IOC_UNREGISTER, &request) != 0) {
            log_error("odp_mirror UNREGISTER of region " + std::to_string(region) + ": " +
                      std::strerror(errno));
        }
    }

    // Nothing to watch (the module watches addresses, mapped or not), but a
    // change reported so far may still be running: MADV_DONTNEED and reclaim
    // queue their event when the invalidation starts, before the pages go. A
    // chunk pinned meanwhile would hold pages that the zap then removes, and
    // no later event says so. SNAPSHOT starts with mmu_interval_read_begin(),
    // which waits until no invalidation of the region is in progress; one page
    // is enough (the wait is per region) and nothing is faulted. After it,
    // every change whose event the caller has already seen is over; the later
    // ones reach the caller's sequence re-check or its published pin.
    //
    // The wait is needed only if a change may have started since the last
    // one: every invalidation of the region bumps its generation when it
    // starts, and SNAPSHOT returns a generation whose changes are all over.
    // If the shared array still holds that value, none started since, and
    // the system call (a fifth of a chunk fault's time, and more with two
    // threads faulting) is skipped. A change starting after this load is
    // delivered after the caller's sequence load, which it fails.
    std::vector<Range> arm(std::uint64_t id, Range sub) override {
        ModuleRegion region;
        {
            const std::lock_guard lock(mutex_);
            const auto found = regions_.find(id);
            if (found == regions_.end()) {
                return {sub};  // an empty watch (nothing of it is in the address space)
            }
            region = found->second;
        }
        // A forked child has no generation array (VM_DONTCOPY): SNAPSHOT
        // then refuses with EPERM, saying whose region it is.
        if (region.settled && creator_.is_current() &&
            __atomic_load_n(&generations_[region.slot], __ATOMIC_ACQUIRE) == region.generation) {
            return {sub};
        }
        settle(id,
               wait_for_changes(region.id, Range::from_length(page_align(sub).begin, page_size())));
        return {sub};
    }

  private:
    // SNAPSHOT of `page` (nothing faulted): returns once no change of the
    // region is in progress, with a generation whose changes are all over.
    [[nodiscard]] std::uint64_t wait_for_changes(std::uint32_t region, Range page) const {
        for (;;) {
            auto request = sized<odp_mirror_snapshot>();
            request.id = region;
            request.start = page.begin;
            request.length = page.length();
            if (::ioctl(fd_.get(), ODP_MIRROR_IOC_SNAPSHOT, &request) == 0) {
                return request.generation;
            }
            const int error = errno;
            if (error == EINTR) {
                continue;  // a signal while the kernel retried: nothing was done
            }
            if (error == EBUSY) {
                throw Error(EAGAIN, "odp_mirror SNAPSHOT " + describe(page) +
                                        ": the mapping kept changing for a second: retry later");
            }
            throw Error(
                error,
                "odp_mirror SNAPSHOT " + describe(page) + " of region " + std::to_string(region) +
                    " (waiting for changes in progress before pinning): " + std::strerror(error));
        }
    }

    // A module region and the latest generation a SNAPSHOT found settled.
    struct ModuleRegion {
        std::uint32_t id = 0;
        std::uint32_t slot = 0;
        bool settled = false;  // no SNAPSHOT yet: a change may be running since REGISTER
        std::uint64_t generation = 0;
    };

    // Concurrent SNAPSHOTs may return in any order: keep the newest.
    void settle(std::uint64_t id, std::uint64_t generation) {
        const std::lock_guard lock(mutex_);
        const auto found = regions_.find(id);
        if (found == regions_.end()) {
            return;
        }
        ModuleRegion& region = found->second;
        if (!region.settled || generation > region.generation) {
            region.settled = true;
            region.generation = generation;
        }
    }

    static odp_mirror_query query(int fd, const std::string& path) {
        auto query = sized<odp_mirror_query>();
        if (::ioctl(fd, ODP_MIRROR_IOC_QUERY, &query) != 0) {
            throw Error(errno, "odp_mirror QUERY on " + path + ": " + std::strerror(errno));
        }
        if (query.abi_version != ODP_MIRROR_ABI_VERSION) {
            throw Error(EPROTO, path + " speaks odp_mirror ABI " +
                                    std::to_string(query.abi_version) + ", this library " +
                                    std::to_string(ODP_MIRROR_ABI_VERSION) +
                                    ": load the odp_mirror.ko built with this library");
        }
        const std::uint64_t needed = ODP_MIRROR_FEATURE_EVENT_RING | ODP_MIRROR_FEATURE_POLL |
                                     ODP_MIRROR_FEATURE_SNAPSHOT | ODP_MIRROR_FEATURE_GENERATIONS;
        if ((query.features & needed) != needed) {
            throw Error(
                ENOTSUP,
                path +
                    " lacks the event ring, poll, SNAPSHOT or the generation array: load the "
                    "odp_mirror.ko built with this library");
        }
        if (query.event_size != sizeof(odp_mirror_event)) {
            throw Error(EPROTO, path + ": event size " + std::to_string(query.event_size) + " != " +
                                    std::to_string(sizeof(odp_mirror_event)) + " (ABI mismatch)");
        }
        return query;
    }

    const CreatorProcess creator_;
    std::string path_;
    UniqueFd fd_;
    odp_mirror_query query_;
    ModuleMapping ring_;
    ModuleMapping consumer_;
    ModuleMapping generations_mapping_;
    const std::uint64_t* generations_ = nullptr;  // generation[slot], written by the module
    const odp_mirror_ring_header* header_ = nullptr;
    const odp_mirror_event* events_ = nullptr;
    odp_mirror_ring_consumer* cons_ = nullptr;
    std::uint32_t entries_ = 0;
    // Dispatch context only:
    std::uint64_t tail_ = 0;
    std::uint64_t lost_seen_ = 0;
    std::uint64_t base_ = 0;  // head + lost when we attached

    std::mutex mutex_;
    std::map<std::uint64_t, ModuleRegion> regions_;  // by watch id
};

}  // namespace

std::unique_ptr<Source> make_module_source(const MirrorOptions& options) {
    return std::make_unique<ModuleSource>(options);
}

}  // namespace odp::detail
