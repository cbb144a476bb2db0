#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <odp/device.hpp>
#include <odp/error.hpp>

#include "region_core.hpp"
#include "sources/source.hpp"
#include "test_hooks.hpp"

namespace odp {

namespace detail {

namespace {

constexpr std::uintptr_t user_address_space_end =
#if defined(__x86_64__)
    std::uintptr_t{1} << 47;
#else
    std::uintptr_t{1} << 48;
#endif

}  // namespace

PinLimits probe_pin_limits() {
    PinLimits limits;
    rlimit limit{};
    check_syscall(getrlimit(RLIMIT_MEMLOCK, &limit), "getrlimit(RLIMIT_MEMLOCK)");
    if (limit.rlim_cur != RLIM_INFINITY) {
        limits.memlock = limit.rlim_cur;
    }
    // CAP_IPC_LOCK in the effective set: the kernel pins beyond RLIMIT_MEMLOCK
    // (how most RDMA programs run, as root). capget() directly: no libcap.
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    std::array<__user_cap_data_struct, _LINUX_CAPABILITY_U32S_3> data{};
    if (syscall(SYS_capget, &header, data.data()) == 0) {
        limits.ipc_lock =
            (data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective & CAP_TO_MASK(CAP_IPC_LOCK)) != 0;
    }
    limits.physical_memory = static_cast<std::uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                             static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
    return limits;
}

Budget choose_budget(const PinLimits& limits, std::optional<std::uint64_t> requested,
                     bool pins_memory, std::string_view nic_name) {
    // The kernel enforces RLIMIT_MEMLOCK only without CAP_IPC_LOCK.
    const std::optional<std::uint64_t> enforced = limits.ipc_lock ? std::nullopt : limits.memlock;
    if (requested) {
        if (*requested == 0) {
            throw_error(EINVAL, "max_pinned_bytes 0 on " + std::string(nic_name) +
                                    ": nothing could ever be registered; leave it unset for "
                                    "the default");
        }
        if (enforced && pins_memory && *requested > *enforced) {
            throw_error(EINVAL, "max_pinned_bytes " + format_bytes(*requested) + " on " +
                                    std::string(nic_name) + " is above RLIMIT_MEMLOCK (" +
                                    format_bytes(*enforced) +
                                    "): raise the limit (`ulimit -l`) or ask for less");
        }
        return {*requested, "explicit (" + format_bytes(*requested) + ")"};
    }
    if (enforced) {
        return {*enforced, "RLIMIT_MEMLOCK (" + format_bytes(*enforced) + ")"};
    }
    const std::uint64_t half = limits.physical_memory / 2;
    return {half, "half of RAM (" + format_bytes(half) + "; " +
                      (limits.ipc_lock ? "CAP_IPC_LOCK: RLIMIT_MEMLOCK is not enforced"
                                       : "RLIMIT_MEMLOCK is unlimited") +
                      ")"};
}

DeviceState::DeviceState(std::unique_ptr<Nic> nic_in, const DeviceOptions& options)
    : nic(std::move(nic_in)) {
    Budget budget = choose_budget(probe_pin_limits(), options.max_pinned_bytes, nic->pins_memory(),
                                  nic->name());
    max_pinned = budget.bytes;
    budget_source = std::move(budget.source);
}

DeviceState::~DeviceState() {
    // Regions hold the device alive: no request is left for the thread.
    {
        const std::scoped_lock lock(mutex);
        stopping_ = true;
    }
    ahead_wake_.notify_all();
    if (ahead_thread_.joinable()) {
        ahead_thread_.join();
    }
}

void DeviceState::request_fault_ahead_locked(RegionCore& region, std::size_t chunk) {
    if (ahead_requests_.size() >= max_ahead_requests ||
        std::any_of(ahead_requests_.begin(), ahead_requests_.end(), [&](const AheadRequest& r) {
            return r.region == &region && r.chunk == chunk;
        })) {
        return;
    }
    if (!ahead_thread_.joinable()) {
        ahead_thread_ = start_thread_without_signals([this] { run_fault_ahead(); });
    }
    ahead_requests_.push_back({&region, chunk});
    ahead_wake_.notify_one();
}

void DeviceState::forget_fault_ahead_locked(RegionCore& region,
                                            std::unique_lock<std::mutex>& lock) {
    std::erase_if(ahead_requests_, [&](const AheadRequest& r) { return r.region == &region; });
    run_test_hook(HookPoint::FaultAheadForgotten);
    fault_done.wait(lock, [&] { return fault_ahead_running_ != &region; });
}

void DeviceState::run_fault_ahead() {
    ::pthread_setname_np(::pthread_self(), "odp-fault-ahead");  // for ps and debuggers
    // Speculative work must not take the CPU from the thread that asked for
    // it: woken as SCHED_OTHER, this thread preempted the data path's thread
    // (EEVDF, 6.6 on, does so far more than CFS did) and the translate that
    // requested the next chunk waited for that chunk's whole registration
    // (docs/results/goals.md). SCHED_BATCH keeps its nice-0 share of the CPU
    // but never preempts on wakeup. If the policy is refused (a seccomp or
    // LSM rule), fault-ahead still works, only less early.
    const sched_param no_priority{};
    ::pthread_setschedparam(::pthread_self(), SCHED_BATCH, &no_priority);
    std::unique_lock lock(mutex);
    for (;;) {
        ahead_wake_.wait(lock, [this] { return stopping_ || !ahead_requests_.empty(); });
        if (stopping_) {
            return;
        }
        const AheadRequest request = ahead_requests_.front();
        ahead_requests_.pop_front();
        // The region cannot go meanwhile: its close() waits for this.
        fault_ahead_running_ = request.region;
        lock.unlock();
        request.region->fault_ahead(request.chunk);
        lock.lock();
        fault_ahead_running_ = nullptr;
        fault_done.notify_all();
    }
}

void DeviceState::reserve_locked(std::uint64_t bytes, RegionCore& requester, const char* operation,
                                 Range part, bool speculative) {
    const auto what = [&] { return requester.what(operation, part); };
    if (bytes > max_pinned) {
        requester.count_back_pressure();
        throw_error(ENOBUFS, what() + ": needs " + format_bytes(bytes) +
                                 " pinned but max_pinned_bytes is " + format_bytes(max_pinned) +
                                 " (" + budget_source +
                                 "): raise the budget, use smaller chunks or a smaller region");
    }
    const std::uint64_t held_by_regions = pinned_regions.load(std::memory_order_acquire);
    if (held_by_regions + bytes > max_pinned) {
        // Pinned regions are never evicted: releasing leases cannot help.
        requester.count_back_pressure();
        throw_error(ENOBUFS, what() + ": needs " + format_bytes(bytes) +
                                 " pinned but pinned regions already hold " +
                                 format_bytes(held_by_regions) + " of the " +
                                 format_bytes(max_pinned) + " budget (" + budget_source +
                                 "): drop a pinned region, register with Mode::Emulated (it "
                                 "pins chunks on demand), or raise max_pinned_bytes");
    }
    std::vector<EvictionCandidate> candidates;
    std::vector<const EvictionCandidate*> victims;
    bool swept = false;
    bool scanned = false;
    std::size_t next = 0;
    for (;;) {
        const std::uint64_t current = pinned.load(std::memory_order_acquire);
        if (current + bytes <= max_pinned) {
            // Only the slow path (this lock) adds: no other reservation can
            // slip in between the check and the add.
            const std::uint64_t now = pinned.fetch_add(bytes, std::memory_order_acq_rel) + bytes;
            std::uint64_t peak = peak_pinned.load(std::memory_order_relaxed);
            while (now > peak && !peak_pinned.compare_exchange_weak(peak, now)) {
            }
            return;
        }
        if (!swept) {
            swept = true;
            for (RegionCore* region : regions) {
                region->sweep_stale_locked();
            }
            continue;
        }
        if (!scanned) {
            scanned = true;
            for (RegionCore* region : regions) {
                region->collect_eviction_candidates_locked(candidates, speculative);
            }
            // What chunks may hold beside pinned regions, less the probation
            // share: an eighth, and at least two chunks (one can be leased by
            // work in flight while the next faults).
            const std::uint64_t room = max_pinned - held_by_regions;
            const std::uint64_t probation =
                std::max<std::uint64_t>(room / 8, 2 * requester.config().chunk_size);
            victims = eviction_order(candidates, eviction, room > probation ? room - probation : 0);
        }
        // Evict the policy's first victim (one that was leased or
        // invalidated since the scan is skipped).
        bool evicted = false;
        while (next < victims.size() && !evicted) {
            const EvictionCandidate& candidate = *victims[next++];
            evicted = candidate.region->evict_locked(*candidate.pin);
        }
        if (!evicted) {
            requester.count_back_pressure();
            const std::uint64_t now = pinned.load(std::memory_order_acquire);
            const std::uint64_t regions_now = pinned_regions.load(std::memory_order_acquire);
            throw BackPressure(
                EAGAIN, what() + ": needs " + format_bytes(bytes) + " pinned but the budget of " +
                            format_bytes(max_pinned) + " (" + budget_source +
                            ") is full: " + format_bytes(now - std::min(now, regions_now)) +
                            " in leased chunks, " + format_bytes(regions_now) +
                            " in pinned regions: release leases (complete work requests) and "
                            "retry, or raise max_pinned_bytes");
        }
    }
}

}  // namespace detail

std::shared_ptr<Device> Device::open(const DeviceOptions& options) {
    return open(open_verbs_nic(options.name), options);
}

std::shared_ptr<Device> Device::open(std::unique_ptr<Nic> nic, const DeviceOptions& options) {
    if (!nic) {
        throw_error(EINVAL, "Device::open: no NIC given");
    }
    return std::make_shared<Device>(Key{}, std::move(nic), options);
}

Device::Device(Key, std::unique_ptr<Nic> nic, const DeviceOptions& options)
    : state_(std::make_unique<detail::DeviceState>(std::move(nic), options)) {}

Device::~Device() {
    // Regions hold the device alive, so none can be left here.
    if (!state_->regions.empty()) {
        log_error("device " + std::string(name()) + " destroyed with regions open");
    }
}

std::string_view Device::name() const noexcept {
    return state_->nic->name();
}
const DeviceCaps& Device::caps() const noexcept {
    return state_->nic->caps();
}
Nic& Device::nic() const noexcept {
    return *state_->nic;
}
ibv_context* Device::context() const noexcept {
    return state_->nic->context();
}
ibv_pd* Device::pd() const noexcept {
    return state_->nic->pd();
}
std::uint64_t Device::max_pinned_bytes() const noexcept {
    return state_->max_pinned;
}
const std::string& Device::budget_source() const noexcept {
    return state_->budget_source;
}
std::uint64_t Device::pinned_bytes() const noexcept {
    return state_->pinned.load(std::memory_order_relaxed);
}

namespace {

// The RC operations whose ODP support `access` needs, as "op" names missing.
std::string missing_ops(const DeviceCaps& caps, Access access) {
    std::string missing;
    const auto need = [&](bool supported, const char* op) {
        if (!supported) {
            missing += missing.empty() ? "" : ", ";
            missing += op;
        }
    };
    if (!caps.odp) {
        return "any operation (the device reports no IBV_ODP_SUPPORT)";
    }
    need(caps.rc.send, "send");
    need(caps.rc.recv, "recv");
    if (has(access, Access::LocalWrite) || has(access, Access::RemoteRead)) {
        need(caps.rc.read, "read");
    }
    if (has(access, Access::RemoteWrite)) {
        need(caps.rc.write, "write");
    }
    if (has(access, Access::RemoteAtomic)) {
        need(caps.rc.atomic, "atomic");
    }
    return missing;
}

}  // namespace

bool Device::native_covers(Access access) const noexcept {
    try {
        return missing_ops(caps(), access).empty();
    } catch (...) {
        return false;
    }
}

Mode Device::resolve(Mode requested, Access access) const {
    switch (requested) {
        case Mode::Auto:
            // Only a native ODP that moved real bytes correctly (DeviceCaps).
            return native_covers(access) && caps().native_data_ok ? Mode::Native : Mode::Emulated;
        case Mode::Native:
            if (const std::string missing = missing_ops(caps(), access); !missing.empty()) {
                throw_error(EOPNOTSUPP, std::string(name()) + " has no native ODP for RC " +
                                            missing + " (access " + to_string(access) +
                                            "): use Mode::Emulated or Mode::Auto");
            }
            return Mode::Native;
        case Mode::Pinned:
        case Mode::Emulated:
            return requested;
    }
    return requested;
}

Region Device::register_region(const void* address, std::size_t length, Access access, Mode mode) {
    RegionOptions options;
    options.mode = mode;
    return register_region(address, length, access, options);
}

Region Device::register_region(const void* address, std::size_t length, Access access,
                               const RegionOptions& options) {
    detail::RegionCore::Config config;
    config.range = Range::from_length(address, length);
    config.access = access;
    config.mode = resolve(options.mode, access);
    config.chunk_size = options.chunk_size;
    config.monitor = options.monitor;
    config.mirror = options.mirror;
    config.fault_ahead = options.fault_ahead;
    return Region(detail::RegionCore::create(shared_from_this(), config));
}

Region Device::register_address_space(Access access, const RegionOptions& options) {
    detail::RegionCore::Config config;
    const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    config.range = Range{page, detail::user_address_space_end};
    config.access = access;
    config.chunk_size = options.chunk_size;
    config.monitor = options.monitor;
    config.mirror = options.mirror;
    config.fault_ahead = options.fault_ahead;
    config.implicit = true;
    switch (options.mode) {
        case Mode::Pinned:
            throw_error(EINVAL, "register_address_space on " + std::string(name()) +
                                    ": the whole address space cannot be pinned; use "
                                    "Mode::Auto, Native or Emulated");
        case Mode::Native:
            if (!caps().implicit_odp) {
                throw_error(EOPNOTSUPP, std::string(name()) +
                                            " has no implicit ODP: use Mode::Emulated or "
                                            "Mode::Auto for the whole address space");
            }
            config.mode = resolve(Mode::Native, access);
            break;
        case Mode::Auto:
            config.mode = caps().implicit_odp && native_covers(access) && caps().native_data_ok
                              ? Mode::Native
                              : Mode::Emulated;
            break;
        case Mode::Emulated:
            config.mode = Mode::Emulated;
            break;
    }
    return Region(detail::RegionCore::create(shared_from_this(), config));
}

Stats Device::stats() const {
    const std::scoped_lock lock(state_->mutex);
    Stats total = state_->retired;
    for (const detail::RegionCore* region : state_->regions) {
        Stats part = region->stats();
        part.pinned_bytes = 0;
        detail::accumulate(total, part);
    }
    total.pinned_bytes = state_->pinned.load(std::memory_order_relaxed);
    total.peak_pinned_bytes = state_->peak_pinned.load(std::memory_order_relaxed);
    return total;
}

}  // namespace odp
