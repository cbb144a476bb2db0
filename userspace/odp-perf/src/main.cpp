// odp-perf: RDMA test client/server over libodp, and the pinned-vs-ODP comparison.
#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <odp/error.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "compare.hpp"
#include "compare_merge.hpp"
#include "sweep.hpp"
#include "traffic.hpp"

namespace {

using namespace odp_perf;

constexpr const char* kUsage = R"(usage:
  odp-perf server [--port P] [--device D] [--max-buffer BYTES] [--exit-after N]
                  [--fault-ahead CHUNKS] [--verbose]
  odp-perf client HOST [--port P] [--device D] [--cm] [--test write|read|send]
                  [--size BYTES | --sweep] [--iters N | --duration SECONDS]
                  [--mode pinned|native|emulated|auto] [--peer-mode MODE]
                  [--lat] [--lat-iters N] [--depth N] [--slots N] [--fault-ahead CHUNKS]
  odp-perf compare [--device D] [--cm] [--json FILE] [--plot FILE.png] [--quick]
                   [--sizes LIST | --sweep] [--iters N] [--lat-iters N] [--rounds N]
                   [--reg-max BYTES]
                   [--budget BYTES] [--working-set BYTES] [--working-set-sweep]
                   [--sources LIST] [--fault-ahead CHUNKS] [--stream-size BYTES]
                   [--fault-chunks N] [--only SECTIONS]
  odp-perf compare --merge RUN.json [--merge RUN.json]... [--json FILE] [--plot FILE.png]

Sizes take K, M and G suffixes (powers of 1024). Defaults: port 18515, the first
verbs device, test write, size 64K, 1000 iterations, mode and peer mode auto.
--cm connects the queue pairs through RDMA CM (librdmacm) instead of exchanging
their values over the TCP connection; on an iWARP device (siw) odp-perf always
does, as iWARP connects no other way. The server follows its client. client --cm
without --device uses the device RDMA CM reaches HOST through.
client --lat adds a latency phase (p50/p99 of post-to-completion, one in flight);
--depth: work requests in flight (64); --slots: distinct buffers cycled through
(default: depth; fewer reuse buffers like perftest, WRITE/READ only).
compare runs server and client in this process over the device's loopback, for
every mode the device supports, and prints one table with ratios to pinned
(schema of --json: docs/compare.md; through RDMA CM at the device's own IP
address). Its message sizes: --sizes 8,4K,64K
(default 8,64K); --sweep: 2 B to 8 MiB (client --sweep too), within half the
pinned budget, large messages with fewer iterations and fewer in flight.
Each test and size runs in --rounds N (default 6) parts, the modes taking
turns, so that a passing disturbance of the machine falls on every mode; a
ratio is the median of the rounds' ratios with its confidence interval
(95% from 6 rounds), and a goal is met only when all of it clears the target.
--sources module,userfaultfd: the emulated mode once per invalidation source,
the first as "emulated", the others as "emulated/<source>" (default: both when
/dev/odp_mirror exists, else what auto picks; auto, module, userfaultfd).
--fault-ahead N: emulated buffers register N chunks ahead of a sequential use
in the background (RegionOptions::fault_ahead; default 0, off); in compare,
the traffic tests (both sides) and the working set over the budget.
--working-set-sweep (on with --sweep): 64 KiB WRITEs, sequential and random,
over 1, 2, 4 and 8 times --budget for each emulated column, against pinned
over a set of the budget's size: hit rate, chunk faults, bandwidth ratio.
Chunk faults and fault-ahead (every emulated column): --fault-chunks N fresh
2 MiB chunks (512) faulted by 1 thread and by 2 (pinned: registered as 2 MiB
MRs, the kernel's own scaling); 64 KiB WRITEs streaming over a
fresh --stream-size buffer (256M) with --fault-ahead chunks ahead (4 if 0), its
first pass against its warm second, and a first pass without fault-ahead.
--only SECTIONS runs only these of compare's sections (traffic, register,
first-touch, budget, remap, faults, working-set; the goals of the others are
then not measured).
compare --merge measures nothing: it merges the JSON of runs of the same
comparison (other guests) into one table whose intervals use every run's
rounds (each round paired with the other modes' round of the same run).
)";

[[noreturn]] void usage_error(const std::string& what) {
    std::cerr << "odp-perf: " << what << "\n\n" << kUsage;
    std::exit(2);
}

std::uint64_t parse_size(const std::string& text, const std::string& option) {
    std::size_t used = 0;
    std::uint64_t value = 0;
    try {
        value = std::stoull(text, &used);
    } catch (const std::exception&) {
        usage_error(option + " wants a number, got '" + text + "'");
    }
    const std::string suffix = text.substr(used);
    const std::uint64_t multiplier = suffix.empty()                   ? 1
                                     : suffix == "K" || suffix == "k" ? 1ULL << 10
                                     : suffix == "M" || suffix == "m" ? 1ULL << 20
                                     : suffix == "G" || suffix == "g" ? 1ULL << 30
                                                                      : 0;
    if (multiplier == 0) {
        usage_error(option + ": unknown suffix '" + suffix + "' (use K, M or G)");
    }
    return value * multiplier;
}

// "a,b,,c" -> {"a", "b", "", "c"}: an empty item is the caller's to refuse.
std::vector<std::string> comma_separated(const std::string& list) {
    std::vector<std::string> items;
    for (std::size_t begin = 0; begin <= list.size();) {
        const std::size_t comma = std::min(list.find(',', begin), list.size());
        items.push_back(list.substr(begin, comma - begin));
        begin = comma + 1;
    }
    return items;
}

// Chunks registered ahead; more than the fault-ahead queue holds is a typo.
std::size_t parse_fault_ahead(const std::string& text) {
    const std::uint64_t chunks = parse_size(text, "--fault-ahead");
    if (chunks > 1024) {
        usage_error("--fault-ahead takes 0 to 1024 chunks, got " + text);
    }
    return static_cast<std::size_t>(chunks);
}

odp::Mode parse_mode(const std::string& text) {
    if (text == "pinned") {
        return odp::Mode::Pinned;
    }
    if (text == "native") {
        return odp::Mode::Native;
    }
    if (text == "emulated") {
        return odp::Mode::Emulated;
    }
    if (text == "auto") {
        return odp::Mode::Auto;
    }
    usage_error("unknown mode '" + text + "' (pinned, native, emulated or auto)");
}

oob::TestKind parse_test(const std::string& text) {
    if (text == "write") {
        return oob::TestKind::Write;
    }
    if (text == "read") {
        return oob::TestKind::Read;
    }
    if (text == "send") {
        return oob::TestKind::Send;
    }
    usage_error("unknown test '" + text + "' (write, read or send)");
}

// Walks argv: options with a value, flags, and positional arguments.
class Arguments {
  public:
    Arguments(int argc, char** argv, int first) : args_(argv + first, argv + argc) {}
    bool done() const { return index_ >= args_.size(); }
    std::string next() { return args_[index_++]; }
    std::string value(const std::string& option) {
        if (done()) {
            usage_error(option + " needs a value");
        }
        return next();
    }

  private:
    std::vector<std::string> args_;
    std::size_t index_ = 0;
};

std::uint16_t parse_port(const std::string& text) {
    const std::uint64_t port = parse_size(text, "--port");
    if (port == 0 || port > 65535) {
        usage_error("--port must be 1..65535");
    }
    return static_cast<std::uint16_t>(port);
}

// Pinned registrations of large buffers need a large RLIMIT_MEMLOCK, and the
// library's default pinned budget follows it: raise it as far as allowed.
void raise_memlock_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0) {
        return;
    }
    const rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
    if (setrlimit(RLIMIT_MEMLOCK, &unlimited) == 0) {
        return;
    }
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_MEMLOCK, &limit);
}

std::atomic<bool> g_stop{false};

int server_main(Arguments& args) {
    ServerConfig config;
    while (!args.done()) {
        const std::string arg = args.next();
        if (arg == "--port") {
            config.port = parse_port(args.value(arg));
        } else if (arg == "--device") {
            config.device = args.value(arg);
        } else if (arg == "--max-buffer") {
            config.max_buffer_bytes = parse_size(args.value(arg), arg);
        } else if (arg == "--exit-after") {
            config.exit_after = parse_size(args.value(arg), arg);
        } else if (arg == "--fault-ahead") {
            config.fault_ahead = parse_fault_ahead(args.value(arg));
        } else if (arg == "--verbose" || arg == "-v") {
            config.verbose = true;
        } else {
            usage_error("server: unknown argument '" + arg + "'");
        }
    }
    std::signal(SIGINT, [](int) { g_stop = true; });
    std::signal(SIGTERM, [](int) { g_stop = true; });
    const bool failed_sessions = run_server(config, g_stop, [&](std::uint16_t port) {
        std::cerr << "odp-perf server: listening on port " << port << " (device "
                  << (config.device.empty() ? "first" : config.device) << ")\n";
    });
    // With --exit-after, a session that failed makes the server fail too (scripts rely on it).
    return config.exit_after != 0 && failed_sessions ? 1 : 0;
}

void print_client_header(const ClientSpec& spec, const ClientResult& first) {
    std::cout << "odp-perf client: " << to_string(spec.test) << " to " << spec.host << ":"
              << spec.port << ", local mode " << first.local_choice << ", server mode "
              << odp::to_string(first.server_mode) << " (asked " << odp::to_string(spec.peer_mode)
              << "), " << spec.depth << " in flight, queue pairs connected by "
              << to_string(first.connection) << "\n";
}

int client_main(Arguments& args) {
    ClientSpec spec;
    bool sweep = false;
    bool latency = false;
    std::uint64_t latency_iterations = 1000;
    while (!args.done()) {
        const std::string arg = args.next();
        if (arg == "--port") {
            spec.port = parse_port(args.value(arg));
        } else if (arg == "--device") {
            spec.device = args.value(arg);
        } else if (arg == "--cm") {
            spec.cm = true;
        } else if (arg == "--test") {
            spec.test = parse_test(args.value(arg));
        } else if (arg == "--size") {
            spec.size = parse_size(args.value(arg), arg);
        } else if (arg == "--sweep") {
            sweep = true;
        } else if (arg == "--iters") {
            spec.iterations = parse_size(args.value(arg), arg);
        } else if (arg == "--duration") {
            spec.duration_s = std::stod(args.value(arg));
        } else if (arg == "--mode") {
            spec.mode = parse_mode(args.value(arg));
        } else if (arg == "--peer-mode") {
            spec.peer_mode = parse_mode(args.value(arg));
        } else if (arg == "--lat") {
            latency = true;
        } else if (arg == "--lat-iters") {
            latency_iterations = parse_size(args.value(arg), arg);
        } else if (arg == "--fault-ahead") {
            spec.fault_ahead = parse_fault_ahead(args.value(arg));
        } else if (arg == "--slots") {
            spec.slots = static_cast<std::uint32_t>(parse_size(args.value(arg), arg));
        } else if (arg == "--depth") {
            spec.depth = static_cast<std::uint32_t>(parse_size(args.value(arg), arg));
        } else if (!arg.empty() && arg[0] != '-' && spec.host.empty()) {
            spec.host = arg;
        } else {
            usage_error("client: unknown argument '" + arg + "'");
        }
    }
    if (spec.host.empty()) {
        usage_error("client needs the server's HOST");
    }
    if (spec.size == 0 || spec.iterations == 0 || spec.depth == 0) {
        usage_error("--size, --iters and --depth must be at least 1");
    }
    spec.latency_iterations = latency ? latency_iterations : 0;
    if (spec.cm && spec.device.empty()) {
        spec.device = odp::verbs::cm_resolve_device(spec.host, spec.port, std::chrono::seconds(5));
    }
    const std::shared_ptr<odp::Device> device = odp::Device::open({spec.device, std::nullopt});
    std::vector<std::uint64_t> sizes{spec.size};
    if (sweep) {
        const Sweep all = sweep_sizes(device->max_pinned_bytes());
        sizes = all.sizes;
        if (all.left_out_from != 0) {
            std::cout << "sweep: sizes from " << odp::format_bytes(all.left_out_from)
                      << " left out: above half the pinned budget of "
                      << odp::format_bytes(device->max_pinned_bytes()) << " ("
                      << device->budget_source() << ")\n";
        }
    }
    const std::uint32_t depth = spec.depth;
    bool header = false;
    bool data_ok = true;
    for (const std::uint64_t size : sizes) {
        spec.size = size;
        // A sweep keeps its buffers within the budget; one --size is taken as asked.
        spec.depth = sweep ? depth_within_budget(device->max_pinned_bytes(), size, depth) : depth;
        const ClientResult result = run_client_test(*device, spec);
        if (!header) {
            print_client_header(spec, result);
            std::cout << " #bytes     #iterations  #in-flight  BW average[MB/sec]   MsgRate[Mpps]";
            if (latency) {
                std::cout << "   t_min[usec]  t_p50[usec]  t_avg[usec]  t_p99[usec]  t_max[usec]";
            }
            std::cout << "   verified\n";
            header = true;
        }
        std::cout << " " << std::left << std::setw(11) << size << std::setw(13) << result.operations
                  << std::setw(12) << spec.depth << std::setw(20) << std::fixed
                  << std::setprecision(2) << result.bw_MBps << std::setw(15) << std::setprecision(6)
                  << result.msg_rate_Mpps << std::right;
        if (result.latency) {
            std::cout << std::setprecision(2) << std::setw(12) << result.latency->min_us
                      << std::setw(13) << result.latency->p50_us << std::setw(13)
                      << result.latency->avg_us << std::setw(13) << result.latency->p99_us
                      << std::setw(13) << result.latency->max_us;
        }
        std::cout << "   " << result.verified_bytes << " B, "
                  << (result.mismatched_bytes == 0
                          ? std::string("ok")
                          : "MISMATCH " + std::to_string(result.mismatched_bytes) + " B")
                  << "\n";
        data_ok = data_ok && result.mismatched_bytes == 0;
    }
    if (!data_ok) {
        std::cerr << "odp-perf client: some bytes did not arrive as sent (see 'verified')\n";
        return 1;
    }
    return 0;
}

int compare_main(Arguments& args, const std::string& command_line) {
    CompareConfig config;
    config.command_line = command_line;
    std::vector<std::string> merge;
    while (!args.done()) {
        const std::string arg = args.next();
        if (arg == "--merge") {
            merge.push_back(args.value(arg));
        } else if (arg == "--device") {
            config.device = args.value(arg);
        } else if (arg == "--cm") {
            config.cm = true;
        } else if (arg == "--json") {
            config.json_path = args.value(arg);
        } else if (arg == "--plot") {
            config.plot_path = args.value(arg);
        } else if (arg == "--iters") {
            config.bw_iterations = parse_size(args.value(arg), arg);
        } else if (arg == "--lat-iters") {
            config.lat_iterations = parse_size(args.value(arg), arg);
        } else if (arg == "--reg-max") {
            config.reg_max = parse_size(args.value(arg), arg);
        } else if (arg == "--rounds") {
            const std::uint64_t rounds = parse_size(args.value(arg), arg);
            if (rounds == 0 || rounds > 100) {
                usage_error("--rounds takes 1 to 100, got " + std::to_string(rounds));
            }
            config.rounds = static_cast<std::uint32_t>(rounds);
        } else if (arg == "--sweep") {
            config.sweep = true;
        } else if (arg == "--sizes") {
            config.sizes.clear();
            const std::string list = args.value(arg);
            for (const std::string& item : comma_separated(list)) {
                const std::uint64_t size = parse_size(item, arg);
                if (size == 0) {
                    usage_error("--sizes wants sizes of at least 1 byte, got '" + list + "'");
                }
                config.sizes.push_back(size);
            }
        } else if (arg == "--budget") {
            config.budget = parse_size(args.value(arg), arg);
        } else if (arg == "--fault-ahead") {
            config.fault_ahead = parse_fault_ahead(args.value(arg));
        } else if (arg == "--working-set") {
            config.working_set = parse_size(args.value(arg), arg);
        } else if (arg == "--working-set-sweep") {
            config.working_set_sweep = true;
        } else if (arg == "--only") {
            const std::string list = args.value(arg);
            config.only.emplace();
            for (const std::string& section : comma_separated(list)) {
                if (std::find(std::begin(compare_sections), std::end(compare_sections), section) ==
                    std::end(compare_sections)) {
                    usage_error(
                        "--only takes a list of traffic, register, first-touch, budget, "
                        "remap, faults and working-set, got '" +
                        list + "'");
                }
                config.only->insert(section);
            }
        } else if (arg == "--stream-size") {
            const std::string size = args.value(arg);
            config.stream_size = parse_size(size, arg);
            if (config.stream_size == 0 || config.stream_size % (2 << 20) != 0) {
                usage_error("--stream-size takes a multiple of the 2 MiB chunk, got " + size);
            }
        } else if (arg == "--fault-chunks") {
            const std::uint64_t chunks = parse_size(args.value(arg), arg);
            if (chunks < 2 || chunks > 1024) {
                usage_error("--fault-chunks takes 2 to 1024, got " + std::to_string(chunks));
            }
            config.parallel_fault_chunks = static_cast<std::size_t>(chunks);
        } else if (arg == "--sources") {
            config.sources.clear();
            const std::string list = args.value(arg);
            for (const std::string& name : comma_separated(list)) {
                const std::optional<odp::MonitorKind> source =
                    name == "auto"          ? std::optional(odp::MonitorKind::Auto)
                    : name == "module"      ? std::optional(odp::MonitorKind::Module)
                    : name == "userfaultfd" ? std::optional(odp::MonitorKind::Userfaultfd)
                                            : std::nullopt;
                if (!source || std::find(config.sources.begin(), config.sources.end(), *source) !=
                                   config.sources.end()) {
                    usage_error("--sources takes distinct auto, module and userfaultfd, got '" +
                                list + "'");
                }
                config.sources.push_back(*source);
            }
        } else if (arg == "--quick") {
            // A short run for tests: fewer iterations, registration up to 64 MiB.
            config.bw_iterations = 300;
            config.lat_iterations = 100;
            config.rounds = 2;
            config.reg_max = 64ULL << 20;
            config.budget_iterations = 600;
            config.remap_rounds = 3;
            config.stream_size = 32ULL << 20;
            config.parallel_fault_chunks = 16;
        } else {
            usage_error("compare: unknown argument '" + arg + "'");
        }
    }
    if (config.reg_max < 4096 || config.bw_iterations == 0 || config.lat_iterations == 0) {
        usage_error("--reg-max must be at least 4K, --iters and --lat-iters at least 1");
    }
    CompareResult result;
    if (merge.empty()) {
        result = run_compare(config);
    } else {
        std::vector<CompareResult> runs;
        for (const std::string& path : merge) {
            runs.push_back(read_compare_json(path));
        }
        result = merge_runs(runs);
        std::cout << "odp-perf compare: " << runs.size()
                  << " runs merged (values: the mean over the runs; ratios and intervals: every "
                     "round of every run)\n";
    }
    print_table(result, std::cout);
    if (config.json_path) {
        std::ofstream json(*config.json_path);
        json << to_json(result, command_line);
        if (!json.flush()) {
            odp::throw_errno("writing " + *config.json_path);
        }
        std::cout << "\nJSON written to " << *config.json_path << "\n";
    }
    if (config.plot_path) {
        plot(result, *config.plot_path);
        std::cout << "plot written to " << *config.plot_path << "\n";
    }
    // Wrong data is a failure of the run; slow numbers are not.
    for (const Row& row : result.rows) {
        const bool expected_stale = row.mode == "pinned" && row.test == "remap";
        const bool device_defect =
            row.mode == "native" && result.native_check.ran && !result.native_check.ok;
        if (row.mismatched_bytes != 0 && device_defect) {
            std::cerr << "odp-perf compare: native " << row.test
                      << ": data mismatch, reproduced without odp-layer (device/kernel defect): "
                      << result.native_check.detail << "\n";
            continue;
        }
        if (row.mismatched_bytes != 0 && !expected_stale) {
            std::cerr << "odp-perf compare: " << row.mode << " " << row.test << ": data mismatch\n";
            return 1;
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
        std::cout << kUsage;
        return argc < 2 ? 2 : 0;
    }
    std::string command_line = "odp-perf";
    for (int i = 1; i < argc; ++i) {
        command_line += std::string(" ") + argv[i];
    }
    raise_memlock_limit();
    const std::string command = argv[1];
    Arguments args(argc, argv, 2);
    try {
        if (command == "server") {
            return server_main(args);
        }
        if (command == "client") {
            return client_main(args);
        }
        if (command == "compare") {
            return compare_main(args, command_line);
        }
        usage_error("unknown command '" + command + "'");
    } catch (const std::system_error& error) {
        std::cerr << "odp-perf " << command << ": " << error.what() << "\n";
        return 1;
    } catch (const std::exception& error) {
        std::cerr << "odp-perf " << command << ": " << error.what() << "\n";
        return 1;
    }
}
