// Internals of regions and devices. Nothing here is public.
//
// RegionCore's implementation is split by concern, each file's head comment
// stating its own concurrency contract:
//   region_core.cpp          lifetime, references, close, statistics
//   region_whole.cpp         pinned and native regions (one registration)
//   region_table.cpp         the chunk table and the lock-free hit path
//   region_pins.cpp          the pin pool and each pin's state word
//   region_fault.cpp         the chunk fault (registration on demand)
//   region_fault_ahead.cpp   fault-ahead and prefetch
//   region_invalidation.cpp  invalidation (lock-free)
//   region_exposures.cpp     the exposure registry and its callbacks
// The budget and the fault-ahead thread are the device's (device.cpp).
//
// Concurrency design (see docs/guide.md, "Inside"):
//  * A Pin is one registration that leases hold: a chunk (emulated) or the
//    whole region (pinned, native). Its 64-bit state word packs the lease
//    count, the stale/changed/dead/free flags and an incarnation number.
//  * Emulated regions find chunk pins through a two-level table (top array
//    of leaves of up to 4096 slots, leaves created on first use): the hit path is
//    two loads, one CAS on the pin's state and a verifying load. No lock, no
//    system call.
//  * Invalidation (the mirror's thread) takes no lock: it bumps the leaf's
//    sequence number, sets the stale bit and detaches the pin from its slot.
//    ibv_dereg_mr happens when the last lease is released, or at the next
//    slow-path call for pins nobody leased.
//  * The slow path's bookkeeping (claiming a chunk's fault, reserving the
//    budget, evicting, sweeping, the pin pool, region open/close) runs under
//    the device's mutex, which no invalidation ever takes. The registration
//    itself (ibv_reg_mr, which pins and may sleep) runs outside it, so faults
//    of different chunks register in parallel: a fault first claims its
//    chunk (a second faulter of the chunk waits for the first) and reserves
//    its bytes (the budget is never overshot, eviction happens under the
//    lock), then arms the watch and registers unlocked. It re-checks the
//    chunk's sequence after publishing its pin (the read_begin/retry pattern
//    of mmu_interval_notifier) so that an invalidation delivered before or
//    during the registration is never lost; between reading the sequence
//    and pinning, Watch::arm() waits for the changes already delivered to be
//    over (the read_begin wait).
//  * Pins are never freed while their region lives (type-stable memory): a
//    hit path that read a recycled pin notices through the verifying load.
//  * A region core counts one reference for its handle plus one per pin not
//    free; the last one deletes it. Leases therefore keep it (and through it
//    the device and the mirror) alive without touching a shared counter.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/lease.hpp>
#include <odp/listener.hpp>
#include <odp/nic.hpp>
#include <odp/region.hpp>
#include <odp/stats.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace odp::detail {

[[nodiscard]] std::uintptr_t page_size() noexcept;  // sources/common.cpp
// Bytes of the pages `range` touches (what registering it pins).
[[nodiscard]] std::uint64_t page_rounded(Range range) noexcept;
// SGE lengths are 32-bit: pinned/native leases split at this size.
inline constexpr std::size_t max_sge_bytes = std::size_t{1} << 30;

// Assigns the calling thread its stripe (1-based) for StripedCounter.
unsigned assign_stripe() noexcept;

// Stripe of the calling thread: threads get stripes round-robin.
inline unsigned thread_stripe() noexcept {
    static thread_local unsigned stripe = 0;  // constant-initialised: no TLS guard
    if (stripe == 0) [[unlikely]] {
        stripe = assign_stripe();
    }
    return stripe - 1;
}

// A statistics counter many threads bump without sharing a cache line and
// without a locked instruction (the hit path has two already): a plain
// load + store on the thread's own stripe. Exact while no two threads share
// a stripe, i.e. up to `stripes` counting threads; beyond that concurrent
// increments of one stripe can be lost (statistics only, never correctness).
class StripedCounter {
  public:
    static constexpr unsigned stripes = 64;
    void add(std::uint64_t n) noexcept {
        std::atomic<std::uint64_t>& cell = cells_[thread_stripe()].value;
        cell.store(cell.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    [[nodiscard]] std::uint64_t sum() const noexcept {
        std::uint64_t total = 0;
        for (const Cell& cell : cells_) {
            total += cell.value.load(std::memory_order_relaxed);
        }
        return total;
    }

  private:
    struct alignas(64) Cell {
        std::atomic<std::uint64_t> value{0};
    };
    std::array<Cell, stripes> cells_{};
};

struct Piece {
    Range range;
    NicMr mr;
};

struct Pin {
    static constexpr std::uint64_t lease_mask = (std::uint64_t{1} << 24) - 1;
    static constexpr std::uint64_t stale_bit = std::uint64_t{1} << 24;    // no new leases
    static constexpr std::uint64_t changed_bit = std::uint64_t{1} << 25;  // mapping changed
    static constexpr std::uint64_t dead_bit = std::uint64_t{1} << 26;     // being deregistered
    static constexpr std::uint64_t free_bit = std::uint64_t{1} << 27;     // unused, in the pool
    // Published by a fault that has not re-checked its chunk's sequence yet:
    // its pages may already be the old ones, so nobody else may lease it.
    static constexpr std::uint64_t unconfirmed_bit = std::uint64_t{1} << 28;
    // Registered by fault-ahead and not leased since: the first lease counts
    // a fault-ahead hit and moves the window on; eviction for another
    // fault-ahead passes it over (speculation never displaces speculation).
    static constexpr std::uint64_t ahead_bit = std::uint64_t{1} << 29;
    static constexpr std::uint64_t unusable = stale_bit | dead_bit | free_bit | unconfirmed_bit;
    static constexpr std::uint64_t incarnation_unit = std::uint64_t{1} << 32;
    static constexpr std::size_t whole_region = static_cast<std::size_t>(-1);

    alignas(64) std::atomic<std::uint64_t> state{free_bit};
    std::atomic<std::uint64_t> last_use{0};  // device clock at the last lease
    // Device clock ticks between the chunk's last two uses (its previous use
    // may be before an eviction: the slot remembers it); 0 when not reused.
    // Written without a lock (a heuristic: a lost update only misjudges).
    std::atomic<std::uint64_t> reuse_interval{0};
    // Under the device mutex: the chunk is in the protected set of
    // EvictionPolicy::ReuseDistance (evicted after every probationary one).
    bool protected_chunk = false;
    // Written by the slow path before the pin is published, read by lease
    // holders; stable while any lease is held.
    std::size_t chunk = whole_region;
    std::vector<Piece> pieces;
    // Written like chunk and pieces, but also read by eviction's scan
    // (device mutex), which can race the lock-free last release's reset.
    std::atomic<std::uint64_t> pinned_bytes{0};
    Pin* next_reclaimed = nullptr;

    [[nodiscard]] const Piece* find(Range part) const noexcept {
        for (const Piece& piece : pieces) {
            if (piece.range.contains(part)) {
                return &piece;
            }
        }
        return nullptr;
    }
};

struct ExposureState {
    std::recursive_mutex mutex;  // held while the callback runs; release() takes it
    bool released = false;
    bool fired = false;
    std::atomic<bool> changed{false};
    ExposureCallback callback;
    Range range;
};

class RegionCore;

// Which registered chunk goes when the budget is full (device mutex held;
// leased chunks are never evicted by either).
enum class EvictionPolicy {
    // The chunk unused for the longest. A sequential cycle over more chunks
    // than the budget holds evicts every chunk just before its next use: no
    // chunk of the cycle is ever found registered.
    LeastRecentlyUsed,
    // LIRS-like (low inter-reference recency set): a protected set of at most
    // the budget less a probation share (an eighth, at least two chunks) holds
    // chunks that were used again within a short interval; new chunks are
    // probationary and evicted first, least recently used first. A chunk
    // reused (hit, or faulted again while its slot remembers its last use)
    // after fewer clock ticks than the protected set's least recently used
    // chunk has gone unused joins the protected set, which then drops that
    // one to probation. A cycle larger than the budget keeps the protected
    // part resident; a scan passes through probation without displacing a
    // hot set; a working set that moves ages the old protected chunks out.
    ReuseDistance,
};

struct EvictionCandidate {
    std::uint64_t last_use = 0;
    std::uint64_t reuse_interval = 0;
    std::uint64_t bytes = 0;
    bool evictable = false;  // unleased (and, for fault-ahead, not faulted ahead)
    RegionCore* region = nullptr;
    Pin* pin = nullptr;
};

// The chunks of `candidates` to evict, first victim first (only evictable
// ones). ReuseDistance also moves chunks into and out of the protected set
// (Pin::protected_chunk), holding at most `protected_capacity` bytes.
[[nodiscard]] std::vector<const EvictionCandidate*> eviction_order(
    const std::vector<EvictionCandidate>& candidates, EvictionPolicy policy,
    std::uint64_t protected_capacity);

// What the kernel lets this process pin (probed once per device).
struct PinLimits {
    std::optional<std::uint64_t> memlock;  // RLIMIT_MEMLOCK; empty when unlimited
    bool ipc_lock = false;                 // CAP_IPC_LOCK: RLIMIT_MEMLOCK is not enforced
    std::uint64_t physical_memory = 0;
};
[[nodiscard]] PinLimits probe_pin_limits();

struct Budget {
    std::uint64_t bytes = 0;
    std::string source;  // where it came from, for stats and errors
};
// The device's pinned budget: `requested` if given (refused above an enforced
// RLIMIT_MEMLOCK when the NIC pins memory), else RLIMIT_MEMLOCK when the
// kernel enforces it, else half of RAM.
[[nodiscard]] Budget choose_budget(const PinLimits& limits, std::optional<std::uint64_t> requested,
                                   bool pins_memory, std::string_view nic_name);

struct DeviceState {
    DeviceState(std::unique_ptr<Nic> nic_in, const DeviceOptions& options);

    std::unique_ptr<Nic> nic;
    std::uint64_t max_pinned = 0;
    std::string budget_source;
    // The part of `pinned` held by pinned regions: never evictable, so a
    // request that does not fit beside them cannot fit by releasing leases.
    // Read by every translate, written only when a pinned region comes or
    // goes: kept off the cache line that faults write.
    std::atomic<std::uint64_t> pinned_regions{0};
    alignas(64) std::atomic<std::uint64_t> pinned{0};
    std::atomic<std::uint64_t> peak_pinned{0};
    std::atomic<std::uint64_t> clock{1};  // eviction time: advances at every fault
    // Set before the first fault (benchmarks compare policies); under `mutex`.
    EvictionPolicy eviction = EvictionPolicy::ReuseDistance;

    // The slow-path lock: the chunks being faulted, reservations, eviction,
    // sweeping, the region list and every region's pin pool. Never taken by
    // invalidation, never held across a registration.
    std::mutex mutex;
    // Notified (under `mutex`) when a chunk fault ends: its waiters retry.
    std::condition_variable fault_done;
    std::vector<RegionCore*> regions;  // open regions
    Stats retired;                     // totals of closed regions

    // Reserves `bytes` of the budget, sweeping stale pins and evicting
    // chunks of any region (`eviction` chooses which) if needed. Throws ENOBUFS when the bytes
    // cannot fit beside the pinned regions, BackPressure (EAGAIN) when releasing leases (or the end
    // of faults in flight, which hold their reservation) would make room. Caller holds `mutex`. A
    // `speculative` reservation (fault-ahead) evicts no chunk that was itself faulted ahead and not
    // used yet.
    // `operation` and `part` name the caller's request in an error (the
    // message is built only then: a fault must not format it).
    void reserve_locked(std::uint64_t bytes, RegionCore& requester, const char* operation,
                        Range part, bool speculative = false);
    void unreserve(std::uint64_t bytes) noexcept {
        pinned.fetch_sub(bytes, std::memory_order_acq_rel);
    }

    // Fault-ahead: chunks to register in the background, by one library
    // thread per device started at the first request. A region's requests
    // are dropped when it closes, and close() waits for the one running
    // (fault_ahead_running_), so the thread never holds a region alive: it
    // cannot end up destroying the device it runs in.
    struct AheadRequest {
        RegionCore* region = nullptr;
        std::size_t chunk = 0;
    };
    static constexpr std::size_t max_ahead_requests = 1024;
    // Queues `chunk` unless it is queued already (or the queue is full). Caller
    // holds `mutex`.
    void request_fault_ahead_locked(RegionCore& region, std::size_t chunk);
    // Drops `region`'s requests and waits for the one running. Caller holds
    // `mutex` through `lock`.
    void forget_fault_ahead_locked(RegionCore& region, std::unique_lock<std::mutex>& lock);
    ~DeviceState();

  private:
    void run_fault_ahead();
    std::deque<AheadRequest> ahead_requests_;  // under mutex
    RegionCore* fault_ahead_running_ = nullptr;
    std::condition_variable ahead_wake_;
    bool stopping_ = false;
    std::thread ahead_thread_;
};

class RegionCore final : public InvalidationListener {
  public:
    struct Config {
        Range range;
        Access access = Access::None;
        Mode mode = Mode::Emulated;  // resolved
        std::size_t chunk_size = std::size_t{2} << 20;
        bool implicit = false;
        MonitorKind monitor = MonitorKind::Auto;
        std::shared_ptr<Mirror> mirror;
        std::size_t fault_ahead = 0;  // chunks (RegionOptions::fault_ahead)
    };

    // Registers (pinned/native) or sets up the table (emulated). The returned
    // core holds the handle's reference.
    [[nodiscard]] static RegionCore* create(std::shared_ptr<Device> device, const Config& config);

    RegionCore(const RegionCore&) = delete;
    RegionCore& operator=(const RegionCore&) = delete;

    // The handle is gone: invalidate everything (Teardown), deregister what is
    // not leased, drop the handle's reference.
    void close() noexcept;

    [[nodiscard]] Lease translate(std::uintptr_t address, std::size_t length, std::size_t max_sge);
    [[nodiscard]] Exposure expose(std::uintptr_t address, std::size_t length,
                                  ExposureCallback callback);
    void prefetch(std::uintptr_t address, std::size_t length, Prefetch advice);
    void prefetch_async(std::uintptr_t address, std::size_t length, Prefetch advice);
    // Registers `chunk` unless present (fault-ahead thread); failures (budget
    // full, not mapped, closed) just end the attempt.
    void fault_ahead(std::size_t chunk) noexcept;
    void collect();
    [[nodiscard]] Stats stats() const;
    [[nodiscard]] std::string monitor_description() const;
    [[nodiscard]] std::vector<Unwatched> unwatched() const { return watch_.unwatched(); }
    // "translate(0x..., 2 MiB) on emulated region [...) of rxe0": errors start so.
    [[nodiscard]] std::string what(const char* operation, Range part) const;
    [[nodiscard]] std::string describe() const;
    [[nodiscard]] const Config& config() const noexcept { return config_; }

    void on_invalidate(Range range, InvalidationReason reason) noexcept override;
    void on_invalidate_all(InvalidationReason reason) noexcept override;
    void fire_exposures(Range hit, InvalidationReason reason) noexcept;

    // Lease support. Before a release reads its pins: delivers the events
    // the source recorded but has not delivered yet (a change that returned
    // before the release must be seen). A few atomic loads when none are
    // pending. False if that failed (the caller must assume a change).
    bool catch_up() noexcept {
        if (!mirror_ || mirror_->up_to_date()) [[likely]] {
            return true;
        }
        return synchronize_mirror();
    }
    // Drops one lease; true if the pin's mapping changed.
    bool release_pin(Pin* pin) noexcept;
    void remove_exposure(const std::shared_ptr<ExposureState>& state) noexcept;

    // Budget support (device mutex held).
    std::uint64_t sweep_stale_locked() noexcept;
    // Usable chunks, evictable when unleased (and, if `skip_ahead`, not
    // faulted ahead and unused).
    void collect_eviction_candidates_locked(std::vector<EvictionCandidate>& out, bool skip_ahead);
    bool evict_locked(Pin& pin) noexcept;  // false if it was leased or stale meanwhile
    void count_back_pressure() noexcept { back_pressure_.fetch_add(1, std::memory_order_relaxed); }

  private:
    static constexpr unsigned leaf_shift = 12;
    static constexpr std::size_t leaf_size = std::size_t{1} << leaf_shift;
    static constexpr std::size_t leaf_mask = leaf_size - 1;
    struct Slot {
        std::atomic<Pin*> pin{nullptr};
        std::atomic<std::uint64_t> seq{0};  // bumped by every invalidation of the chunk
        // The device clock at the chunk's last use when its pin went: a fault
        // of the chunk knows how long it was out (EvictionPolicy).
        std::atomic<std::uint64_t> last_use{0};
    };
    struct Hit {
        Pin* pin = nullptr;
        const Piece* piece = nullptr;
        bool ahead = false;  // the pin was faulted ahead and not leased before
    };

    // Keeps the core alive until the end of a call that faults: a fault runs
    // partly unlocked, and a close() of the handle meanwhile must not delete
    // the core under the call. Taken on the slow path only.
    class CallReference {
      public:
        CallReference() = default;
        CallReference(const CallReference&) = delete;
        CallReference& operator=(const CallReference&) = delete;
        ~CallReference() {
            if (core_ != nullptr) {
                core_->drop_reference();  // may delete the core: the call's last step
            }
        }
        void hold(RegionCore& core) noexcept {
            if (core_ == nullptr) {
                core.references_.fetch_add(1, std::memory_order_relaxed);
                core_ = &core;
            }
        }

      private:
        RegionCore* core_ = nullptr;
    };

    RegionCore(std::shared_ptr<Device> device, const Config& config);
    ~RegionCore();

    [[nodiscard]] Range checked_part(std::uintptr_t address, std::size_t length,
                                     const char* operation) const;
    [[nodiscard]] std::size_t chunk_of(std::uintptr_t address) const noexcept {
        return (address >> chunk_shift_) - base_chunk_;
    }
    [[nodiscard]] Range chunk_range(std::size_t chunk) const noexcept;
    [[nodiscard]] Slot* slot_if_present(std::size_t chunk) const noexcept;

    [[nodiscard]] Lease lease_range(Range want, std::size_t max_sge, const char* operation);
    void check_fits_budget(Range want, std::size_t first, std::size_t last,
                           const char* operation) const;
    void invalidate_range(Range range, InvalidationReason reason) noexcept;
    void invalidate_everything(InvalidationReason reason) noexcept;
    void register_whole();
    void acquire_whole(Range want, std::size_t max_sge, Lease& lease);
    Hit try_acquire(std::size_t chunk, Range part) noexcept;
    enum class FaultKind { Demand, Ahead };
    // Ahead: no miss counted, and {} at once if the chunk is being faulted.
    Hit acquire_slow(std::size_t chunk, Range part, FaultKind kind = FaultKind::Demand);
    Hit fault_claimed(std::size_t chunk, Range part, FaultKind kind,
                      std::unique_lock<std::mutex>& lock);
    // A demand fault of `chunk`: right after its predecessor's, the pattern
    // is sequential and the next chunks are requested ahead.
    void note_demand_fault(std::size_t chunk) noexcept;
    void request_ahead_of(std::size_t chunk) noexcept;
    void used_faulted_ahead(Pin& pin, std::size_t chunk) noexcept;
    [[nodiscard]] bool present(std::size_t chunk) const noexcept;
    // The slots of the chunk's leaf (index them with chunk & leaf_mask).
    Slot* ensure_leaf_locked(std::size_t chunk);
    [[nodiscard]] std::size_t leaf_slots(std::size_t leaf_index) const noexcept;
    Pin& allocate_pin_locked();
    void return_unused_pin_locked(Pin& pin) noexcept;
    // Unlocked: `pin` is this fault's own until published; `reserved` bytes
    // of the budget are held for it (what is not used goes back; all of it
    // on failure). False (nothing registered) when it would pin memory
    // outside `watched`.
    [[nodiscard]] bool register_pieces(Pin& pin, Range span, Range part, std::uint64_t reserved,
                                       const std::vector<Range>& watched);
    struct Armed {
        Range span;                  // what to register
        std::vector<Range> watched;  // the parts of it the source watches
    };
    // Unlocked (the sources serialise their own state).
    [[nodiscard]] Armed arm(Range span, Range part);
    [[noreturn]] void throw_unsettled(Range part) const;
    [[noreturn]] void throw_unmapped(Range part) const;
    bool mark_stale(Pin& pin, bool changed) noexcept;
    bool try_claim(Pin& pin, bool require_stale) noexcept;
    bool synchronize_mirror() noexcept;
    // A reference for the duration of a callback, unless the core is already
    // being deleted (its destructor then waits for the callback to return).
    bool try_reference() noexcept;
    std::uint64_t destroy_pin(Pin& pin) noexcept;  // after try_claim; may delete this
    void drop_reference() noexcept;
    void note_pinned(std::uint64_t bytes) noexcept;

    std::shared_ptr<Device> device_;
    DeviceState& dev_;
    const Config config_;
    const unsigned chunk_shift_;
    const std::size_t base_chunk_;
    const std::size_t chunk_count_;
    std::string monitor_;
    // Emulated regions: the per-process Mirror and this region's watch on it.
    // Both live as long as the core: a lease or exposure that outlives the
    // Region handle must still hear that the mapping under it changed.
    std::shared_ptr<Mirror> mirror_;
    Mirror::Watch watch_;

    std::atomic<std::int64_t> references_{1};
    bool closed_ = false;  // under the device mutex: no fault may start any more
    // Chunks whose fault is in flight (device mutex): one fault per chunk.
    std::vector<std::size_t> faulting_;
    // 1 + the chunk of the last demand fault (0: none yet), for fault-ahead.
    std::atomic<std::size_t> last_demand_fault_{0};
    std::atomic<std::uint64_t> epoch_{0};  // bumped by invalidate_all

    // The chunk table (emulated).
    std::unique_ptr<std::atomic<Slot*>[]> top_;  // leaves: arrays of slots
    std::size_t top_size_ = 0;
    std::vector<std::unique_ptr<Slot[]>> leaves_;  // owner; under the device mutex

    // Pins: the pool owns them all (device mutex); free ones are listed in
    // free_, and pins freed by lock-free releasers wait on reclaimed_.
    std::vector<std::unique_ptr<Pin>> pool_;
    std::vector<Pin*> free_;
    std::atomic<Pin*> reclaimed_{nullptr};
    std::atomic<std::uint64_t> stale_pending_{0};
    Pin* whole_ = nullptr;  // pinned / native

    std::mutex exposures_mutex_;
    std::vector<std::shared_ptr<ExposureState>> exposures_;
    std::atomic<std::size_t> exposure_count_{0};

    // Statistics.
    StripedCounter hits_;
    std::atomic<std::uint64_t> misses_{0};
    std::atomic<std::uint64_t> chunk_faults_{0};
    std::atomic<std::uint64_t> bytes_registered_{0};
    std::atomic<std::uint64_t> prefetches_{0};
    std::atomic<std::uint64_t> chunks_faulted_ahead_{0};
    std::atomic<std::uint64_t> fault_ahead_hits_{0};
    std::array<std::atomic<std::uint64_t>, invalidation_reason_count> invalidations_{};
    std::atomic<std::uint64_t> chunks_invalidated_{0};
    std::atomic<std::uint64_t> stale_while_leased_{0};
    std::atomic<std::uint64_t> evictions_{0};
    std::atomic<std::uint64_t> back_pressure_{0};
    std::atomic<std::uint64_t> pinned_{0};
    std::atomic<std::uint64_t> peak_pinned_{0};
};

void accumulate(Stats& total, const Stats& part) noexcept;

}  // namespace odp::detail
