// odp-stress: the concurrent coherence stress (issue 13 items 0 and 9).
//
// Changer threads change the mapping under two buffers (munmap + mmap,
// madvise DONTNEED, mremap away and back, mprotect, fork + parent write,
// MADV_PAGEOUT, NUMA migration, THP split) while worker threads move bytes
// from the source buffer to the target buffer with RDMA WRITE, RDMA READ and
// SEND/RECV over rxe0 loopback, through libodp leases and exposures. Each
// transfer:
//   1. the worker writes a pattern unique to the transfer into the source
//      range and a different one into the target range;
//   2. translates/exposes both, posts, waits for the completions (changes run
//      meanwhile);
//   3. holds the changers off the range, sometimes makes one change itself
//      in the range (a "late" change: completed work, lease not yet released,
//      the widest window for an event not yet delivered), releases every
//      lease and exposure, and compares the target with the source.
// A release that reported no change promises that the transfer moved the
// bytes of the current mapping: then the target must equal the source, byte
// for byte. (The source, not the pattern: a change before the translation
// legitimately replaced the source's bytes, and the transfer must move those.)
// A transfer that breaks the promise is a silent error; there must be none.
// Pinned regions are the control: they cannot follow a change, so they must
// show stale transfers wherever pages really change.
//
// Exit status: 0 pass; 1 silent errors (emulated), or a pinned control that
// saw none; 2 bad arguments; 3 setup failed (device, module, regions);
// 4 the run itself failed (a completion error, a stuck QP).
#include <sys/stat.h>
#include <sys/utsname.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <odp/region.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "crash_report.hpp"
#include "mapping_changes.hpp"
#include "mr_journal.hpp"
#include "transfers.hpp"

namespace odp::stress {
namespace {

using Clock = std::chrono::steady_clock;

// ------------------------------------------------------------------ options

struct Options {
    Mode mode = Mode::Emulated;
    MonitorKind source = MonitorKind::Auto;  // Auto: the module if loaded, else userfaultfd
    std::optional<double> seconds;
    std::optional<std::uint64_t> transfers;
    std::uint64_t seed = 1;
    unsigned workers = 2;
    unsigned changers = 1;
    std::vector<ChangeKind> kinds{all_change_kinds.begin(), all_change_kinds.end()};
    std::vector<Operation> operations{all_operations.begin(), all_operations.end()};
    double change_rate = 500;  // per changer and second; 0: as fast as possible
    unsigned late_percent = 10;
    std::size_t buffer_bytes = std::size_t{8} << 20;
    std::size_t max_transfer = std::size_t{512} << 10;
    std::size_t chunk_bytes = std::size_t{2} << 20;
    // Background faults racing the changes: RegionOptions::fault_ahead, and
    // prefetch_async of a transfer's range before some transfers.
    std::size_t fault_ahead = 0;
    unsigned prefetch_percent = 0;
    std::optional<std::uint64_t> budget_bytes;
    std::string device = "rxe0";
    double progress_seconds = 30;
    // The loopback QPs' local ACK timeout, 4.096 us * 2^N: 19 is 2.1 s. At
    // verbs' default 14 (67 ms) rxe under emulation retransmitted READ
    // requests whose responses were merely slow; a duplicate that arrived
    // after the READ completed and its exposure was released (its MR
    // deregistered, as it may be) failed the responder's rkey check, which
    // moves the loopback QP to the error state: the next transfer flushed.
    std::uint8_t ack_timeout = 19;
};

const char* const usage_text = R"(usage: odp-stress [options]
  --mode emulated|pinned     regions under test (default emulated); pinned is the
                             control that must show stale transfers
  --source module|userfaultfd
                             invalidation source of emulated regions (default: the
                             module if /dev/odp_mirror exists, else userfaultfd)
  --seconds S                run for S seconds (default 60 without --transfers)
  --transfers N              stop after N transfers (with --seconds: whichever first)
  --seed N                   seeds every thread's choices (default 1)
  --workers N                transfer threads, each on its own QP and slice (default 2)
  --changers N               mapping-changer threads (default 1)
  --kinds LIST|all|none      changes, comma-separated: munmap-mmap, dontneed, mremap,
                             mprotect, fork-write, pageout, migrate, thp-split
  --ops LIST|all             transfers: write, read, send (default all)
  --change-rate R            changes per second per changer (default 500; 0: no pause)
  --late-percent P           transfers that get a change right before release (default 10)
  --buffer-mib N             source and target buffer size (default 8, even)
  --max-transfer-kib N       largest transfer (default 512)
  --chunk-kib N              emulated chunk size (default 2048)
  --fault-ahead N            emulated regions fault up to N chunks ahead in the
                             background when used in order (default 0: off)
  --prefetch-percent P       transfers whose range is first handed to prefetch_async,
                             registered by the background thread while the transfer
                             and the changes run (default 0)
  --budget-mib N             pinned budget of the device (default: RLIMIT_MEMLOCK)
  --device NAME              verbs device (default rxe0)
  --progress S               progress line every S seconds (default 30; 0: none)
  --ack-timeout N            the QPs' local ACK timeout, 4.096 us * 2^N (default 19:
                             2.1 s; verbs' usual 14 makes rxe retransmit slow READs)
Prints a summary (transfers by operation, changes reported, silent errors,
changes by kind) and a "ROW |...|" line for scripts/soak.
Exit: 0 pass, 1 silent errors / a control without stale transfers, 2 usage,
3 setup failed, 4 the run failed.
)";

[[noreturn]] void usage_error(const std::string& message) {
    std::cerr << "odp-stress: " << message << "\n\n" << usage_text;
    std::exit(2);
}

template <typename T>
T parse_number(std::string_view option, std::string_view text) {
    T value{};
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size()) {
        usage_error(std::string(option) + " takes a number, got '" + std::string(text) + "'");
    }
    return value;
}

std::vector<std::string_view> split_list(std::string_view text) {
    std::vector<std::string_view> items;
    while (!text.empty()) {
        const std::size_t comma = text.find(',');
        items.push_back(text.substr(0, comma));
        text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    }
    return items;
}

Options parse_options(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; ++i) {
        const std::string_view option = argv[i];
        if (option == "--help" || option == "-h") {
            std::cout << usage_text;
            std::exit(0);
        }
        if (i + 1 >= argc) {
            usage_error(std::string(option) + " needs a value (or is unknown)");
        }
        const std::string_view value = argv[++i];
        if (option == "--mode") {
            if (value != "emulated" && value != "pinned") {
                usage_error("--mode is emulated or pinned, got '" + std::string(value) + "'");
            }
            options.mode = value == "pinned" ? Mode::Pinned : Mode::Emulated;
        } else if (option == "--source") {
            if (value != "module" && value != "userfaultfd") {
                usage_error("--source is module or userfaultfd, got '" + std::string(value) + "'");
            }
            options.source = value == "module" ? MonitorKind::Module : MonitorKind::Userfaultfd;
        } else if (option == "--seconds") {
            options.seconds = parse_number<double>(option, value);
        } else if (option == "--transfers") {
            options.transfers = parse_number<std::uint64_t>(option, value);
        } else if (option == "--seed") {
            options.seed = parse_number<std::uint64_t>(option, value);
        } else if (option == "--workers") {
            options.workers = parse_number<unsigned>(option, value);
        } else if (option == "--changers") {
            options.changers = parse_number<unsigned>(option, value);
        } else if (option == "--kinds") {
            options.kinds.clear();
            for (const std::string_view name : split_list(value)) {
                if (name == "all") {
                    options.kinds.assign(all_change_kinds.begin(), all_change_kinds.end());
                    continue;
                }
                if (name == "none") {
                    continue;  // no changer: the transfers alone must be right
                }
                const auto kind = parse_change_kind(name);
                if (!kind) {
                    usage_error("unknown change kind '" + std::string(name) + "'");
                }
                options.kinds.push_back(*kind);
            }
        } else if (option == "--ops") {
            options.operations.clear();
            for (const std::string_view name :
                 split_list(value == "all" ? "write,read,send" : value)) {
                const auto operation = parse_operation(name);
                if (!operation) {
                    usage_error("unknown operation '" + std::string(name) + "'");
                }
                options.operations.push_back(*operation);
            }
        } else if (option == "--change-rate") {
            options.change_rate = parse_number<double>(option, value);
        } else if (option == "--late-percent") {
            options.late_percent = parse_number<unsigned>(option, value);
        } else if (option == "--buffer-mib") {
            options.buffer_bytes = parse_number<std::size_t>(option, value) << 20;
        } else if (option == "--max-transfer-kib") {
            options.max_transfer = parse_number<std::size_t>(option, value) << 10;
        } else if (option == "--chunk-kib") {
            options.chunk_bytes = parse_number<std::size_t>(option, value) << 10;
        } else if (option == "--fault-ahead") {
            options.fault_ahead = parse_number<std::size_t>(option, value);
        } else if (option == "--prefetch-percent") {
            options.prefetch_percent = parse_number<unsigned>(option, value);
        } else if (option == "--budget-mib") {
            options.budget_bytes = parse_number<std::uint64_t>(option, value) << 20;
        } else if (option == "--device") {
            options.device = value;
        } else if (option == "--ack-timeout") {
            options.ack_timeout = parse_number<std::uint8_t>(option, value);
        } else if (option == "--progress") {
            options.progress_seconds = parse_number<double>(option, value);
        } else {
            usage_error("unknown option " + std::string(option));
        }
    }
    if (!options.seconds && !options.transfers) {
        options.seconds = 60;
    }
    if (options.workers == 0 || options.workers > 64) {
        usage_error("--workers takes 1 to 64");
    }
    if (options.buffer_bytes == 0 || options.buffer_bytes % huge_page_size != 0) {
        usage_error("--buffer-mib must be a positive even number (whole 2 MiB huge pages)");
    }
    if (options.buffer_bytes / options.workers < page_size() || options.max_transfer < 1 ||
        options.late_percent > 100 || options.prefetch_percent > 100) {
        usage_error(
            "buffers too small for the workers, or --max-transfer-kib 0, or "
            "--late-percent or --prefetch-percent above 100");
    }
    if (options.operations.empty()) {
        usage_error("--ops lists no operation");
    }
    return options;
}

// ------------------------------------------------------------------ data

std::uint64_t mix(std::uint64_t x) noexcept {  // splitmix64
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

void fill_pattern(unsigned char* bytes, std::size_t length, std::uint64_t key) noexcept {
    for (std::size_t at = 0; at < length; at += 8) {
        const std::uint64_t word = mix(key * 0x100000001b3ULL + at);
        std::memcpy(bytes + at, &word, std::min<std::size_t>(8, length - at));
    }
}

std::string hex_bytes(const unsigned char* bytes, std::size_t count) {
    std::string text;
    char piece[4];
    for (std::size_t i = 0; i < count; ++i) {
        std::snprintf(piece, sizeof piece, "%02x", bytes[i]);
        text += piece;
    }
    return text;
}

std::string thousands(std::uint64_t value) {
    // Built forwards: GCC 12's -Wrestrict misreads insert() into the digits.
    const std::string digits = std::to_string(value);
    std::string text;
    for (std::size_t at = 0; at < digits.size(); ++at) {
        if (at != 0 && (digits.size() - at) % 3 == 0) {
            text += ',';
        }
        text += digits[at];
    }
    return text;
}

// The device's port counters (rxe: duplicate_request, retransmissions and
// errors), empty where the driver has none.
std::map<std::string, std::uint64_t> read_port_counters(const std::string& device) {
    std::map<std::string, std::uint64_t> counters;
    std::error_code error;
    const std::filesystem::path directory =
        "/sys/class/infiniband/" + device + "/ports/1/hw_counters";
    for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
        std::ifstream file(entry.path());
        std::uint64_t value = 0;
        if (file >> value) {
            counters[entry.path().filename().string()] = value;
        }
    }
    return counters;
}

// ------------------------------------------------------------------ journal

enum class Side : std::uint8_t { Source, Target };
const char* name_of(Side side) {
    return side == Side::Source ? "source" : "target";
}

// The recent changes, to name those that overlapped a failed transfer.
struct ChangeRecord {
    std::uint64_t sequence = 0;
    ChangeKind kind{};
    Side side{};
    bool late = false;
    bool whole_process = false;
    bool zeroed = false;
    std::size_t begin = 0;  // offsets in the buffer
    std::size_t end = 0;
};

// A change as the crash report prints it (async-signal-safe).
void write_change(SignalSafeText& out, const ChangeRecord& record) noexcept {
    out.text("      #")
        .decimal(record.sequence)
        .text(" ")
        .text(name_of(record.kind))
        .text(" of the ");
    out.text(name_of(record.side)).text(" ");
    if (record.whole_process) {
        out.text("(every page of the process)");
    } else {
        out.text("[").hex(record.begin).text(", ").hex(record.end).text(")");
    }
    out.text(record.late ? " late (before the release)" : "").text(record.zeroed ? " zeroed" : "");
    out.text("\n");
}

class Journal {
  public:
    [[nodiscard]] std::uint64_t next_sequence() {
        const std::scoped_lock lock(mutex_);
        return next_;
    }
    void add(ChangeRecord record) {
        const std::scoped_lock lock(mutex_);
        record.sequence = next_;
        ring_[record.sequence % ring_.size()] = record;
        next_.store(next_ + 1, std::memory_order_release);
    }
    // The crash report's view: the last `limit` changes of [begin, end) of
    // `side` (or of every page), newest first, among the 4,096 newest
    // changes. Without the lock (async-signal-safe): a change being added
    // right now may be missing or torn.
    void write_recent_unlocked(SignalSafeText& out, Side side, std::size_t begin, std::size_t end,
                               unsigned limit) const noexcept {
        const std::uint64_t next = next_.load(std::memory_order_acquire);
        unsigned shown = 0;
        for (std::uint64_t back = 1; back <= std::min<std::uint64_t>(next, 4096) && shown < limit;
             ++back) {
            const ChangeRecord& record = ring_[(next - back) % ring_.size()];
            if (record.whole_process ||
                (record.side == side && record.begin < end && begin < record.end)) {
                write_change(out, record);
                ++shown;
            }
        }
        if (shown == 0) {
            out.text("      none among the last 4096 changes\n");
        }
    }
    // Changes numbered [from, to) that touched [begin, end) of either buffer
    // (or every page); `complete` is false if older ones were overwritten.
    std::vector<ChangeRecord> overlapping(std::uint64_t from, std::uint64_t to, std::size_t begin,
                                          std::size_t end, bool& complete) {
        const std::scoped_lock lock(mutex_);
        complete = next_ - from <= ring_.size();
        std::vector<ChangeRecord> found;
        for (std::uint64_t sequence =
                 std::max(from, next_ > ring_.size() ? next_ - ring_.size() : 0);
             sequence < to && sequence < next_; ++sequence) {
            const ChangeRecord& record = ring_[sequence % ring_.size()];
            if (record.whole_process || (record.begin < end && begin < record.end)) {
                found.push_back(record);
            }
        }
        return found;
    }

  private:
    std::mutex mutex_;
    std::vector<ChangeRecord> ring_ = std::vector<ChangeRecord>(std::size_t{1} << 16);
    std::atomic<std::uint64_t> next_{0};  // written under mutex_; read without by the crash report
};

// One line of a report: "#sequence kind of the side [begin, end) late zeroed".
void describe_change(std::ostream& text, const ChangeRecord& record) {
    text << "\n      #" << record.sequence << " " << name_of(record.kind) << " of the "
         << name_of(record.side) << " ";
    if (record.whole_process) {
        text << "(every page of the process)";
    } else {
        text << "[0x" << std::hex << record.begin << ", 0x" << record.end << std::dec << ")";
    }
    text << (record.late ? " late (before the release)" : "") << (record.zeroed ? " zeroed" : "");
}

// How often a change of each kind is picked, relative to the others. A fork
// copies every pinned page and the page tables and write-protects the whole
// address space (every registered chunk goes stale); a THP collapse copies
// 2 MiB; a migration copies pages. Under emulation each of those takes tens to
// hundreds of milliseconds, so they come less often, and a changer still
// makes hundreds of the cheap changes a second.
unsigned weight_of(ChangeKind kind) noexcept {
    switch (kind) {
        case ChangeKind::ForkWrite:
            return 1;
        case ChangeKind::ThpSplit:
            return 2;
        case ChangeKind::Migrate:
            return 4;
        default:
            return 8;
    }
}

// One of `kinds` (not empty), drawn by weight_of.
ChangeKind pick_kind(const std::vector<ChangeKind>& kinds, std::mt19937_64& random) {
    unsigned total = 0;
    for (const ChangeKind kind : kinds) {
        total += weight_of(kind);
    }
    auto draw = static_cast<unsigned>(random() % total);
    for (const ChangeKind kind : kinds) {
        if (draw < weight_of(kind)) {
            return kind;
        }
        draw -= weight_of(kind);
    }
    return kinds.back();
}

// ------------------------------------------------------------------ counters

struct OperationCounters {
    std::atomic<std::uint64_t> transfers{0};
    std::atomic<std::uint64_t> changed{0};              // a release reported a change
    std::atomic<std::uint64_t> changed_intact{0};       // ... and the bytes were right anyway
    std::atomic<std::uint64_t> verified{0};             // no change reported, bytes right
    std::atomic<std::uint64_t> silent{0};               // no change reported, bytes wrong
    std::atomic<std::uint64_t> retried{0};              // translate/expose refused (EFAULT/EAGAIN)
    std::atomic<std::uint64_t> late_zeroing{0};         // a late change zeroed part of the range
    std::atomic<std::uint64_t> late_zeroing_caught{0};  // ... and the bytes differed
};

// The change a changer or worker is making right now, for the crash report
// (read without a lock: a change starting or ending meanwhile may be torn).
struct ChangeInFlight {
    std::atomic<std::uint32_t> what{0};  // 0: none; else 1 + kind * 2 + side
    std::atomic<std::size_t> begin{0};
    std::atomic<std::size_t> end{0};
};

struct KindCounters {
    std::atomic<std::uint64_t> applied{0};
    std::atomic<std::uint64_t> late{0};
    std::atomic<std::uint64_t> failed{0};
    std::atomic<std::uint64_t> pages{0};
    std::atomic<std::uint64_t> whole_process{0};
    std::atomic<std::uint64_t> silent{0};  // silent errors this kind overlapped
    std::mutex mutex;
    std::string first_failure;
};

// ------------------------------------------------------------------ the run

class Stress {
  public:
    explicit Stress(Options options) : options_(std::move(options)) {}

    int run();

  private:
    void setup();
    void start_background_faults();
    void work(unsigned index, Loopback& loopback, std::latch& all_set_up);
    void change(unsigned index, std::latch& all_set_up);
    void transfer(unsigned index, Loopback& loopback, std::mt19937_64& random);
    ChangeResult late_change(unsigned worker, std::size_t offset, std::size_t length,
                             std::size_t slice_end, std::mt19937_64& random);
    // apply_change, announced in in_flight_[slot] while it runs.
    ChangeResult apply_tracked(std::size_t slot, ChangeKind kind, Side side, std::size_t offset,
                               std::size_t length, std::mt19937_64& random,
                               bool allow_whole_process);
    // The crash report's part about a page of the source (0) or target (1).
    static void write_page_history(SignalSafeText& out, std::size_t buffer_index,
                                   std::size_t offset) noexcept;
    void note_change(ChangeKind kind, Side side, std::size_t offset, std::size_t length,
                     const ChangeResult& result, bool late);
    [[nodiscard]] std::string describe_failed(std::uint64_t id, Operation operation,
                                              std::size_t offset, std::size_t length,
                                              std::uint64_t first_change, double started_ms,
                                              const FailedCompletion& failure);
    [[nodiscard]] std::string port_counter_changes() const;
    void report_silent(std::uint64_t id, Operation operation, unsigned worker, std::size_t offset,
                       std::size_t length, std::uint64_t first_change);
    [[nodiscard]] bool stopping() const {
        return stop_.load(std::memory_order_relaxed) ||
               (options_.transfers &&
                completed_.load(std::memory_order_relaxed) >= *options_.transfers);
    }
    void fail_run(const std::string& what);
    [[nodiscard]] std::unique_lock<std::mutex> lock_slice(unsigned worker) {
        return std::unique_lock(slice_mutexes_[worker]);
    }
    [[nodiscard]] std::vector<std::unique_lock<std::mutex>> lock_slices(std::size_t begin,
                                                                        std::size_t end);
    [[nodiscard]] const Buffer& buffer(Side side) const {
        return side == Side::Source ? *source_ : *target_;
    }
    [[nodiscard]] std::string mode_name() const;
    [[nodiscard]] std::string source_name() const;
    int report(double seconds);

    Options options_;
    std::string kernel_;
    std::vector<ChangeKind> kinds_;       // the enabled ones this machine can make
    std::vector<ChangeKind> late_kinds_;  // of those, the ones a worker makes in its own range
    std::vector<std::string> skipped_;
    std::shared_ptr<Device> device_;
    RecordingNic* nic_ = nullptr;                         // the device's, for the MRs' history
    std::map<std::string, std::uint64_t> port_counters_;  // at the start
    std::unique_ptr<Buffer> source_;
    std::unique_ptr<Buffer> target_;
    Region source_region_;
    Region target_region_;
    std::size_t slice_ = 0;
    std::uint32_t max_sge_ = 0;
    std::unique_ptr<std::mutex[]> slice_mutexes_;
    // One per worker (late changes), then one per changer.
    std::unique_ptr<ChangeInFlight[]> in_flight_;
    static inline const Stress* crash_reported_ = nullptr;  // the one instance, for the handler

    std::atomic<bool> stop_{false};
    std::atomic<std::uint64_t> next_id_{1};
    std::atomic<std::uint64_t> completed_{0};
    std::array<OperationCounters, operation_count> operations_{};
    std::array<KindCounters, change_kind_count> kinds_counters_{};
    Journal journal_;
    std::mutex report_mutex_;  // first silent error, fatal error
    std::string first_silent_;
    unsigned silent_reported_ = 0;
    std::string fatal_;
};

std::string Stress::mode_name() const {
    return options_.mode == Mode::Pinned ? "pinned" : "emulated";
}

std::string Stress::source_name() const {
    return options_.mode == Mode::Pinned ? "-" : std::string(to_string(options_.source));
}

void Stress::fail_run(const std::string& what) {
    {
        const std::scoped_lock lock(report_mutex_);
        if (fatal_.empty()) {
            fatal_ = what;
        }
    }
    stop_.store(true);
}

std::vector<std::unique_lock<std::mutex>> Stress::lock_slices(std::size_t begin, std::size_t end) {
    const auto last_worker = options_.workers - 1;
    const auto first = std::min<std::size_t>(begin / slice_, last_worker);
    const auto last = std::min<std::size_t>((end - 1) / slice_, last_worker);
    std::vector<std::unique_lock<std::mutex>> locks;
    for (std::size_t worker = first; worker <= last; ++worker) {  // ascending: no deadlock
        locks.emplace_back(slice_mutexes_[worker]);
    }
    return locks;
}

void Stress::setup() {
    if (const char* kernel = std::getenv("ODP_VM_KERNEL")) {
        kernel_ = kernel;
    } else {
        utsname name{};
        ::uname(&name);
        kernel_ = name.release;
    }
    for (const ChangeKind kind : options_.kinds) {
        if (std::find(kinds_.begin(), kinds_.end(), kind) != kinds_.end()) {
            continue;
        }
        if (const auto why = why_unavailable(kind)) {
            skipped_.push_back(std::string(name_of(kind)) + ": " + *why);
            continue;
        }
        kinds_.push_back(kind);
        if (kind != ChangeKind::ThpSplit) {
            late_kinds_.push_back(kind);
        }
    }
    if (options_.mode == Mode::Emulated && options_.source == MonitorKind::Auto) {
        struct stat info {};
        options_.source =
            ::stat("/dev/odp_mirror", &info) == 0 ? MonitorKind::Module : MonitorKind::Userfaultfd;
    }
    if (options_.mode == Mode::Emulated && options_.source == MonitorKind::Module) {
        struct stat info {};
        if (::stat("/dev/odp_mirror", &info) != 0) {
            throw_error(ENOENT,
                        "--source module: /dev/odp_mirror is missing: insmod "
                        "odp_mirror.ko (built in <build>/kernel-glue/<kernel>/) first");
        }
    }

    DeviceOptions device_options;
    device_options.name = options_.device;
    device_options.max_pinned_bytes = options_.budget_bytes;
    auto nic = std::make_unique<RecordingNic>(open_verbs_nic(options_.device));
    nic_ = nic.get();
    device_ = Device::open(std::move(nic), device_options);
    port_counters_ = read_port_counters(options_.device);

    source_ = std::make_unique<Buffer>("source", options_.buffer_bytes);
    target_ = std::make_unique<Buffer>("target", options_.buffer_bytes);
    // No zero bytes to begin with: zeros appear only where a change put them.
    fill_pattern(source_->data(), source_->length(), 0x5eed);
    fill_pattern(target_->data(), target_->length(), 0x7a59);

    slice_ = options_.buffer_bytes / options_.workers / page_size() * page_size();
    slice_mutexes_ = std::make_unique<std::mutex[]>(options_.workers);
    in_flight_ = std::make_unique<ChangeInFlight[]>(options_.workers + options_.changers);
    // One SGE per chunk a transfer can span (emulated), plus one for a start
    // inside a chunk.
    const std::size_t chunk = options_.mode == Mode::Emulated ? options_.chunk_bytes : (1U << 30);
    max_sge_ = static_cast<std::uint32_t>(
        std::min<std::size_t>(device_->caps().max_sge == 0 ? 32 : device_->caps().max_sge,
                              (options_.max_transfer + chunk - 1) / chunk + 1));

    RegionOptions region_options;
    region_options.mode = options_.mode;
    region_options.chunk_size = options_.chunk_bytes;
    region_options.monitor = options_.mode == Mode::Emulated ? options_.source : MonitorKind::None;
    const bool emulated = options_.mode == Mode::Emulated;
    region_options.fault_ahead = emulated ? options_.fault_ahead : 0;
    const Access access = Access::LocalWrite | Access::RemoteWrite | Access::RemoteRead;
    source_region_ =
        device_->register_region(source_->data(), source_->length(), access, region_options);
    target_region_ =
        device_->register_region(target_->data(), target_->length(), access, region_options);
    if (emulated && (options_.fault_ahead != 0 || options_.prefetch_percent != 0)) {
        start_background_faults();
    }
}

// The device starts its fault-ahead thread on the first request, and the
// thread's stack is a mapping: started during the run, it could land in a
// hole a change opened and be replaced by the change's fresh pages (see
// run()). One chunk prefetched and waited for starts it before any change.
void Stress::start_background_faults() {
    source_region_.prefetch_async(source_->data(), 1);
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    while (source_region_.stats().chunks_faulted_ahead == 0) {
        if (Clock::now() > deadline) {
            throw_error(ETIMEDOUT,
                        "the fault-ahead thread registered no chunk in 30 s after "
                        "prefetch_async: see the library's log");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

int Stress::run() {
    try {
        setup();
    } catch (const std::exception& error) {
        std::cerr << "odp-stress: setup failed: " << error.what() << "\n";
        return 3;
    }
    const AlternateSignalStack signal_stack;
    crash_reported_ = this;
    const std::array buffers = {
        NamedBuffer{"source", reinterpret_cast<std::uintptr_t>(source_->data()), source_->length()},
        NamedBuffer{"target", reinterpret_cast<std::uintptr_t>(target_->data()), target_->length()},
    };
    install_crash_report(buffers.data(), buffers.size(), write_page_history);
    std::cout << "odp-stress: kernel " << kernel_ << ", " << mode_name() << " regions"
              << (options_.mode == Mode::Emulated ? ", source " + source_name() : "") << ", "
              << options_.workers << " workers, " << options_.changers << " changers, seed "
              << options_.seed << ", "
              << (options_.seconds ? std::to_string(*options_.seconds) + " s" : "no time limit")
              << (options_.transfers
                      ? ", up to " + std::to_string(*options_.transfers) + " transfers"
                      : "")
              << "\n  source region: " << source_region_.describe() << "\n  transfers of 1 B to "
              << format_bytes(options_.max_transfer) << " (" << max_sge_
              << " SGEs at most), changes " << options_.change_rate
              << "/s per changer, late changes in " << options_.late_percent << "% of transfers\n";
    for (const std::string& skipped : skipped_) {
        std::cout << "  skipped change kind " << skipped << "\n";
    }
    std::cout << std::flush;

    // Everything that maps memory (rdma-core maps each QP's and CQ's
    // queues, every thread its stack and signal stack) is set up before the
    // first change, a changer's or a worker's late one: a change opens holes
    // in the buffers (munmap then mmap, mremap away and back), and a mapping
    // the kernel placed in one would be replaced by the change's fresh pages.
    // A send queue replaced so reads as full (index mask 0): the ENOMEM of
    // docs/results/soak.md, "5.10: send queue full".
    std::vector<std::unique_ptr<Loopback>> loopbacks;
    try {
        for (unsigned i = 0; i < options_.workers; ++i) {
            loopbacks.push_back(
                std::make_unique<Loopback>(*device_, max_sge_, options_.ack_timeout));
        }
    } catch (const std::exception& error) {
        std::cerr << "odp-stress: setup failed: a worker's QP: " << error.what() << "\n";
        return 3;
    }
    const unsigned changers = kinds_.empty() ? 0 : options_.changers;
    std::latch all_set_up(options_.workers + changers);
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < options_.workers; ++i) {
        threads.emplace_back(
            [this, i, &loopbacks, &all_set_up] { work(i, *loopbacks[i], all_set_up); });
    }
    for (unsigned i = 0; i < changers; ++i) {
        threads.emplace_back([this, i, &all_set_up] { change(i, all_set_up); });
    }
    auto next_progress = start + std::chrono::duration<double>(options_.progress_seconds);
    while (!stopping()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        const auto now = Clock::now();
        if (options_.seconds && now - start >= std::chrono::duration<double>(*options_.seconds)) {
            stop_.store(true);
        }
        if (options_.progress_seconds > 0 && now >= next_progress) {
            next_progress += std::chrono::duration<double>(options_.progress_seconds);
            std::uint64_t silent = 0;
            for (const auto& counters : operations_) {
                silent += counters.silent.load();
            }
            std::cout << "  ["
                      << static_cast<long>(std::chrono::duration<double>(now - start).count())
                      << " s] " << thousands(completed_.load()) << " transfers, "
                      << thousands(journal_.next_sequence()) << " changes, " << silent
                      << (options_.mode == Mode::Pinned ? " stale" : " silent errors") << "\n"
                      << std::flush;
        }
    }
    stop_.store(true);
    for (std::thread& thread : threads) {
        thread.join();
    }
    return report(std::chrono::duration<double>(Clock::now() - start).count());
}

// ------------------------------------------------------------------ workers

void Stress::work(unsigned index, Loopback& loopback, std::latch& all_set_up) {
    const AlternateSignalStack signal_stack;
    all_set_up.arrive_and_wait();
    try {
        std::mt19937_64 random(mix(options_.seed) + index);
        while (!stopping()) {
            transfer(index, loopback, random);
        }
    } catch (const std::exception& error) {
        fail_run("worker " + std::to_string(index) + ": " + error.what());
    }
}

void Stress::transfer(unsigned index, Loopback& loopback, std::mt19937_64& random) {
    const std::size_t slice_begin = index * slice_;
    const std::size_t slice_end =
        index + 1 == options_.workers ? options_.buffer_bytes : slice_begin + slice_;
    const Operation operation = options_.operations[random() % options_.operations.size()];
    const std::size_t length =
        1 + random() % std::min(options_.max_transfer, slice_end - slice_begin);
    const std::size_t offset = slice_begin + random() % (slice_end - slice_begin - length + 1);
    const std::uint64_t id = next_id_.fetch_add(1);
    unsigned char* const source = source_->data() + offset;
    unsigned char* const target = target_->data() + offset;
    OperationCounters& counters = operations_[static_cast<std::size_t>(operation)];
    // Registered by the background thread while this transfer translates
    // and the changers change the range.
    if (options_.prefetch_percent != 0 && random() % 100 < options_.prefetch_percent) {
        if (random() % 2 == 0) {
            source_region_.prefetch_async(source, length);
        } else {
            target_region_.prefetch_async(target, length);
        }
    }

    std::uint64_t first_change = 0;
    {
        const auto lock = lock_slice(index);
        fill_pattern(source, length, id);
        fill_pattern(target, length, ~id);
        first_change = journal_.next_sequence();
    }
    Held held;
    const double started_ms = nic_->now_ms();
    try {
        loopback.run(operation, source_region_, source, target_region_, target, length, held);
    } catch (const Error& error) {
        if (error.errno_value() == EIO && loopback.failure()) {
            throw_error(EIO, describe_failed(id, operation, offset, length, first_change,
                                             started_ms, *loopback.failure()));
        }
        // The memory was unmapped or write-protected by a change at that
        // moment, or kept changing: the application would retry.
        if (error.errno_value() == EFAULT || error.errno_value() == EAGAIN) {
            held.release();
            counters.retried.fetch_add(1);
            return;
        }
        throw;
    }

    const auto lock = lock_slice(index);
    bool late_zeroed = false;
    if (!late_kinds_.empty() && random() % 100 < options_.late_percent) {
        late_zeroed = late_change(index, offset, length, slice_end, random).zeroed;
    }
    const bool changed = held.release();
    const bool intact = std::memcmp(target, source, length) == 0;
    counters.transfers.fetch_add(1);
    if (late_zeroed) {
        counters.late_zeroing.fetch_add(1);
        counters.late_zeroing_caught.fetch_add(intact ? 0 : 1);
    }
    if (changed) {
        counters.changed.fetch_add(1);
        counters.changed_intact.fetch_add(intact ? 1 : 0);
    } else if (intact) {
        counters.verified.fetch_add(1);
    } else {
        counters.silent.fetch_add(1);
        report_silent(id, operation, index, offset, length, first_change);
    }
    completed_.fetch_add(1);
}

// A change by the worker itself, in its own slice, over part of the range it
// just transferred: after the completions, before the release.
ChangeResult Stress::late_change(unsigned worker, std::size_t offset, std::size_t length,
                                 std::size_t slice_end, std::mt19937_64& random) {
    const ChangeKind kind = pick_kind(late_kinds_, random);
    const Side side = random() % 2 == 0 ? Side::Source : Side::Target;
    const std::size_t page = page_size();
    const std::size_t begin = (offset + random() % length) / page * page;
    const std::size_t pages = std::min<std::size_t>(1 + random() % 16, (slice_end - begin) / page);
    const ChangeResult result =
        apply_tracked(worker, kind, side, begin, pages * page, random, false);
    note_change(kind, side, begin, pages * page, result, true);
    return result;
}

// A transfer whose work request failed: what it posted, what happened to
// the MRs behind its keys (a key deregistered before the failure means the
// library dropped an MR that a lease or exposure still held) and the
// changes under its range meanwhile.
std::string Stress::describe_failed(std::uint64_t id, Operation operation, std::size_t offset,
                                    std::size_t length, std::uint64_t first_change,
                                    double started_ms, const FailedCompletion& failure) {
    std::ostringstream text;
    text << "transfer #" << id << " (" << name_of(operation) << ", " << length
         << " bytes at buffer offset 0x" << std::hex << offset << std::dec << ", chunks "
         << offset / options_.chunk_bytes << " to " << (offset + length - 1) / options_.chunk_bytes
         << ", started at " << started_ms << " ms, failed by " << nic_->now_ms()
         << " ms): " << failure.describe() << "\n    the MRs behind its keys:";
    std::vector<std::uint32_t> keys;
    for (const auto* requests : {&failure.posted, &failure.earlier}) {
        for (const PostedRequest& request : *requests) {
            for (const ibv_sge& sge : request.local) {
                keys.push_back(sge.lkey);
            }
            if (request.rkey != 0) {
                keys.push_back(request.rkey);
            }
        }
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    for (const std::uint32_t key : keys) {
        text << "\n      key 0x" << std::hex << key << std::dec << ":" << nic_->history_of(key);
    }
    bool complete = true;
    const std::vector<ChangeRecord> changes = journal_.overlapping(
        first_change, journal_.next_sequence(), offset, offset + length, complete);
    text << "\n    changes overlapping it meanwhile" << (complete ? "" : " (older ones forgotten)")
         << ": " << changes.size();
    for (const ChangeRecord& record : changes) {
        describe_change(text, record);
    }
    const Stats stats = device_->stats();
    text << "\n    library so far: " << stats.chunk_faults << " chunk faults, "
         << stats.chunks_invalidated << " chunks invalidated (" << stats.stale_while_leased
         << " while leased), " << stats.evictions << " evictions\n    " << options_.device
         << " counters:" << port_counter_changes();
    return text.str();
}

// The port counters that changed since the start, " name +delta" each.
std::string Stress::port_counter_changes() const {
    const std::map<std::string, std::uint64_t> counters = read_port_counters(options_.device);
    if (counters.empty()) {
        return " none readable (/sys/class/infiniband/" + options_.device + "/ports/1/hw_counters)";
    }
    std::string text;
    for (const auto& [name, value] : counters) {
        const auto before = port_counters_.find(name);
        const std::uint64_t start = before == port_counters_.end() ? 0 : before->second;
        // Traffic volume is no news; retries, duplicates and errors are.
        const bool traffic = name.ends_with("_pkts") || name.ends_with("_bytes") ||
                             name == "rdma_sends" || name == "rdma_recvs" || name == "ack_deferred";
        if (value != start && !traffic) {
            text += " " + name + " +" + std::to_string(value - start);
        }
    }
    return text.empty() ? " no error or retransmission counted" : text;
}

void Stress::report_silent(std::uint64_t id, Operation operation, unsigned worker,
                           std::size_t offset, std::size_t length, std::uint64_t first_change) {
    const unsigned char* source = source_->data() + offset;
    const unsigned char* target = target_->data() + offset;
    std::size_t first_bad = 0;
    while (first_bad < length && source[first_bad] == target[first_bad]) {
        ++first_bad;
    }
    std::size_t differing = 0;
    for (std::size_t i = first_bad; i < length; ++i) {
        differing += source[i] != target[i] ? 1 : 0;
    }
    bool complete = true;
    const std::vector<ChangeRecord> changes = journal_.overlapping(
        first_change, journal_.next_sequence(), offset, offset + length, complete);
    std::array<bool, change_kind_count> seen{};
    for (const ChangeRecord& record : changes) {
        seen[static_cast<std::size_t>(record.kind)] = true;
    }
    for (std::size_t kind = 0; kind < change_kind_count; ++kind) {
        kinds_counters_[kind].silent.fetch_add(seen[kind] ? 1 : 0);
    }
    const std::size_t shown = std::min<std::size_t>(8, length - first_bad);
    std::ostringstream text;
    text << (options_.mode == Mode::Pinned ? "stale" : "SILENT ERROR") << ": transfer #" << id
         << " (" << name_of(operation) << ", worker " << worker << ", " << length
         << " bytes at buffer offset 0x" << std::hex << offset << std::dec
         << ") released with no change reported, but the target differs from the source from "
         << "byte " << first_bad << " of the range (buffer offset 0x" << std::hex
         << offset + first_bad << std::dec << ", target address "
         << format_address(reinterpret_cast<std::uintptr_t>(target + first_bad)) << "; "
         << differing << " bytes differ; target " << hex_bytes(target + first_bad, shown)
         << ", source " << hex_bytes(source + first_bad, shown) << ")\n    changes overlapping it "
         << "meanwhile" << (complete ? "" : " (older ones forgotten)") << ":";
    if (changes.empty()) {
        text << " none recorded";
    }
    for (const ChangeRecord& record : changes) {
        describe_change(text, record);
    }
    // A registration that went wrong during an earlier change (the zap
    // window) stays cached: show the last changes of the bad bytes before.
    const std::size_t bad_begin = (offset + first_bad) / page_size() * page_size();
    bool earlier_complete = true;
    std::vector<ChangeRecord> earlier =
        journal_.overlapping(first_change > 256 ? first_change - 256 : 0, first_change, bad_begin,
                             offset + length, earlier_complete);
    if (earlier.size() > 4) {
        earlier.erase(earlier.begin(), earlier.end() - 4);
    }
    text << "\n    the last changes of the differing bytes before it:";
    if (earlier.empty()) {
        text << " none in the 256 changes before";
    }
    for (const ChangeRecord& record : earlier) {
        describe_change(text, record);
    }
    const std::scoped_lock lock(report_mutex_);
    // The first ten in full as they happen; the first again in the summary.
    if (++silent_reported_ <= 10) {
        std::cerr << "odp-stress: " << text.str() << "\n" << std::flush;
    }
    if (first_silent_.empty()) {
        first_silent_ = text.str();
    }
}

// ------------------------------------------------------------------ changers

void Stress::note_change(ChangeKind kind, Side side, std::size_t offset, std::size_t length,
                         const ChangeResult& result, bool late) {
    KindCounters& counters = kinds_counters_[static_cast<std::size_t>(kind)];
    if (!result.applied) {
        counters.failed.fetch_add(1);
        counters.pages.fetch_add(result.pages);
        const std::scoped_lock lock(counters.mutex);
        if (counters.first_failure.empty()) {
            counters.first_failure = result.failure + " (" + std::string(name_of(side)) +
                                     " offset " + std::to_string(offset) + ", " +
                                     format_bytes(length) + ")";
        }
    } else {
        (late ? counters.late : counters.applied).fetch_add(1);
        counters.pages.fetch_add(result.pages);
        counters.whole_process.fetch_add(result.whole_process ? 1 : 0);
    }
    if (result.applied || result.zeroed) {
        journal_.add(ChangeRecord{0, kind, side, late, result.whole_process, result.zeroed, offset,
                                  offset + length});
    }
}

void Stress::change(unsigned index, std::latch& all_set_up) {
    const AlternateSignalStack signal_stack;
    all_set_up.arrive_and_wait();
    try {
        std::mt19937_64 random(mix(options_.seed) ^ mix(1000 + index));
        const std::size_t page = page_size();
        const std::size_t pages = options_.buffer_bytes / page;
        auto next = Clock::now();
        const auto interval = options_.change_rate > 0
                                  ? std::chrono::duration<double>(1.0 / options_.change_rate)
                                  : std::chrono::duration<double>(0);
        while (!stopping()) {
            if (options_.change_rate > 0) {
                next += std::chrono::duration_cast<Clock::duration>(interval);
                const auto now = Clock::now();
                if (next < now - std::chrono::seconds(1)) {
                    next = now;  // fell behind (changes slower than the rate): do not burst
                }
                std::this_thread::sleep_until(next);
            }
            const ChangeKind kind = pick_kind(kinds_, random);
            const Side side = random() % 2 == 0 ? Side::Source : Side::Target;
            std::size_t offset = 0;
            std::size_t length = 0;
            if (kind == ChangeKind::ThpSplit) {
                offset = random() % (options_.buffer_bytes / huge_page_size) * huge_page_size;
                length = huge_page_size;
            } else {
                const std::size_t count = 1 + random() % 16;
                offset = random() % (pages - count + 1) * page;
                length = count * page;
            }
            const auto locks = lock_slices(offset, offset + length);
            const ChangeResult result =
                apply_tracked(options_.workers + index, kind, side, offset, length, random, true);
            note_change(kind, side, offset, length, result, false);
        }
    } catch (const std::exception& error) {
        fail_run("changer " + std::to_string(index) + ": " + error.what());
    }
}

ChangeResult Stress::apply_tracked(std::size_t slot, ChangeKind kind, Side side, std::size_t offset,
                                   std::size_t length, std::mt19937_64& random,
                                   bool allow_whole_process) {
    ChangeInFlight& in_flight = in_flight_[slot];
    in_flight.begin.store(offset, std::memory_order_relaxed);
    in_flight.end.store(offset + length, std::memory_order_relaxed);
    in_flight.what.store(1 + static_cast<std::uint32_t>(kind) * 2 + (side == Side::Target ? 1 : 0),
                         std::memory_order_release);
    struct Done {
        ChangeInFlight& in_flight;
        ~Done() { in_flight.what.store(0, std::memory_order_release); }
    } const done{in_flight};
    return apply_change(kind, buffer(side), offset, length, random, allow_whole_process);
}

void Stress::write_page_history(SignalSafeText& out, std::size_t buffer_index,
                                std::size_t offset) noexcept {
    const Stress* const stress = crash_reported_;
    if (stress == nullptr) {
        return;
    }
    const Side side = buffer_index == 0 ? Side::Source : Side::Target;
    const std::size_t page = page_size();
    const std::size_t page_begin = offset / page * page;
    const unsigned owner = static_cast<unsigned>(
        std::min<std::size_t>(offset / stress->slice_, stress->options_.workers - 1));
    out.text("    in the slice of worker ").decimal(owner).text("\n");
    out.text("    changes in flight at the fault (read after it):\n");
    bool any = false;
    for (std::size_t slot = 0; slot < stress->options_.workers + stress->options_.changers;
         ++slot) {
        const ChangeInFlight& in_flight = stress->in_flight_[slot];
        const std::uint32_t what = in_flight.what.load(std::memory_order_acquire);
        if (what == 0) {
            continue;
        }
        any = true;
        const std::size_t begin = in_flight.begin.load(std::memory_order_relaxed);
        const std::size_t end = in_flight.end.load(std::memory_order_relaxed);
        const Side changed = (what - 1) % 2 == 0 ? Side::Source : Side::Target;
        const bool workers = slot < stress->options_.workers;
        out.text("      ")
            .text(workers ? "worker " : "changer ")
            .decimal(workers ? slot : slot - stress->options_.workers)
            .text(": ")
            .text(name_of(static_cast<ChangeKind>((what - 1) / 2)))
            .text(" of the ")
            .text(name_of(changed))
            .text(" [")
            .hex(begin)
            .text(", ")
            .hex(end)
            .text(")")
            .text(changed == side && begin < page_begin + page && page_begin < end
                      ? " (this page)\n"
                      : "\n");
    }
    if (!any) {
        out.text("      none\n");
    }
    out.text("    the last changes of this page (newest first):\n");
    stress->journal_.write_recent_unlocked(out, side, page_begin, page_begin + page, 6);
}

// ------------------------------------------------------------------ report

int Stress::report(double seconds) {
    const bool pinned = options_.mode == Mode::Pinned;
    std::uint64_t transfers = 0, changed = 0, verified = 0, silent = 0, late_zeroing = 0,
                  late_caught = 0;
    char line[256];
    std::cout << "\n"
              << "operation   transfers     changed    verified  "
              << (pinned ? "     stale" : "    silent") << "   retried  changed-but-intact\n";
    for (const Operation operation : all_operations) {
        const OperationCounters& c = operations_[static_cast<std::size_t>(operation)];
        std::snprintf(line, sizeof line, "%-9s %11s %11s %11s %10s %9s  %s\n",
                      std::string(name_of(operation)).c_str(), thousands(c.transfers).c_str(),
                      thousands(c.changed).c_str(), thousands(c.verified).c_str(),
                      thousands(c.silent).c_str(), thousands(c.retried).c_str(),
                      thousands(c.changed_intact).c_str());
        std::cout << line;
        transfers += c.transfers;
        changed += c.changed;
        verified += c.verified;
        silent += c.silent;
        late_zeroing += c.late_zeroing;
        late_caught += c.late_zeroing_caught;
    }
    std::uint64_t changes = 0;
    std::cout << "\nchange        applied      late    failed  " << (pinned ? "stale" : "silent")
              << " transfers it overlapped, notes\n";
    for (const ChangeKind kind : all_change_kinds) {
        KindCounters& c = kinds_counters_[static_cast<std::size_t>(kind)];
        if (std::find(kinds_.begin(), kinds_.end(), kind) == kinds_.end()) {
            continue;
        }
        changes += c.applied + c.late;
        std::string notes;
        if (kind == ChangeKind::Migrate) {
            notes = "pages moved " + thousands(c.pages) + ", whole process " +
                    thousands(c.whole_process) + " times";
        } else if (kind == ChangeKind::ThpSplit) {
            notes = thousands(c.pages) + " were huge pages when split";
        } else if (kind == ChangeKind::Mremap && c.pages != 0) {
            // Linux 6.17+: a span of mappings with a userfaultfd-armed one
            notes = thousands(c.pages) + " pages moved back after failures partway";
        }
        if (c.failed != 0) {
            notes += (notes.empty() ? "" : "; ") + std::string("first failure: ") + c.first_failure;
        }
        std::snprintf(line, sizeof line, "%-12s %9s %9s %9s %6s  ",
                      std::string(name_of(kind)).c_str(), thousands(c.applied).c_str(),
                      thousands(c.late).c_str(), thousands(c.failed).c_str(),
                      thousands(c.silent).c_str());
        std::cout << line << notes << "\n";
    }
    for (const std::string& skipped : skipped_) {
        std::cout << "skipped      " << skipped << "\n";
    }
    const Stats stats = device_->stats();
    std::cout << "\nlibrary: " << stats.chunk_faults << " chunk faults, "
              << stats.chunks_invalidated << " chunks invalidated (" << stats.stale_while_leased
              << " while leased), " << stats.evictions << " evictions, invalidations";
    for (std::size_t i = 0; i < invalidation_reason_count; ++i) {
        std::cout << " " << to_string(static_cast<InvalidationReason>(i)) << " "
                  << stats.invalidations[i];
    }
    const bool background =
        !pinned && (options_.fault_ahead != 0 || options_.prefetch_percent != 0);
    if (background) {
        std::cout << "\nbackground faults (fault-ahead " << options_.fault_ahead << ", prefetch in "
                  << options_.prefetch_percent << "% of transfers): " << stats.prefetches
                  << " prefetches, " << stats.chunks_faulted_ahead << " chunks registered, "
                  << stats.fault_ahead_hits << " of them used";
    }
    if (const auto mirror = Mirror::current()) {
        const MirrorStats mirror_stats = mirror->stats();
        std::cout << "\nmirror (" << to_string(mirror->kind()) << "): " << mirror_stats.events
                  << " events, " << mirror_stats.deliveries << " deliveries, "
                  << mirror_stats.overflows << " overflows";
    }
    std::cout << "\n"
              << options_.device << " counters (ACK timeout " << int{options_.ack_timeout}
              << "):" << port_counter_changes()
              << "\nlate changes that zeroed part of the range: " << late_zeroing << ", of which "
              << late_caught << " left the target different from the source\n";

    int status = 0;
    if (!fatal_.empty()) {
        std::cout << "verdict: RUN FAILED: " << fatal_ << "\n";
        status = 4;
    } else if (transfers == 0) {
        std::cout << "verdict: RUN FAILED: no transfer completed in " << seconds << " s\n";
        status = 4;
    } else if (pinned) {
        const bool changes_zero = std::any_of(kinds_.begin(), kinds_.end(), may_zero);
        if (changes_zero && silent == 0) {
            std::cout << "verdict: FAIL: the pinned control moved only current bytes although "
                         "pages were replaced under it: the check cannot tell stale from "
                         "current\n";
            status = 1;
        } else {
            std::cout << "verdict: PASS (control): " << silent << " of " << transfers
                      << " transfers through pinned MRs moved stale bytes, as expected"
                      << (changes_zero ? "" : " (no kind that replaces pages was enabled)") << "\n";
        }
    } else if (silent != 0) {
        std::cout << "verdict: FAIL: " << silent << " silent errors (transfers whose releases "
                  << "reported no change but whose target differs from the source); the first:\n  "
                  << first_silent_ << "\n";
        status = 1;
    } else if (background && stats.chunks_faulted_ahead < 2) {
        std::cout << "verdict: FAIL: background faults were asked for but the background "
                     "thread registered "
                  << stats.chunks_faulted_ahead
                  << " chunks, the setup's included: the run did not test them\n";
        status = 1;
    } else {
        std::cout << "verdict: PASS: " << verified << " transfers verified, " << changed
                  << " reported a change, no silent error\n";
    }
    const auto ops = [&](Operation operation) {
        return thousands(operations_[static_cast<std::size_t>(operation)].transfers);
    };
    std::snprintf(line, sizeof line, "%.0f", seconds);
    std::cout << "ROW | " << kernel_ << " | " << mode_name() << " | " << source_name() << " | "
              << thousands(transfers) << " | " << ops(Operation::Write) << " | "
              << ops(Operation::Read) << " | " << ops(Operation::Send) << " | "
              << thousands(changed) << " | " << thousands(verified) << " | " << thousands(silent)
              << " | " << thousands(changes) << " | " << line << " |\n"
              << std::flush;
    return status;
}

}  // namespace
}  // namespace odp::stress

int main(int argc, char** argv) {
    odp::stress::Stress stress(odp::stress::parse_options(argc, argv));
    return stress.run();
}
