#include "compare.hpp"

#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iomanip>
#include <iostream>
#include <map>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <set>
#include <span>
#include <sstream>
#include <thread>

#include "sweep.hpp"
#include "traffic.hpp"

namespace odp_perf {
namespace {

constexpr odp::Access kBufferAccess =
    odp::Access::LocalWrite | odp::Access::RemoteWrite | odp::Access::RemoteRead;
// Counted cold starts per mode of the first touch: one is a millisecond or
// two and swings by a factor of two in a guest, so a run pairs many.
constexpr int kFirstTouchColdStarts = 9;

// Rounds of the chunk-fault section per --rounds: a round takes about 0.1 s
// in a guest, and its ratio swings from 1.1 to 2.3 with the emulator's phases
// (one vCPU slower than the other for seconds), so many are needed.
constexpr std::uint32_t kFaultRoundsPerRound = 12;

std::string kernel_release() {
    utsname names{};
    if (uname(&names) != 0) {
        return "unknown";
    }
    return names.release;
}

// "[ 3/40] emulated write 65536 B" on a terminal, nothing otherwise.
class Progress {
  public:
    explicit Progress(std::size_t total) : total_(total), enabled_(isatty(STDERR_FILENO) == 1) {}
    ~Progress() {
        if (enabled_ && step_ > 0) {
            std::cerr << "\r\033[K" << std::flush;
        }
    }
    Progress(const Progress&) = delete;
    Progress& operator=(const Progress&) = delete;
    void step(const std::string& what) {
        ++step_;
        if (enabled_) {
            std::cerr << "\r\033[K[" << std::setw(3) << step_ << "/" << total_ << "] " << what
                      << std::flush;
        }
    }

  private:
    std::size_t total_;
    std::size_t step_ = 0;
    bool enabled_;
};

std::vector<std::uint64_t> registration_sizes(std::uint64_t max) {
    std::vector<std::uint64_t> sizes;
    for (std::uint64_t size = 4096; size < max; size *= 4) {
        sizes.push_back(size);
    }
    sizes.push_back(max);
    return sizes;
}

const Row* find(const std::vector<Row>& rows, const std::string& mode, const std::string& test,
                std::uint64_t size) {
    for (const Row& row : rows) {
        if (row.mode == mode && row.test == test && row.size == size && row.error.empty()) {
            return &row;
        }
    }
    return nullptr;
}

// The first row of a mode and test, whatever its size.
const Row* find_test(const std::vector<Row>& rows, const std::string& mode,
                     const std::string& test) {
    const auto found = std::find_if(rows.begin(), rows.end(), [&](const Row& row) {
        return row.mode == mode && row.test == test;
    });
    return found == rows.end() ? nullptr : &*found;
}

// A row's operands for a ratio; a row that failed has none.
RatioOperand touch_of(const Row* row) {
    return row != nullptr && row->error.empty()
               ? RatioOperand{row->first_touch_us, row->first_touch_us_samples}
               : RatioOperand{};
}
RatioOperand bandwidth_of(const Row* row) {
    return row != nullptr && row->error.empty() ? RatioOperand{row->bw_MBps, row->round_bw_MBps}
                                                : RatioOperand{};
}
// Why a goal over these rows has no value: the first one's error.
std::string failure_note(std::initializer_list<const Row*> rows) {
    for (const Row* row : rows) {
        if (row != nullptr && !row->error.empty()) {
            return row->mode + " " + row->test + " failed: " + row->error;
        }
    }
    return {};
}

std::string fixed(double value, int precision) {
    std::ostringstream out;
    out << std::fixed << std::setprecision(precision) << value;
    return out.str();
}

std::string optional_number(const std::optional<double>& value, int precision = 2) {
    return value ? fixed(*value, precision) : "-";
}

std::string json_escape(const std::string& text) {
    std::string out;
    for (const char c : text) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char buffer[8];
                    std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
                    out += buffer;
                } else {
                    out += c;
                }
        }
    }
    return out;
}

std::string json_number(const std::optional<double>& value) {
    if (!value || !std::isfinite(*value)) {
        return "null";
    }
    std::ostringstream out;
    out << std::setprecision(6) << *value;
    return out.str();
}

std::string json_array(const std::vector<double>& values) {
    std::string out = "[";
    for (std::size_t i = 0; i < values.size(); ++i) {
        out += (i ? ", " : "") + json_number(values[i]);
    }
    return out + "]";
}

// {"key": "value", ...}
std::string json_object(const std::map<std::string, std::string>& entries) {
    std::string out = "{";
    for (const auto& [key, value] : entries) {
        out += (out.size() > 1 ? ", \"" : "\"") + json_escape(key) + "\": \"" + json_escape(value) +
               "\"";
    }
    return out + "}";
}

// "87.5% of 4": how sure an interval is, and of how many samples.
std::string confidence_text(const Interval& interval) {
    const double percent = interval.confidence * 100;
    return fixed(percent, percent < 99.95 && percent != std::floor(percent) ? 1 : 0) + "% of " +
           std::to_string(interval.samples);
}

// A goal on the ratio numerator / denominator of two rows' values, with the
// confidence interval of its paired samples.
Goal ratio_goal(std::string name, const RatioOperand& numerator, const RatioOperand& denominator,
                std::string target, const std::function<bool(double)>& met, std::string note = {}) {
    Goal goal{std::move(name), estimate_ratio(numerator, denominator), std::move(target),
              Verdict::NotMeasured, std::move(note)};
    if (goal.measured) {
        goal.verdict = met ? judge(goal.measured, met) : Verdict::Reported;
        const std::optional<Interval>& interval = goal.measured->interval;
        if (goal.note.empty() && !interval) {
            goal.note = "one round: no interval (run more --rounds)";
        } else if (goal.note.empty() && met && interval->confidence < kVerdictConfidence) {
            goal.note = "too few rounds for a verdict (" + confidence_text(*interval) +
                        "; at least 5 needed: run more --rounds)";
        }
    } else if (goal.note.empty()) {
        goal.note = "not measured in this run";
    }
    return goal;
}

// "0.981 [0.950, 1.012]": a ratio and its confidence interval.
std::string ratio_text(const std::optional<RatioEstimate>& estimate, int precision = 3) {
    if (!estimate) {
        return "-";
    }
    std::string text = fixed(estimate->ratio, precision);
    if (const std::optional<Interval>& interval = estimate->interval) {
        text +=
            " [" + fixed(interval->low, precision) + ", " + fixed(interval->high, precision) + "]";
    }
    return text;
}

// The ratio of a row's value to the same value of pinned's row of the same
// test and size (none for pinned itself, or without a pinned row).
std::optional<RatioEstimate> to_pinned(const std::vector<Row>& rows, const Row& row,
                                       std::optional<double> Row::*value,
                                       const std::vector<double> Row::*samples) {
    // A working-set row's pinned reference is a set of the budget's size.
    const Row* pinned =
        find(rows, "pinned", row.test,
             is_working_set_test(row.test) ? row.budget_bytes.value_or(0) : row.size);
    if (pinned == nullptr || &row == pinned) {
        return std::nullopt;
    }
    return estimate_ratio({row.*value, row.*samples}, {pinned->*value, pinned->*samples});
}

std::string json_estimate(const std::optional<RatioEstimate>& estimate) {
    if (!estimate) {
        return "null";
    }
    const Interval* interval = estimate->interval ? &*estimate->interval : nullptr;
    return "{\"ratio\": " + json_number(estimate->ratio) +
           ", \"low\": " + json_number(interval ? std::optional(interval->low) : std::nullopt) +
           ", \"high\": " + json_number(interval ? std::optional(interval->high) : std::nullopt) +
           ", \"confidence\": " +
           json_number(interval ? std::optional(interval->confidence) : std::nullopt) +
           ", \"samples\": " + std::to_string(interval ? interval->samples : 0) + "}";
}

// The error bar of a plotted value: from its lowest to its highest sample
// (the value itself without samples).
std::pair<double, double> spread_of(double value, const std::vector<double>& samples) {
    if (samples.empty()) {
        return {value, value};
    }
    const auto [low, high] = std::minmax_element(samples.begin(), samples.end());
    return {*low, *high};
}

}  // namespace

bool is_working_set_test(const std::string& test) {
    return std::find_if(std::begin(kWorkingSetTests), std::end(kWorkingSetTests),
                        [&](const char* name) { return test == name; }) !=
           std::end(kWorkingSetTests);
}

Row row_from_working_set_rounds(const std::vector<Row>& rounds) {
    Row row = rounds.at(0);
    row.iterations = 0;
    row.faults = 0;
    row.invalidations = 0;
    row.pinned_bytes_peak = 0;
    row.round_bw_MBps.clear();
    double bytes = 0;
    double seconds = 0;
    double hits = 0;
    for (const Row& round : rounds) {
        if (!round.error.empty()) {
            row = round;  // its first error is the row
            row.round_bw_MBps.clear();
            return row;
        }
        const double round_bytes = static_cast<double>(round.iterations) * 65536.0;
        if (round.bw_MBps && *round.bw_MBps > 0) {
            bytes += round_bytes;
            seconds += round_bytes / (*round.bw_MBps * 1048576.0);
        }
        row.round_bw_MBps.push_back(round.bw_MBps.value_or(0));
        hits += round.hit_rate.value_or(0) * static_cast<double>(round.iterations);
        row.iterations += round.iterations;
        row.faults += round.faults;
        row.invalidations += round.invalidations;
        row.pinned_bytes_peak = std::max(row.pinned_bytes_peak, round.pinned_bytes_peak);
    }
    row.bw_MBps = seconds > 0 ? std::optional(bytes / 1048576.0 / seconds) : std::nullopt;
    row.hit_rate = row.iterations > 0 ? std::optional(hits / static_cast<double>(row.iterations))
                                      : std::nullopt;
    return row;
}

Row row_from_rounds(const std::vector<ClientResult>& rounds, oob::TestKind test,
                    std::uint64_t size) {
    Row row;
    row.mode = std::string(odp::to_string(rounds.front().local_mode));
    row.server_mode = std::string(odp::to_string(rounds.front().server_mode));
    row.test = to_string(test);
    row.size = size;
    std::uint64_t bytes = 0;
    double seconds = 0;
    std::vector<double> samples;
    for (const ClientResult& round : rounds) {
        if (round.seconds > 0) {
            row.round_bw_MBps.push_back(bandwidth_MBps(round.bytes, round.seconds));
        }
        if (!round.latency_samples_us.empty()) {
            row.round_lat_us_p50.push_back(summarize(round.latency_samples_us).p50_us);
        }
        row.iterations += round.operations;
        bytes += round.bytes;
        seconds += round.seconds;
        samples.insert(samples.end(), round.latency_samples_us.begin(),
                       round.latency_samples_us.end());
        row.pinned_bytes_peak =
            std::max({row.pinned_bytes_peak, round.local_stats.peak_pinned_bytes,
                      round.server_report.pinned_bytes_peak});
        row.faults += round.local_stats.chunk_faults + round.server_report.faults;
        row.invalidations +=
            round.local_stats.total_invalidations() + round.server_report.invalidations;
        row.verified_bytes += round.verified_bytes;
        row.mismatched_bytes += round.mismatched_bytes;
    }
    row.bw_MBps = bandwidth_MBps(bytes, seconds);
    if (!samples.empty()) {
        const LatencySummary latency = summarize(std::move(samples));
        row.lat_us_p50 = latency.p50_us;
        row.lat_us_p99 = latency.p99_us;
    }
    return row;
}

std::vector<ModeVariant> mode_variants(const std::vector<odp::Mode>& modes,
                                       const std::vector<odp::MonitorKind>& sources) {
    std::vector<ModeVariant> variants;
    for (const odp::Mode mode : modes) {
        const std::string name(odp::to_string(mode));
        if (mode != odp::Mode::Emulated) {
            variants.push_back({mode, odp::MonitorKind::Auto, name});
            continue;
        }
        if (sources.empty()) {
            variants.push_back({mode, odp::MonitorKind::Auto, name});
        }
        for (std::size_t i = 0; i < sources.size(); ++i) {
            variants.push_back({mode, sources[i],
                                i == 0 ? name : name + "/" + std::string(to_string(sources[i]))});
        }
    }
    return variants;
}

SourceKeeper::SourceKeeper(odp::Device& device, std::chrono::milliseconds settle)
    : device_(device), settle_(settle), buffer_(page_size(), page_size(), true) {}

void SourceKeeper::use(odp::MonitorKind source) {
    if (region_ && source == source_) {
        return;
    }
    region_ = odp::Region();
    // The Mirror goes when its last region does; until then a region asking
    // for another source would be refused (EBUSY).
    const auto deadline = std::chrono::steady_clock::now() + settle_;
    while (odp::Mirror::current() != nullptr) {
        if (std::chrono::steady_clock::now() >= deadline) {
            odp::throw_error(
                EBUSY, "cannot switch the emulated mode to the " + std::string(to_string(source)) +
                           " source: a region of the " + std::string(to_string(source_)) +
                           " source is still registered " + std::to_string(settle_.count()) +
                           " ms after its measurement ended (a leaked region?)");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    odp::RegionOptions options;
    options.mode = odp::Mode::Emulated;
    options.monitor = source;
    region_ = device_.register_region(buffer_.data(), buffer_.size(), kBufferAccess, options);
    source_ = source;
}

std::string SourceKeeper::monitor() const {
    return region_ ? region_.monitor() : std::string();
}

std::vector<Goal> evaluate_goals(const std::vector<Row>& rows) {
    std::vector<Goal> goals;
    // Registration of a populated 1 GiB buffer (the goal's size), else of the
    // largest measured in both modes.
    constexpr std::uint64_t goal_size = std::uint64_t{1} << 30;
    std::uint64_t reg_size = 0;
    for (const Row& row : rows) {
        if (row.test == "register" && row.error.empty() && row.mode == "emulated" &&
            find(rows, "pinned", "register", row.size) != nullptr && reg_size != goal_size) {
            reg_size = row.size == goal_size ? goal_size : std::max(reg_size, row.size);
        }
    }
    auto reg = [&](const char* mode) -> RatioOperand {
        const Row* row = find(rows, mode, "register", reg_size);
        return row ? RatioOperand{row->reg_us, row->reg_us_samples} : RatioOperand{};
    };
    const std::string reg_label = odp::format_bytes(reg_size);
    goals.push_back(ratio_goal("register populated " + reg_label + ": pinned time / emulated time",
                               reg("pinned"), reg("emulated"), ">= 100",
                               [](double r) { return r >= 100; }));
    if (find(rows, "native", "register", reg_size) != nullptr) {
        goals.push_back(
            ratio_goal("register populated " + reg_label + ": pinned time / native time",
                       reg("pinned"), reg("native"), "report (about 3 in a trial)", nullptr));
    }
    auto bw = [&](const char* mode, const char* test, std::uint64_t size) -> RatioOperand {
        const Row* row = find(rows, mode, test, size);
        return row ? RatioOperand{row->bw_MBps, row->round_bw_MBps} : RatioOperand{};
    };
    auto p50 = [&](const char* mode, const char* test, std::uint64_t size) -> RatioOperand {
        const Row* row = find(rows, mode, test, size);
        return row ? RatioOperand{row->lat_us_p50, row->round_lat_us_p50} : RatioOperand{};
    };
    goals.push_back(ratio_goal("warm RDMA WRITE bandwidth 64 KiB: emulated / pinned",
                               bw("emulated", "write", 65536), bw("pinned", "write", 65536),
                               ">= 0.97", [](double r) { return r >= 0.97; }));
    goals.push_back(ratio_goal("RDMA WRITE latency p50 8 B: emulated / pinned",
                               p50("emulated", "write", 8), p50("pinned", "write", 8), "<= 1.05",
                               [](double r) { return r <= 1.05; }));
    // First touch of an emulated chunk (the cold translate that registers it)
    // against pinning (registering) the same bytes; the i-th cold start of
    // each mode pair up.
    RatioOperand emulated_touch;
    RatioOperand pinned_registration;
    for (const Row& row : rows) {
        if (row.test == "first_touch" && row.error.empty()) {
            if (row.mode == "emulated") {
                emulated_touch = {row.first_touch_us, row.first_touch_us_samples};
            } else if (row.mode == "pinned") {
                pinned_registration = {row.reg_us, row.reg_us_samples};
            }
        }
    }
    goals.push_back(ratio_goal(
        "first touch of a 2 MiB emulated chunk (cold translate) / pinned registration of 2 MiB",
        emulated_touch, pinned_registration, "<= 1.2", [](double r) { return r <= 1.2; }));
    // Issue 11's: only where the fault section ran (files of older runs lack it).
    const Row* one_thread = find_test(rows, "emulated", "faults_1_thread");
    const Row* two_threads = find_test(rows, "emulated", "faults_2_threads");
    if (one_thread != nullptr && two_threads != nullptr) {
        // Throughput is faults per second: time per fault of 1 over that of 2.
        goals.push_back(ratio_goal(
            "chunk faults of distinct 2 MiB chunks: throughput of 2 threads / 1 thread",
            touch_of(one_thread), touch_of(two_threads), ">= 1.5",
            [](double r) { return r >= 1.5; }, failure_note({one_thread, two_threads})));
    }
    const Row* pinned_one = find_test(rows, "pinned", "faults_1_thread");
    const Row* pinned_two = find_test(rows, "pinned", "faults_2_threads");
    if (pinned_one != nullptr && pinned_two != nullptr) {
        goals.push_back(ratio_goal(
            "the kernel's own: pinned 2 MiB registrations, throughput of 2 threads / 1 thread",
            touch_of(pinned_one), touch_of(pinned_two), "report", nullptr,
            failure_note({pinned_one, pinned_two})));
    }
    const Row* first_pass = find_test(rows, "emulated", "first_pass");
    const Row* warm_pass = find_test(rows, "emulated", "warm_pass");
    const Row* demand_pass = find_test(rows, "emulated", "first_pass_demand");
    if (first_pass != nullptr && warm_pass != nullptr && demand_pass != nullptr) {
        const std::string stream = "streaming 64 KiB WRITE over a fresh " +
                                   odp::format_bytes(first_pass->size) + " buffer";
        goals.push_back(ratio_goal(
            "first pass of a " + stream + ", with fault-ahead: bandwidth / warm pass",
            bandwidth_of(first_pass), bandwidth_of(warm_pass), ">= 0.9",
            [](double r) { return r >= 0.9; }, failure_note({first_pass, warm_pass})));
        goals.push_back(ratio_goal("the same first pass without fault-ahead / warm pass",
                                   bandwidth_of(demand_pass), bandwidth_of(warm_pass), "report",
                                   nullptr, failure_note({demand_pass, warm_pass})));
        goals.push_back(ratio_goal(
            "cold translate of a 2 MiB chunk in that first pass, with fault-ahead / pinned "
            "registration of 2 MiB",
            touch_of(first_pass), pinned_registration, "<= 1.0", [](double r) { return r <= 1.0; },
            failure_note({first_pass})));
    }
    if (find(rows, "native", "write", 65536) != nullptr) {
        goals.push_back(ratio_goal("warm RDMA WRITE bandwidth 64 KiB: emulated / native",
                                   bw("emulated", "write", 65536), bw("native", "write", 65536),
                                   ">= 1.0", [](double r) { return r >= 1.0; }));
    }
    return goals;
}

CompareResult run_compare(const CompareConfig& config) {
    CompareResult result;
    result.kernel = kernel_release();
    result.fault_ahead = config.fault_ahead;
    const std::shared_ptr<odp::Device> device = odp::Device::open({config.device, std::nullopt});
    result.device = std::string(device->name());
    std::vector<odp::MonitorKind> sources = config.sources;
    // The module where this process may open it (Auto would pick it), and
    // userfaultfd beside it where it can be coherent (not before Linux 5.19).
    if (sources.empty() && ::access("/dev/odp_mirror", R_OK | W_OK) == 0) {
        sources = {odp::MonitorKind::Module};
        if (const std::string why = odp::userfaultfd_coherence_problem(); why.empty()) {
            sources.push_back(odp::MonitorKind::Userfaultfd);
        } else {
            result.absent_modes["emulated/userfaultfd"] = why;
        }
    }
    const std::vector<ModeVariant> variants =
        mode_variants(supported_modes(*device, kBufferAccess), sources);
    if (const std::string why = native_absence(*device, kBufferAccess); !why.empty()) {
        result.absent_modes["native"] = why;
    }
    for (const ModeVariant& variant : variants) {
        result.modes.push_back(variant.label);
    }

    // The server runs in this process on its own thread (and its own Device),
    // reached over TCP loopback; RDMA goes through the device's own loopback.
    // Through RDMA CM both go to the device's own address: the server's
    // listener waits at the address the client reached it at.
    const oob::Connection connection = choose_connection(config.cm, is_iwarp(*device));
    result.connection = to_string(connection);
    const bool cm = connection == oob::Connection::RdmaCm;
    const std::string host =
        cm ? odp::verbs::cm_device_address(result.device, std::chrono::seconds(5))
           : std::string("127.0.0.1");
    std::atomic<bool> stop{false};
    std::promise<std::uint16_t> listening;
    std::thread server([&] {
        bool announced = false;
        try {
            ServerConfig server_config;
            server_config.device = config.device;
            server_config.port = 0;
            server_config.quiet = true;
            server_config.max_buffer_bytes = std::max<std::uint64_t>(config.working_set, 64 << 20);
            server_config.fault_ahead = config.fault_ahead;
            run_server(server_config, stop, [&](std::uint16_t port) {
                announced = true;
                listening.set_value(port);
            });
        } catch (...) {
            if (!announced) {
                listening.set_exception(std::current_exception());
            } else {
                std::cerr << "odp-perf compare: the in-process server failed\n";
            }
        }
    });
    struct ServerStopper {
        std::atomic<bool>& stop;
        std::thread& thread;
        ~ServerStopper() {
            stop = true;
            thread.join();
        }
    } stopper{stop, server};
    const Peer peer{host, listening.get_future().get(), cm};

    result.native_check = check_native_odp_data(*device);
    const auto wanted = [&](const std::string& section) {
        return !config.only || config.only->contains(section);
    };
    const std::vector<oob::TestKind> tests =
        wanted("traffic") ? std::vector<oob::TestKind>{oob::TestKind::Write, oob::TestKind::Read,
                                                       oob::TestKind::Send}
                          : std::vector<oob::TestKind>{};
    const std::vector<std::uint64_t> reg_sizes =
        wanted("register") ? registration_sizes(config.reg_max) : std::vector<std::uint64_t>{};
    std::vector<std::uint64_t> sizes = config.sizes;
    if (config.sweep) {
        const Sweep sweep = sweep_sizes(device->max_pinned_bytes());
        sizes = sweep.sizes;
        if (sweep.left_out_from != 0) {
            result.sizes_note = "sizes from " + odp::format_bytes(sweep.left_out_from) +
                                " left out: above half the pinned budget of " +
                                odp::format_bytes(device->max_pinned_bytes()) + " (" +
                                device->budget_source() + ")";
        }
    }
    const std::uint32_t rounds = std::max<std::uint32_t>(config.rounds, 1);
    const bool working_sets = config.only ? config.only->contains("working-set")
                                          : config.working_set_sweep || config.sweep;
    std::vector<ModeVariant> working_set_variants;
    std::size_t working_set_points = 0;
    for (const ModeVariant& variant : variants) {
        if (working_sets && variant.mode != odp::Mode::Native) {
            working_set_variants.push_back(variant);
            working_set_points +=
                variant.mode == odp::Mode::Pinned ? 1 : config.working_set_multiples.size();
        }
    }
    const auto emulated_variants = static_cast<std::size_t>(std::count_if(
        variants.begin(), variants.end(),
        [](const ModeVariant& variant) { return variant.mode == odp::Mode::Emulated; }));
    const std::size_t per_variant_steps =
        (wanted("first-touch") ? 2 : 0) + (wanted("budget") ? 1 : 0) + (wanted("remap") ? 1 : 0);
    Progress progress(variants.size() * (tests.size() * sizes.size() * rounds + reg_sizes.size() +
                                         per_variant_steps) +
                      (wanted("faults") ? 2 * emulated_variants : 0) +
                      working_set_points * std::size(kWorkingSetTests) * rounds);

    // Before each emulated measurement its source becomes the process's (a
    // switch takes milliseconds); the other modes use no source.
    SourceKeeper keeper(*device);
    const auto prepare = [&](const ModeVariant& variant) {
        if (variant.mode == odp::Mode::Emulated) {
            keeper.use(variant.source);
            result.monitors.try_emplace(variant.label, keeper.monitor());
        }
    };
    // A row of a further source's emulated column carries its label.
    const auto labelled = [](Row row, const ModeVariant& variant) {
        if (row.server_mode == row.mode) {
            row.server_mode = variant.label;
        }
        row.mode = variant.label;
        return row;
    };
    for (const ModeVariant& variant : variants) {
        prepare(variant);
    }
    if (const auto first = result.monitors.find("emulated"); first != result.monitors.end()) {
        result.emulated_monitor = first->second;
    }

    // Modes take turns at each test and size, in rounds that each run a part
    // of the iterations: a disturbance of the machine (other guests, a busy
    // host) lasting seconds then falls on every mode alike instead of
    // deciding one mode's numbers.
    for (const oob::TestKind test : tests) {
        for (const std::uint64_t size : sizes) {
            // Large messages: fewer iterations (about 256 MiB per bandwidth
            // run, 32 MiB of latency samples), never under 16.
            const std::uint64_t iterations =
                std::min(config.bw_iterations, std::max<std::uint64_t>((256ULL << 20) / size, 16));
            const std::uint64_t latency_iterations =
                std::min(config.lat_iterations, std::max<std::uint64_t>((32ULL << 20) / size, 16));
            const std::uint32_t depth =
                depth_within_budget(device->max_pinned_bytes(), size, config.depth);
            std::map<std::string, std::vector<ClientResult>> runs;
            std::map<std::string, std::string> errors;
            for (std::uint32_t round = 0; round < rounds; ++round) {
                for (const ModeVariant& variant : variants) {
                    progress.step(variant.label + " " + to_string(test) + " " +
                                  std::to_string(size) + " B, round " + std::to_string(round + 1) +
                                  "/" + std::to_string(rounds));
                    if (errors.contains(variant.label)) {
                        continue;  // its first error is the row
                    }
                    ClientSpec spec;
                    spec.device = config.device;
                    spec.host = peer.host;
                    spec.port = peer.port;
                    spec.cm = peer.cm;
                    spec.test = test;
                    spec.size = size;
                    spec.iterations = (iterations + rounds - 1) / rounds;
                    spec.latency_iterations = (latency_iterations + rounds - 1) / rounds;
                    spec.depth = depth;
                    spec.mode = variant.mode;
                    spec.peer_mode = variant.mode;
                    spec.fault_ahead = config.fault_ahead;
                    try {
                        prepare(variant);
                        runs[variant.label].push_back(run_client_test(*device, spec));
                    } catch (const std::exception& error) {
                        errors[variant.label] = error.what();
                    }
                }
            }
            for (const ModeVariant& variant : variants) {
                Row row;
                if (const auto error = errors.find(variant.label); error != errors.end()) {
                    row.mode = variant.label;
                    row.server_mode = row.mode;
                    row.test = to_string(test);
                    row.size = size;
                    row.error = error->second;
                } else {
                    row = labelled(row_from_rounds(runs.at(variant.label), test, size), variant);
                }
                row.depth = depth;
                result.rows.push_back(std::move(row));
            }
        }
    }
    for (const std::uint64_t size : reg_sizes) {
        for (const ModeVariant& variant : variants) {
            progress.step(variant.label + " register " + odp::format_bytes(size));
            prepare(variant);
            for (Row& row : measure_registration(*device, variant.mode, {size})) {
                result.rows.push_back(labelled(std::move(row), variant));
            }
        }
    }
    if (wanted("first-touch")) {
        // Modes take turns at each cold start, as at the traffic tests'
        // rounds: the goal pairs cold start i of emulated with that of
        // pinned, so they are taken together (apart, a slow minute of the
        // guest decided a mode's numbers). The first cold start of each mode
        // is not counted: it pays the first use of its code paths (in a guest,
        // the emulator's translation of them; pinned's took 2 to 4 times the
        // later ones). The last one also writes the buffer.
        for (const bool prefetch : {false, true}) {
            std::vector<FirstTouch> touches;
            for (const ModeVariant& variant : variants) {
                touches.emplace_back(variant.mode, 2 << 20, prefetch);
            }
            for (int cold_start = 0; cold_start <= kFirstTouchColdStarts; ++cold_start) {
                for (std::size_t i = 0; i < variants.size(); ++i) {
                    prepare(variants[i]);
                    touches[i].cold_start(*device, peer, cold_start > 0,
                                          cold_start == kFirstTouchColdStarts);
                }
            }
            for (std::size_t i = 0; i < variants.size(); ++i) {
                progress.step(variants[i].label + (prefetch ? " prefetch" : " first touch"));
                result.rows.push_back(labelled(std::move(touches[i]).finish(), variants[i]));
            }
        }
    }
    for (const ModeVariant& variant : variants) {
        prepare(variant);
        if (wanted("budget")) {
            progress.step(variant.label + " working set over budget");
            WorkingSetSpec budget;
            budget.budget = config.budget;
            budget.working_set = config.working_set;
            budget.iterations = config.budget_iterations;
            budget.fault_ahead = config.fault_ahead;
            result.rows.push_back(
                labelled(measure_budget(config.device, peer, variant.mode, budget), variant));
        }
        if (wanted("remap")) {
            progress.step(variant.label + " remap under traffic");
            result.rows.push_back(
                labelled(measure_remap(*device, peer, variant.mode, config.remap_rounds), variant));
        }
    }
    // Chunk faults in parallel and fault-ahead: emulated columns (the other
    // modes register nothing on first use); pinned's 2 MiB registrations by 1
    // and 2 threads are the kernel's own scaling, the reference of the faults.
    StreamSpec stream;
    stream.size = config.stream_size;
    stream.fault_ahead = stream_fault_ahead(config.fault_ahead);
    stream.rounds = rounds;
    for (const ModeVariant& variant : variants) {
        const bool pinned = variant.mode == odp::Mode::Pinned;
        if ((variant.mode != odp::Mode::Emulated && !pinned) || !wanted("faults")) {
            continue;
        }
        prepare(variant);
        progress.step(variant.label + (pinned ? " 2 MiB registrations" : " chunk faults") +
                      " of 1 and 2 threads");
        std::vector<Row> fault_rows;
        try {
            const std::shared_ptr<odp::Device> faulting =
                odp::Device::open({config.device, config.parallel_fault_chunks *
                                                      region_options(variant.mode, 0).chunk_size});
            fault_rows =
                measure_parallel_faults(*faulting, variant.mode, config.parallel_fault_chunks,
                                        kFaultRoundsPerRound * rounds);
        } catch (const std::exception& error) {
            for (const char* test : kFaultThreadTests) {
                Row row;
                row.mode = variant.label;
                row.test = test;
                row.error = error.what();
                fault_rows.push_back(std::move(row));
            }
        }
        for (Row& row : fault_rows) {
            result.rows.push_back(labelled(std::move(row), variant));
        }
        if (pinned) {
            continue;
        }
        progress.step(variant.label + " streaming first pass against warm");
        for (Row& row : measure_stream_passes(config.device, peer, variant.mode, stream)) {
            result.rows.push_back(labelled(std::move(row), variant));
        }
    }
    if (working_sets) {
        // Pinned (a set of the budget's size) and each emulated column over
        // every multiple take turns in each round, as the traffic tests do.
        struct Point {
            const char* test;
            const ModeVariant* variant;
            std::uint64_t working_set;
            std::vector<Row> rounds;
        };
        std::vector<Point> points;
        for (const char* test : kWorkingSetTests) {
            for (const ModeVariant& variant : working_set_variants) {
                for (const std::uint64_t multiple : variant.mode == odp::Mode::Pinned
                                                        ? std::vector<std::uint64_t>{1}
                                                        : config.working_set_multiples) {
                    points.push_back({test, &variant, multiple * config.budget, {}});
                }
            }
        }
        for (std::uint32_t round = 0; round < rounds; ++round) {
            for (Point& point : points) {
                progress.step(point.variant->label + " " + point.test + " " +
                              odp::format_bytes(point.working_set) + ", round " +
                              std::to_string(round + 1) + "/" + std::to_string(rounds));
                WorkingSetSpec spec;
                spec.test = point.test;
                spec.budget = config.budget;
                spec.working_set = point.working_set;
                spec.random = spec.test == "working_set_random";
                spec.warm_up = 2 * spec.working_set / (64 * 1024);  // two laps
                spec.iterations = config.working_set_iterations;
                spec.fault_ahead = config.fault_ahead;
                prepare(*point.variant);
                point.rounds.push_back(
                    labelled(measure_budget(config.device, peer, point.variant->mode, spec),
                             *point.variant));
            }
        }
        for (const Point& point : points) {
            result.rows.push_back(row_from_working_set_rounds(point.rounds));
        }
    }
    result.goals = evaluate_goals(result.rows);
    return result;
}

namespace {

// The working-set section: per access pattern, pinned over a set that fits
// and each emulated column over every multiple of the budget.
void print_working_sets(const CompareResult& result, int mode_width, std::ostream& out) {
    bool header = false;
    for (const char* test : kWorkingSetTests) {
        for (const Row& row : result.rows) {
            if (row.test != test) {
                continue;
            }
            if (!header) {
                header = true;
                out << "\nWorking set against the pinned budget of "
                    << odp::format_bytes(row.budget_bytes.value_or(0))
                    << ": 64 KiB WRITEs after two laps of the set\n (hit rate: lookups found "
                       "registered; ratio: bandwidth against pinned's over a set of the\n "
                       "budget's size, same pattern, rounds paired)\n"
                    << std::left << std::setw(12) << "pattern" << std::setw(mode_width) << "mode"
                    << std::right << std::setw(10) << "set" << std::setw(10) << "x budget"
                    << std::setw(10) << "hit rate" << std::setw(14) << "chunk faults"
                    << std::setw(13) << "BW avg[MB/s]" << std::setw(24) << "ratio [interval]"
                    << "\n";
            }
            const std::string pattern = row.test.substr(std::string("working_set_").size());
            const std::uint64_t budget = row.budget_bytes.value_or(0);
            out << std::left << std::setw(12) << pattern << std::setw(mode_width) << row.mode
                << std::right << std::setw(10) << odp::format_bytes(row.size) << std::setw(10)
                << (budget != 0
                        ? fixed(static_cast<double>(row.size) / static_cast<double>(budget), 0) +
                              "x"
                        : "-");
            if (!row.error.empty()) {
                out << "  failed: " << row.error << "\n";
                continue;
            }
            out << std::setw(9) << fixed(row.hit_rate.value_or(0) * 100, 2) << "%" << std::setw(14)
                << row.faults << std::setw(13) << optional_number(row.bw_MBps) << std::setw(24)
                << ratio_text(to_pinned(result.rows, row, &Row::bw_MBps, &Row::round_bw_MBps))
                << "\n";
        }
    }
}

}  // namespace

// The fault section: per emulated column, chunk faults of 1 and 2 threads,
// and a streaming WRITE's first pass (with and without fault-ahead) against
// its warm pass.
void print_faults(const CompareResult& result, int mode_width, std::ostream& out) {
    std::vector<std::string> modes;
    for (const std::string& mode : result.modes) {
        if (find_test(result.rows, mode, "faults_1_thread") != nullptr) {
            modes.push_back(mode);
        }
    }
    if (modes.empty()) {
        return;
    }
    const Row* pinned_touch = find(result.rows, "pinned", "first_touch", 2 << 20);
    const auto failed = [&](const Row* row, const std::string& mode) {
        if (row == nullptr || row->error.empty()) {
            return false;
        }
        out << "  " << std::left << std::setw(mode_width) << mode << std::right
            << "failed: " << row->error << "\n";
        return true;
    };
    const Row* any = find_test(result.rows, modes.front(), "faults_1_thread");
    out << "\nChunk faults: " << any->size / (2 << 20)
        << " fresh 2 MiB chunks of a region faulted by 1 thread, then by 2\n"
           " [usec of wall time per fault; speed-up = throughput of 2 / of 1; pinned: one\n"
           " 2 MiB MR registered per chunk, the kernel's own scaling]\n";
    out << std::left << std::setw(mode_width + 1) << "mode" << std::right << std::setw(11)
        << "1 thread" << std::setw(11) << "2 threads" << std::setw(26) << "speed-up [interval]"
        << "\n";
    for (const std::string& mode : modes) {
        const Row* one = find_test(result.rows, mode, "faults_1_thread");
        const Row* two = find_test(result.rows, mode, "faults_2_threads");
        if (failed(one, mode) || failed(two, mode)) {
            continue;
        }
        out << std::left << std::setw(mode_width + 1) << mode << std::right << std::setw(11)
            << optional_number(one->first_touch_us, 1) << std::setw(11)
            << optional_number(two->first_touch_us, 1) << std::setw(26)
            << ratio_text(estimate_ratio(touch_of(one), touch_of(two))) << "\n";
    }
    const auto streamed = std::find_if(modes.begin(), modes.end(), [&](const std::string& mode) {
        return find_test(result.rows, mode, "first_pass") != nullptr;
    });
    if (streamed == modes.end()) {
        return;
    }
    const Row* stream = find_test(result.rows, *streamed, "first_pass");
    out << "\nStreaming: 64 KiB RDMA WRITEs in address order over a fresh "
        << odp::format_bytes(stream->size) << " buffer, first pass\n against the second (warm);"
        << " fault-ahead " << stream_fault_ahead(result.fault_ahead)
        << " chunks [MB/s]; cold translate: a chunk's first\n"
           " translate in the first pass [usec], against pinned's registration of 2 MiB\n";
    out << std::left << std::setw(mode_width + 1) << "mode" << std::right << std::setw(10) << "warm"
        << std::setw(10) << "first" << std::setw(22) << "first/warm [interval]" << std::setw(16)
        << "without ahead" << std::setw(22) << "first/warm [interval]" << std::setw(10) << "cold"
        << std::setw(28) << "cold / pinned reg. [int.]" << std::setw(16) << "cold, no ahead"
        << "  verified\n";
    for (const std::string& mode : modes) {
        const Row* first = find_test(result.rows, mode, "first_pass");
        const Row* warm = find_test(result.rows, mode, "warm_pass");
        const Row* demand = find_test(result.rows, mode, "first_pass_demand");
        if (first == nullptr || warm == nullptr || demand == nullptr || failed(first, mode) ||
            failed(warm, mode) || failed(demand, mode)) {
            continue;
        }
        const std::uint64_t mismatched = first->mismatched_bytes + demand->mismatched_bytes;
        out << std::left << std::setw(mode_width + 1) << mode << std::right << std::setw(10)
            << optional_number(warm->bw_MBps) << std::setw(10) << optional_number(first->bw_MBps)
            << std::setw(22) << ratio_text(estimate_ratio(bandwidth_of(first), bandwidth_of(warm)))
            << std::setw(16) << optional_number(demand->bw_MBps) << std::setw(22)
            << ratio_text(estimate_ratio(bandwidth_of(demand), bandwidth_of(warm))) << std::setw(10)
            << optional_number(first->first_touch_us, 1) << std::setw(28)
            << ratio_text(pinned_touch
                              ? estimate_ratio(touch_of(first),
                                               {pinned_touch->reg_us, pinned_touch->reg_us_samples})
                              : std::nullopt)
            << std::setw(16) << optional_number(demand->first_touch_us, 1) << "  "
            << (mismatched == 0 ? "ok " : "MISMATCH ")
            << odp::format_bytes(first->verified_bytes + demand->verified_bytes) << ", warm pass "
            << warm->faults << " faults, first pass " << first->fault_ahead_hits << " of "
            << first->faults << " chunks faulted ahead\n";
    }
}

void print_table(const CompareResult& result, std::ostream& out) {
    out << "odp-perf compare: device " << result.device << ", kernel " << result.kernel
        << ", modes:";
    for (const std::string& mode : result.modes) {
        out << " " << mode;
    }
    out << "\n(both sides of each connection use the mode named; MB/s is 2^20 bytes per second,"
           "\n as perftest; a ratio to pinned is the median of the ratios of rounds taken in turn"
           "\n [its confidence interval: 87.5% with 4 rounds, at least 95% with 6 or more])\n";
    if (result.native_check.ran) {
        out << "native ODP data check (plain verbs, no odp-layer): "
            << (result.native_check.ok ? "ok" : "FAILED") << ": " << result.native_check.detail
            << "\n";
    }
    for (const auto& [mode, why] : result.absent_modes) {
        out << mode << ": not measured: " << why << "\n";
    }
    if (!result.connection.empty()) {
        out << "queue pairs connected by " << result.connection << "\n";
    }
    if (!result.emulated_monitor.empty()) {
        out << "emulated mode's invalidation source: " << result.emulated_monitor << "\n";
    }
    for (const auto& [label, monitor] : result.monitors) {
        if (label != "emulated") {
            out << label << ": the emulated mode watched by " << monitor << "\n";
        }
    }
    if (!result.sizes_note.empty()) {
        out << "sweep: " << result.sizes_note << "\n";
    }
    if (result.fault_ahead != 0) {
        out << "emulated buffers of the traffic and budget tests fault " << result.fault_ahead
            << " chunks ahead (--fault-ahead)\n";
    }
    out << "\n";

    // Columns as wide as the longest mode label (emulated/userfaultfd).
    int mode_width = 9;
    for (const std::string& mode : result.modes) {
        mode_width = std::max(mode_width, static_cast<int>(mode.size()) + 1);
    }
    const auto register_width = [](const std::string& mode) {
        return std::max(14, static_cast<int>(mode.size()) + 1);
    };
    out << std::left << std::setw(mode_width) << "mode" << std::setw(6) << "test" << std::right
        << std::setw(8) << "#bytes" << std::setw(12) << "#iterations" << std::setw(6) << "depth"
        << std::setw(13) << "BW avg[MB/s]" << std::setw(22) << "ratio [interval]" << std::setw(13)
        << "t_p50[usec]" << std::setw(22) << "ratio [interval]" << std::setw(13) << "t_p99[usec]"
        << std::setw(13) << "pinned peak" << std::setw(8) << "faults" << std::setw(7) << "inval"
        << "  verified\n";
    for (const Row& row : result.rows) {
        if (row.test != "write" && row.test != "read" && row.test != "send") {
            continue;
        }
        out << std::left << std::setw(mode_width) << row.mode << std::setw(6) << row.test
            << std::right << std::setw(8) << row.size;
        if (!row.error.empty()) {
            out << "  failed: " << row.error << "\n";
            continue;
        }
        out << std::setw(12) << row.iterations << std::setw(6) << row.depth << std::setw(13)
            << optional_number(row.bw_MBps) << std::setw(22)
            << ratio_text(to_pinned(result.rows, row, &Row::bw_MBps, &Row::round_bw_MBps))
            << std::setw(13) << optional_number(row.lat_us_p50) << std::setw(22)
            << ratio_text(to_pinned(result.rows, row, &Row::lat_us_p50, &Row::round_lat_us_p50))
            << std::setw(13) << optional_number(row.lat_us_p99) << std::setw(13)
            << odp::format_bytes(row.pinned_bytes_peak) << std::setw(8) << row.faults
            << std::setw(7) << row.invalidations << "  "
            << (row.mismatched_bytes == 0 ? "ok " : "MISMATCH ")
            << odp::format_bytes(row.verified_bytes) << "\n";
    }

    out << "\nRegistration time of a populated buffer [usec] (speed-up = pinned time / mode "
           "time)\n";
    constexpr int kSpeedUpWidth = 26;
    out << std::left << std::setw(10) << "size" << std::right;
    for (const std::string& mode : result.modes) {
        out << std::setw(register_width(mode)) << mode;
        if (mode != "pinned") {
            out << std::setw(kSpeedUpWidth) << "speed-up [interval]";
        }
    }
    out << "\n";
    std::vector<std::uint64_t> sizes;
    for (const Row& row : result.rows) {
        if (row.test == "register" &&
            std::find(sizes.begin(), sizes.end(), row.size) == sizes.end()) {
            sizes.push_back(row.size);
        }
    }
    for (const std::uint64_t size : sizes) {
        out << std::left << std::setw(10) << odp::format_bytes(size) << std::right;
        const Row* pinned = find(result.rows, "pinned", "register", size);
        for (const std::string& mode : result.modes) {
            const Row* row = find(result.rows, mode, "register", size);
            out << std::setw(register_width(mode))
                << (row ? optional_number(row->reg_us, 1) : "failed");
            if (mode != "pinned") {
                out << std::setw(kSpeedUpWidth)
                    << ratio_text(row && pinned
                                      ? estimate_ratio({pinned->reg_us, pinned->reg_us_samples},
                                                       {row->reg_us, row->reg_us_samples})
                                      : std::nullopt,
                                  1);
            }
        }
        out << "\n";
    }

    out << "\nFirst touch: 2 MiB from a freshly registered buffer [usec] (translate = making it "
           "usable;\n write = one whole RDMA WRITE of it, translate included)\n";
    constexpr int kTouchRatioWidth = 46;
    out << std::left << std::setw(mode_width + 1) << "mode" << std::right << std::setw(12)
        << "register" << std::setw(17) << "cold translate" << std::setw(13) << "first write"
        << std::setw(12) << "warm write" << std::setw(12) << "prefetch" << std::setw(26)
        << "translate after prefetch" << std::setw(kTouchRatioWidth)
        << "cold translate / pinned register [interval]\n";
    const Row* pinned_touch = find(result.rows, "pinned", "first_touch", 2 << 20);
    for (const std::string& mode : result.modes) {
        const Row* touch = find(result.rows, mode, "first_touch", 2 << 20);
        const Row* fetched = find(result.rows, mode, "prefetch", 2 << 20);
        out << std::left << std::setw(mode_width + 1) << mode << std::right << std::setw(12)
            << (touch ? optional_number(touch->reg_us, 1) : "failed") << std::setw(17)
            << (touch ? optional_number(touch->first_touch_us, 1) : "-") << std::setw(13)
            << (touch ? optional_number(touch->first_write_us, 1) : "-") << std::setw(12)
            << (touch ? optional_number(touch->warm_us, 1) : "-") << std::setw(12)
            << (fetched ? optional_number(fetched->prefetch_us, 1) : "-") << std::setw(26)
            << (fetched ? optional_number(fetched->first_touch_us, 1) : "-")
            << std::setw(kTouchRatioWidth)
            << ratio_text(
                   touch && pinned_touch && mode != "pinned"
                       ? estimate_ratio({touch->first_touch_us, touch->first_touch_us_samples},
                                        {pinned_touch->reg_us, pinned_touch->reg_us_samples})
                       : std::nullopt)
            << "\n";
    }
    for (const Row& row : result.rows) {
        if ((row.test == "first_touch" || row.test == "prefetch") && !row.error.empty()) {
            out << "  " << row.mode << " " << row.test << ": " << row.error << "\n";
        }
    }

    print_faults(result, mode_width, out);

    out << "\nWorking set larger than the pinned budget: 64 KiB WRITEs cycling over the set\n";
    for (const Row& row : result.rows) {
        if (row.test != "budget") {
            continue;
        }
        out << "  " << std::left << std::setw(mode_width) << row.mode << std::right << "budget "
            << odp::format_bytes(row.budget_bytes.value_or(0));
        if (!row.error.empty()) {
            out << ": " << row.error << "\n";
            continue;
        }
        out << ", hit rate " << fixed(row.hit_rate.value_or(0) * 100, 2) << "%, "
            << optional_number(row.bw_MBps) << " MB/s, pinned peak "
            << odp::format_bytes(row.pinned_bytes_peak) << " (<= budget), " << row.faults
            << " chunk faults\n";
    }

    print_working_sets(result, mode_width, out);

    out << "\nRemap under traffic: WRITE + READ back, buffers freed and remapped between rounds\n";
    for (const Row& row : result.rows) {
        if (row.test != "remap") {
            continue;
        }
        out << "  " << std::left << std::setw(mode_width) << row.mode << std::right;
        if (!row.error.empty()) {
            out << "failed: " << row.error << "\n";
            continue;
        }
        out << odp::format_bytes(row.verified_bytes) << " checked, " << row.mismatched_bytes
            << " bytes stale, " << row.invalidations << " invalidations: "
            << (row.mismatched_bytes == 0 ? "coherent"
                : row.mode == "pinned"    ? "stale pages (expected: pinned MRs are not coherent)"
                : row.mode == "native" && result.native_check.ran && !result.native_check.ok
                    ? "wrong bytes (the device's native ODP defect, see the data check above)"
                    : "STALE DATA")
            << "\n";
    }

    out << "\nGoals (issue 3; ratios with [their confidence interval]: met only when the "
           "whole\n interval clears the target, inconclusive when it straddles it)\n";
    for (const Goal& goal : result.goals) {
        out << "  " << goal.name << ": " << ratio_text(goal.measured) << " (";
        if (goal.measured && goal.measured->interval) {
            out << confidence_text(*goal.measured->interval) << ", ";
        }
        out << "target " << goal.target << ")";
        if (goal.verdict != Verdict::NotMeasured && goal.verdict != Verdict::Reported) {
            out << " " << (goal.verdict == Verdict::NotMet ? "NOT met" : to_string(goal.verdict));
        }
        out << (goal.note.empty() ? "" : " - " + goal.note) << "\n";
    }
}

std::string to_json(const CompareResult& result, const std::string& command_line) {
    std::ostringstream out;
    out << "{\n  \"schema\": \"odp-perf-compare/1\",\n";
    out << "  \"kernel\": \"" << json_escape(result.kernel) << "\",\n";
    out << "  \"device\": \"" << json_escape(result.device) << "\",\n";
    out << "  \"command\": \"" << json_escape(command_line) << "\",\n";
    out << "  \"native_odp_data_check\": {\"ran\": " << (result.native_check.ran ? "true" : "false")
        << ", \"ok\": " << (result.native_check.ok ? "true" : "false") << ", \"detail\": \""
        << json_escape(result.native_check.detail) << "\"},\n";
    out << "  \"emulated_monitor\": \"" << json_escape(result.emulated_monitor) << "\",\n";
    out << "  \"monitors\": " << json_object(result.monitors) << ",\n";
    out << "  \"sizes_note\": \"" << json_escape(result.sizes_note) << "\",\n";
    out << "  \"connection\": \"" << json_escape(result.connection) << "\",\n";
    out << "  \"absent_modes\": " << json_object(result.absent_modes) << ",\n";
    out << "  \"fault_ahead\": " << result.fault_ahead << ",\n";
    out << "  \"modes\": [";
    for (std::size_t i = 0; i < result.modes.size(); ++i) {
        out << (i ? ", " : "") << "\"" << result.modes[i] << "\"";
    }
    out << "],\n  \"results\": [\n";
    for (std::size_t i = 0; i < result.rows.size(); ++i) {
        const Row& row = result.rows[i];
        out << "    {\"mode\": \"" << row.mode << "\", \"server_mode\": \"" << row.server_mode
            << "\", \"kernel\": \"" << json_escape(result.kernel) << "\", \"device\": \""
            << json_escape(result.device) << "\", \"test\": \"" << row.test
            << "\", \"size\": " << row.size << ", \"iterations\": " << row.iterations
            << ", \"depth\": " << row.depth << ", \"bw_MBps\": " << json_number(row.bw_MBps)
            << ", \"lat_us_p50\": " << json_number(row.lat_us_p50)
            << ", \"lat_us_p99\": " << json_number(row.lat_us_p99)
            << ", \"reg_us\": " << json_number(row.reg_us)
            << ", \"first_touch_us\": " << json_number(row.first_touch_us)
            << ", \"first_write_us\": " << json_number(row.first_write_us)
            << ", \"warm_us\": " << json_number(row.warm_us)
            << ", \"prefetch_us\": " << json_number(row.prefetch_us)
            << ", \"hit_rate\": " << json_number(row.hit_rate) << ", \"budget_bytes\": "
            << (row.budget_bytes ? std::to_string(*row.budget_bytes) : "null")
            << ", \"pinned_bytes_peak\": " << row.pinned_bytes_peak
            << ", \"faults\": " << row.faults << ", \"invalidations\": " << row.invalidations
            << ", \"fault_ahead_hits\": " << row.fault_ahead_hits
            << ", \"verified_bytes\": " << row.verified_bytes
            << ", \"mismatched_bytes\": " << row.mismatched_bytes
            << ", \"round_bw_MBps\": " << json_array(row.round_bw_MBps)
            << ", \"round_lat_us_p50\": " << json_array(row.round_lat_us_p50)
            << ", \"reg_us_samples\": " << json_array(row.reg_us_samples)
            << ", \"first_touch_us_samples\": " << json_array(row.first_touch_us_samples)
            << ", \"to_pinned\": {\"bw_MBps\": "
            << json_estimate(to_pinned(result.rows, row, &Row::bw_MBps, &Row::round_bw_MBps))
            << ", \"lat_us_p50\": "
            << json_estimate(to_pinned(result.rows, row, &Row::lat_us_p50, &Row::round_lat_us_p50))
            << ", \"reg_us\": "
            << json_estimate(to_pinned(result.rows, row, &Row::reg_us, &Row::reg_us_samples))
            << "}, \"error\": "
            << (row.error.empty() ? "null" : "\"" + json_escape(row.error) + "\"") << "}"
            << (i + 1 < result.rows.size() ? "," : "") << "\n";
    }
    out << "  ],\n  \"goals\": [\n";
    for (std::size_t i = 0; i < result.goals.size(); ++i) {
        const Goal& goal = result.goals[i];
        const Interval* interval =
            goal.measured && goal.measured->interval ? &*goal.measured->interval : nullptr;
        out << "    {\"name\": \"" << json_escape(goal.name) << "\", \"ratio\": "
            << json_number(goal.measured ? std::optional(goal.measured->ratio) : std::nullopt)
            << ", \"ratio_low\": "
            << json_number(interval ? std::optional(interval->low) : std::nullopt)
            << ", \"ratio_high\": "
            << json_number(interval ? std::optional(interval->high) : std::nullopt)
            << ", \"confidence\": "
            << json_number(interval ? std::optional(interval->confidence) : std::nullopt)
            << ", \"samples\": " << (interval ? interval->samples : 0) << ", \"target\": \""
            << json_escape(goal.target) << "\", \"verdict\": \"" << to_string(goal.verdict)
            << "\", \"met\": " << (goal.verdict == Verdict::Met ? "true" : "false")
            << ", \"note\": \"" << json_escape(goal.note) << "\"}"
            << (i + 1 < result.goals.size() ? "," : "") << "\n";
    }
    out << "  ]\n}\n";
    return out.str();
}

std::string plot_script(const CompareResult& result, const std::filesystem::path& dir,
                        const std::string& png_path) {
    // Bandwidth (64 KiB) and latency p50 (8 B) per test: one value and its
    // range over the rounds per mode. A row whose bytes arrived wrong, or that
    // failed, is drawn as an empty bar (gnuplot refuses a column of NaN); its
    // test's label gets a '*' and the returned x label says which and why
    // (one line under the panel: labels of their own overlapped).
    auto per_test = [&](const std::string& file, std::uint64_t size,
                        const std::optional<double> Row::*value,
                        const std::vector<double> Row::*rounds) {
        std::ofstream data(dir / file);
        std::map<std::string, std::string> not_drawn;  // "native: data wrong" -> "write, read"
        for (const char* test : {"write", "read", "send"}) {
            std::string label = test;
            std::string columns;
            for (const std::string& mode : result.modes) {
                const Row* row = find(result.rows, mode, test, size);
                const bool wrong = row != nullptr && row->mismatched_bytes > 0;
                if (row == nullptr || wrong || !(row->*value)) {
                    std::string& tests = not_drawn[mode + (wrong ? ": data wrong" : ": failed")];
                    tests += (tests.empty() ? "" : ", ") + std::string(test);
                    label = std::string(test) + "*";
                    columns += " 0 0 0";
                    continue;
                }
                const auto [low, high] = spread_of(*(row->*value), row->*rounds);
                columns +=
                    " " + fixed(*(row->*value), 3) + " " + fixed(low, 3) + " " + fixed(high, 3);
            }
            data << "\"" << label << "\"" << columns << "\n";
        }
        std::string xlabel;
        for (const auto& [why, tests] : not_drawn) {
            const std::size_t colon = why.find(':');
            xlabel += (xlabel.empty() ? "* not drawn: " : "; ") + why.substr(0, colon) + " (" +
                      tests + ")" + why.substr(colon);
        }
        return "set xlabel \"" + xlabel + "\"\n";
    };
    const std::string bw_xlabel = per_test("bw.dat", 65536, &Row::bw_MBps, &Row::round_bw_MBps);
    const std::string lat_xlabel = per_test("lat.dat", 8, &Row::lat_us_p50, &Row::round_lat_us_p50);
    // Bandwidth against message size (a sweep), one file per mode; points
    // whose data check failed go to a file of their own, drawn as crosses.
    std::set<std::uint64_t> traffic_sizes;
    for (const Row& row : result.rows) {
        if (row.test == "write" && row.bw_MBps) {
            traffic_sizes.insert(row.size);
        }
    }
    const bool sweep = traffic_sizes.size() > 2;
    std::set<std::uint64_t> reg_sizes;
    std::set<std::string> modes_with_wrong_data;
    // Data files are named by the mode's place: a label may hold a '/'.
    const auto data_file = [&](const char* kind, std::size_t mode) {
        return (dir / (kind + std::to_string(mode) + ".dat")).string();
    };
    for (std::size_t i = 0; i < result.modes.size(); ++i) {
        const std::string& mode = result.modes[i];
        std::ofstream sweep_data(data_file("sweep-", i));
        std::ofstream wrong_data(data_file("sweep-wrong-", i));
        std::ofstream reg(data_file("reg-", i));
        for (const Row& row : result.rows) {
            if (row.mode != mode) {
                continue;
            }
            if (row.test == "write" && row.bw_MBps) {
                const auto [low, high] = spread_of(*row.bw_MBps, row.round_bw_MBps);
                if (row.mismatched_bytes > 0) {
                    modes_with_wrong_data.insert(mode);
                }
                (row.mismatched_bytes > 0 ? wrong_data : sweep_data)
                    << row.size << " " << *row.bw_MBps << " " << low << " " << high << "\n";
            }
            if (row.test == "register" && row.reg_us) {
                const auto [low, high] = spread_of(*row.reg_us, row.reg_us_samples);
                reg << row.size << " " << *row.reg_us << " " << low << " " << high << "\n";
                reg_sizes.insert(row.size);
            }
        }
    }
    // Sizes as people write them ("1 MiB"), not 1.04858e+06.
    auto size_tics = [](const std::set<std::uint64_t>& sizes) {
        std::string tics = sizes.empty() ? std::string()
                                         : "set xrange [" + std::to_string(*sizes.begin() / 2) +
                                               ":" + std::to_string(*sizes.rbegin() * 2) + "]\n";
        tics += "set xtics rotate by -30 (";
        bool first = true;
        for (const std::uint64_t size : sizes) {
            tics +=
                (first ? "\"" : ", \"") + odp::format_bytes(size) + "\" " + std::to_string(size);
            first = false;
        }
        return tics + ")\n";
    };
    // Working set against the budget: per emulated column and pattern, the
    // bandwidth ratio to pinned (its interval as the error bar) and the hit
    // rate, against working set / budget.
    std::vector<std::pair<std::string, std::string>> working_set_lines;  // file, title
    for (std::size_t i = 0; i < result.modes.size(); ++i) {
        for (const char* test : kWorkingSetTests) {
            std::ostringstream data;
            for (const Row& row : result.rows) {
                if (row.mode != result.modes[i] || row.test != test || row.mode == "pinned" ||
                    !row.error.empty() || !row.budget_bytes || *row.budget_bytes == 0) {
                    continue;
                }
                const std::optional<RatioEstimate> ratio =
                    to_pinned(result.rows, row, &Row::bw_MBps, &Row::round_bw_MBps);
                if (!ratio) {
                    continue;
                }
                const double low = ratio->interval ? ratio->interval->low : ratio->ratio;
                const double high = ratio->interval ? ratio->interval->high : ratio->ratio;
                data << static_cast<double>(row.size) / static_cast<double>(*row.budget_bytes)
                     << " " << fixed(ratio->ratio, 4) << " " << fixed(low, 4) << " "
                     << fixed(high, 4) << " " << fixed(row.hit_rate.value_or(0), 4) << "\n";
            }
            if (data.str().empty()) {
                continue;
            }
            const std::string pattern =
                std::string(test).substr(std::string("working_set_").size());
            const std::string file = data_file(("ws-" + pattern + "-").c_str(), i);
            std::ofstream(file) << data.str();
            working_set_lines.emplace_back(file, result.modes[i] + " " + pattern);
        }
    }
    const bool working_sets = !working_set_lines.empty();
    // A panel per section the result has (--only runs a part of them; gnuplot
    // refuses a panel without points).
    const bool traffic = std::any_of(result.rows.begin(), result.rows.end(), [](const Row& row) {
        return row.test == "write" || row.test == "read" || row.test == "send";
    });
    const bool registration = !reg_sizes.empty();
    const int panels =
        (traffic ? 2 : 0) + (registration ? 1 : 0) + (sweep ? 1 : 0) + (working_sets ? 1 : 0);
    if (panels == 0) {
        return {};
    }
    std::string quoted_png;
    for (const char c : png_path) {
        quoted_png += c == '"' || c == '\\' ? std::string("\\") + c : std::string(1, c);
    }
    const auto mode_columns = [&](const std::string& file) {
        std::string plot;
        for (std::size_t i = 0; i < result.modes.size(); ++i) {
            const std::size_t column = 2 + 3 * i;
            plot += (i ? ", '" : "'") + (dir / file).string() + "' using " +
                    std::to_string(column) + ":" + std::to_string(column + 1) + ":" +
                    std::to_string(column + 2) + ":xtic(1) title '" + result.modes[i] + "'";
        }
        return plot;
    };
    std::ostringstream script;
    script << "set terminal pngcairo size "
           << (panels == 1   ? "800,600"
               : panels == 2 ? "1200,500"
               : panels == 3 ? "1400,500"
               : panels == 4 ? "1400,1000"
                             : "2000,1000")
           << " font ',10'\n"
           << "set output \"" << quoted_png << "\"\n"
           << "set multiplot layout "
           << (panels <= 3   ? "1," + std::to_string(panels)
               : panels == 4 ? "2,2"
                             : "2,3")
           << " title \"odp-perf compare: " << result.device << ", kernel " << result.kernel
           << " (error bars: range over the rounds)\"\n"
           << "set style data histograms\nset style histogram errorbars gap 1 lw 1\n"
           << "set style fill solid 0.8 border -1\nset key outside right top vertical\nset grid "
              "ytics\n";
    if (traffic) {
        script << "set title 'RDMA bandwidth, 64 KiB messages'\nset ylabel 'MB/s'\nset yrange "
                  "[0:*]\n"
               << bw_xlabel << "plot " << mode_columns("bw.dat") << "\n"
               << "set title 'Latency p50, 8-byte messages'\nset ylabel 'usec'\n"
               << lat_xlabel << "plot " << mode_columns("lat.dat") << "\n";
    }
    if (registration) {
        script << "set style data linespoints\nset logscale xy\nset title 'Registration time, "
                  "populated buffer'\nset xlabel 'buffer size'\nset ylabel 'usec'\nset yrange "
                  "[*:*]\nset key inside top left vertical\n"
               << size_tics(reg_sizes) << "plot ";
        for (std::size_t i = 0; i < result.modes.size(); ++i) {
            script << (i ? ", " : "") << "'" << data_file("reg-", i)
                   << "' using 1:2:3:4 with yerrorlines lt " << i + 1 << " title '"
                   << result.modes[i] << "'";
        }
    }
    if (sweep) {
        script << "\nset title 'RDMA WRITE bandwidth against message size'\nset xlabel "
                  "'message size'\nset ylabel 'MB/s'\nset logscale x 2\nunset logscale y\n"
                  "set yrange [0:*]\n"
               << size_tics(traffic_sizes) << "plot ";
        for (std::size_t i = 0; i < result.modes.size(); ++i) {
            const std::string& mode = result.modes[i];
            const std::string colour = " lt " + std::to_string(i + 1);
            script << (i ? ", " : "") << "'" << data_file("sweep-", i)
                   << "' using 1:2:3:4 with yerrorlines" << colour << " title '" << mode << "'";
            if (modes_with_wrong_data.contains(mode)) {
                script << ", '" << data_file("sweep-wrong-", i)
                       << "' using 1:2 with points pt 2 ps 2" << colour << " title '" << mode
                       << ": data check failed'";
            }
        }
    }
    if (working_sets) {
        // Ratio on the left axis (lines with error bars), hit rate on the
        // right (dashed), one colour per column and pattern. The key goes
        // under the panel: inside, its two lines per curve covered the curves.
        script
            << "\nset title 'Working set against the pinned budget, 64 KiB WRITEs'\n"
               "set xlabel 'working set / budget' offset 0,0.5\n"
               "set ylabel 'bandwidth / pinned (set that fits)'\nset y2label 'hit rate'\n"
               "unset logscale\nset logscale x 2\n"
               "set xrange [0.8:10]\nset xtics norotate (\"1x\" 1, \"2x\" 2, \"4x\" 4, \"8x\" 8)\n"
               "set yrange [0:*]\nset y2range [0:1.05]\nset y2tics\nset ytics nomirror\n"
               "set key outside below center vertical maxrows 4 samplen 2 width -3\nplot ";
        for (std::size_t i = 0; i < working_set_lines.size(); ++i) {
            const auto& [file, title] = working_set_lines[i];
            const std::string colour = " lt " + std::to_string(i + 1);
            script << (i ? ", " : "") << "'" << file << "' using 1:2:3:4 with yerrorlines" << colour
                   << " title '" << title << ", bandwidth ratio', '" << file
                   << "' using 1:5 axes x1y2 with linespoints dt 2" << colour << " title '" << title
                   << ", hit rate'";
        }
    }
    script << "\nunset multiplot\n";
    return script.str();
}

void plot(const CompareResult& result, const std::string& png_path) {
    char pattern[] = "/tmp/odp-perf-plot.XXXXXX";
    const char* dir_name = mkdtemp(pattern);
    if (dir_name == nullptr) {
        odp::throw_errno("mkdtemp for the plot data");
    }
    const std::filesystem::path dir(dir_name);
    struct Cleanup {
        std::filesystem::path dir;
        ~Cleanup() {
            std::error_code ignored;
            std::filesystem::remove_all(dir, ignored);
        }
    } cleanup{dir};
    const std::string text = plot_script(result, dir, png_path);
    if (text.empty()) {
        odp::throw_error(EINVAL, "nothing to plot in " + png_path +
                                     ": the result has no traffic, registration or working-set "
                                     "rows (the sections the plot draws)");
    }
    {
        std::ofstream script(dir / "plot.gp");
        script << text;
        if (!script.flush()) {
            odp::throw_errno("writing the gnuplot script in " + dir.string());
        }
    }

    const pid_t child = fork();
    if (child < 0) {
        odp::throw_errno("fork for gnuplot");
    }
    if (child == 0) {
        const std::string script_path = (dir / "plot.gp").string();
        execlp("gnuplot", "gnuplot", script_path.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    int status = 0;
    if (waitpid(child, &status, 0) < 0) {
        odp::throw_errno("waiting for gnuplot");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        odp::throw_error(WIFEXITED(status) && WEXITSTATUS(status) == 127 ? ENOENT : EIO,
                         "gnuplot failed to draw " + png_path +
                             (WIFEXITED(status) && WEXITSTATUS(status) == 127
                                  ? " (gnuplot not found: apt-get install gnuplot-nox)"
                                  : " (see its messages above)"));
    }
}

}  // namespace odp_perf
