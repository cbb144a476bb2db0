#include "measure.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <odp/error.hpp>
#include <odp/lease.hpp>
#include <optional>
#include <thread>

#include "traffic.hpp"

namespace odp_perf {
namespace {

using Clock = std::chrono::steady_clock;

constexpr odp::Access kBufferAccess =
    odp::Access::LocalWrite | odp::Access::RemoteWrite | odp::Access::RemoteRead;
constexpr std::uint32_t kSeed = 0x0dd5eed;

double micros_since(Clock::time_point start) {
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values.empty() ? 0.0 : values[values.size() / 2];
}

Row base_row(odp::Mode mode, std::string test, std::uint64_t size) {
    Row row;
    row.mode = std::string(odp::to_string(mode));
    row.test = std::move(test);
    row.size = size;
    return row;
}

void add_stats(Row& row, const odp::Stats& stats) {
    row.pinned_bytes_peak = std::max(row.pinned_bytes_peak, stats.peak_pinned_bytes);
    row.faults += stats.chunk_faults;
    row.invalidations += stats.total_invalidations();
    row.fault_ahead_hits += stats.fault_ahead_hits;
}

LinkSpec write_link(const Peer& peer, std::uint64_t size, std::uint32_t depth) {
    LinkSpec spec;
    spec.host = peer.host;
    spec.port = peer.port;
    spec.test = oob::TestKind::Write;
    spec.server_mode = odp::Mode::Pinned;  // the remote side stays the same for every mode
    spec.message_size = size;
    spec.buffer_size = next_power_of_two(static_cast<std::size_t>(size)) * depth;
    spec.depth = depth;
    spec.pattern_seed = kSeed;
    spec.cm = peer.cm;
    return spec;
}

// RDMA WRITEs of `message` bytes, `depth` in flight, over a local span.
WindowSpec write_window(std::size_t message, std::uint32_t depth, std::size_t span) {
    WindowSpec window;
    window.test = oob::TestKind::Write;
    window.size = message;
    window.stride = message;
    window.depth = depth;
    window.local_span = span;
    return window;
}

// translate + post + completion + release of one operation, in microseconds.
double timed_operation(PeerLink& link, TestMemory& memory, oob::TestKind test, std::size_t offset,
                       std::size_t size, std::size_t remote_offset) {
    const auto start = Clock::now();
    odp::Lease lease = memory.region.translate(memory.buffer.data() + offset, size, 4);
    post_operation(link, test, lease, link.remote(remote_offset, size), 0);
    wait_one(link);  // throws unless the work request succeeded
    lease.release();
    return micros_since(start);
}

// Wall time per chunk fault of `threads` threads faulting every chunk of a
// fresh region over `buffer` between them, a 4 KiB translate and its release
// each. Each thread takes the next chunk not yet taken: under emulation one
// vCPU ran at two thirds of the other's speed for seconds at a time (256
// chunks in 36 ms against 23 ms), and a fixed split timed the slower one
// alone for the last third of the round. Pinned mode is the kernel's
// reference: the threads register a pinned 2 MiB region per chunk (one
// ibv_reg_mr each), all dropped after the timing. The clock starts when the
// first thread wakes: waking a sleeping thread in a guest took milliseconds,
// the scale of a round, and is no part of a fault.
double time_chunk_faults(odp::Device& device, const MappedBuffer& buffer,
                         const odp::RegionOptions& options, unsigned threads, Row& row) {
    const bool pinned = options.mode == odp::Mode::Pinned;
    std::optional<odp::Region> region;
    if (!pinned) {
        region = device.register_region(buffer.data(), buffer.size(), kBufferAccess, options);
    }
    const std::size_t chunks = buffer.size() / options.chunk_size;
    std::vector<std::vector<odp::Region>> chunk_regions(threads);
    std::atomic<std::size_t> next_chunk{0};
    std::atomic<unsigned> ready{0};
    std::atomic<bool> go{false};
    std::once_flag started;
    Clock::time_point start;  // read after the join
    std::vector<std::exception_ptr> errors(threads);
    {
        std::vector<std::jthread> workers;
        // Declared after the workers: opens the start line before they are
        // joined, also when starting one of them threw.
        struct Opener {
            std::atomic<bool>& go;
            ~Opener() {
                go.store(true, std::memory_order_release);
                go.notify_all();
            }
        } opener{go};
        for (unsigned t = 0; t < threads; ++t) {
            workers.emplace_back([&, t] {
                ready.fetch_add(1);
                ready.notify_one();
                // Asleep, not spinning: the wake-up puts each thread on an
                // idle CPU. Spinning threads shared one of a guest's two
                // vCPUs for milliseconds (no speed-up measured at all).
                go.wait(false, std::memory_order_acquire);
                std::call_once(started, [&] { start = Clock::now(); });
                try {
                    for (std::size_t chunk = next_chunk.fetch_add(1); chunk < chunks;
                         chunk = next_chunk.fetch_add(1)) {
                        std::uint8_t* const at = buffer.data() + chunk * options.chunk_size;
                        if (pinned) {
                            chunk_regions[t].push_back(device.register_region(
                                at, options.chunk_size, kBufferAccess, options));
                        } else {
                            const odp::Lease lease = region->translate(at, 4096);
                        }
                    }
                } catch (...) {
                    errors[t] = std::current_exception();
                }
            });
        }
        for (unsigned count = ready.load(); count < threads; count = ready.load()) {
            ready.wait(count);
        }
    }
    const double elapsed = micros_since(start);
    for (const std::exception_ptr& error : errors) {
        if (error) {
            std::rethrow_exception(error);
        }
    }
    if (region) {
        const odp::Stats stats = region->stats();
        if (stats.chunk_faults != chunks) {
            odp::throw_error(EPROTO, std::to_string(threads) + " threads faulting " +
                                         std::to_string(chunks) + " fresh chunks counted " +
                                         std::to_string(stats.chunk_faults) + " chunk faults");
        }
        add_stats(row, stats);
    } else {
        for (const std::vector<odp::Region>& regions : chunk_regions) {
            for (const odp::Region& chunk : regions) {
                add_stats(row, chunk.stats());
            }
        }
    }
    return elapsed / static_cast<double>(chunks);
}

// Adds one pass of a stream to its row: bytes and time, one bandwidth per
// round, the median chunk-entry translate of the pass as one sample.
struct PassTotals {
    std::uint64_t bytes = 0;
    double seconds = 0;
};
void add_pass(Row& row, PassTotals& totals, const Window& pass, std::size_t message) {
    const std::uint64_t bytes = pass.operations * message;
    totals.bytes += bytes;
    totals.seconds += pass.seconds;
    row.iterations += pass.operations;
    row.round_bw_MBps.push_back(bandwidth_MBps(bytes, pass.seconds));
    row.bw_MBps = bandwidth_MBps(totals.bytes, totals.seconds);
    if (!pass.entry_translate_us.empty()) {
        row.first_touch_us_samples.push_back(median(pass.entry_translate_us));
        row.first_touch_us = median(row.first_touch_us_samples);
    }
}

}  // namespace

std::vector<Row> measure_parallel_faults(odp::Device& device, odp::Mode mode, std::size_t chunks,
                                         std::uint32_t rounds) {
    std::vector<Row> rows;
    for (const char* test : kFaultThreadTests) {
        rows.push_back(base_row(mode, test, 0));
    }
    try {
        const odp::RegionOptions options = region_options(mode, 0);
        const std::uint64_t bytes = chunks * options.chunk_size;
        if (device.max_pinned_bytes() < bytes) {
            odp::throw_error(ENOBUFS, "chunk faults of " + odp::format_bytes(bytes) +
                                          " need a budget that holds them, " +
                                          std::string(device.name()) + " has " +
                                          odp::format_bytes(device.max_pinned_bytes()));
        }
        const MappedBuffer buffer(static_cast<std::size_t>(bytes), options.chunk_size, true);
        // Not counted: the first registrations of a mapping pay one-off costs
        // of the kernel and, in a guest, of the emulator's code translation
        // (the first rounds took up to 5 times the later ones).
        for (const unsigned threads : {1U, 2U}) {
            Row warm_up;
            (void)time_chunk_faults(device, buffer, options, threads, warm_up);
        }
        for (std::uint32_t round = 0; round < rounds; ++round) {
            for (unsigned turn = 0; turn < 2; ++turn) {
                const unsigned threads = round % 2 == 0 ? turn + 1 : 2 - turn;
                Row& row = rows[threads - 1];
                row.first_touch_us_samples.push_back(
                    time_chunk_faults(device, buffer, options, threads, row));
                row.iterations += chunks;
            }
        }
        for (Row& row : rows) {
            row.size = bytes;
            row.first_touch_us = median(row.first_touch_us_samples);
        }
    } catch (const std::exception& error) {
        for (Row& row : rows) {
            row.error = error.what();
        }
    }
    return rows;
}

std::vector<Row> measure_stream_passes(const std::string& device_name, const Peer& peer,
                                       odp::Mode mode, const StreamSpec& spec) {
    constexpr std::size_t kMessage = 64 * 1024;
    constexpr std::uint32_t kDepth = 16;
    constexpr std::size_t kRemote = kMessage * kDepth;
    std::vector<Row> rows;
    for (const char* test : kStreamTests) {
        rows.push_back(base_row(mode, test, spec.size));
        rows.back().server_mode = "pinned";
        rows.back().depth = kDepth;
    }
    Row& first_pass = rows[0];
    Row& warm_pass = rows[1];
    Row& demand_pass = rows[2];
    try {
        const odp::RegionOptions ahead = region_options(mode, kMessage, spec.fault_ahead);
        const odp::RegionOptions demand = region_options(mode, kMessage, 0);
        if (spec.size == 0 || spec.size % ahead.chunk_size != 0) {
            odp::throw_error(EINVAL, "stream of " + odp::format_bytes(spec.size) +
                                         ": a multiple of the chunk size (" +
                                         odp::format_bytes(ahead.chunk_size) + ") is needed");
        }
        // The buffer and the chunks fault-ahead registers past its end fit:
        // the warm pass faults nothing.
        const std::uint64_t budget = spec.size + (spec.fault_ahead + 1) * ahead.chunk_size;
        const std::shared_ptr<odp::Device> device = odp::Device::open({device_name, budget});
        const std::uint64_t operations = spec.size / kMessage;
        std::array<PassTotals, 3> totals{};
        for (std::uint32_t round = 0; round < spec.rounds; ++round) {
            for (const bool with_ahead : {true, false}) {
                TestMemory memory;
                memory.buffer =
                    MappedBuffer(static_cast<std::size_t>(spec.size), ahead.chunk_size, true);
                // The pattern (write_link's seed) repeats every remote buffer's
                // length, so that the server can check what the last writes of
                // each slot left; each region has a fresh server buffer.
                for (std::size_t at = 0; at < memory.buffer.size(); at += kRemote) {
                    fill_pattern(memory.buffer.bytes().subspan(at, kRemote), kSeed, 0);
                }
                memory.region = device->register_region(memory.buffer.data(), memory.buffer.size(),
                                                        kBufferAccess, with_ahead ? ahead : demand);
                PeerLink link(*device, write_link(peer, kMessage, kDepth), memory.region.mode());
                WindowSpec window = write_window(kMessage, kDepth, memory.buffer.size());
                window.count = operations;
                window.time_translates_every = ahead.chunk_size;
                const Window pass = run_window(link, memory, window);
                Row& row = with_ahead ? first_pass : demand_pass;
                add_pass(row, totals[with_ahead ? 0 : 2], pass, kMessage);
                std::uint64_t done = pass.operations;
                const odp::Stats after_first = memory.region.stats();
                add_stats(row, after_first);
                if (with_ahead) {
                    window.first_op = operations;
                    window.time_translates_every = 0;
                    const Window warm = run_window(link, memory, window);
                    add_pass(warm_pass, totals[1], warm, kMessage);
                    done += warm.operations;
                    const odp::Stats after_warm = memory.region.stats();
                    warm_pass.faults += after_warm.chunk_faults - after_first.chunk_faults;
                    warm_pass.pinned_bytes_peak =
                        std::max(warm_pass.pinned_bytes_peak, after_warm.peak_pinned_bytes);
                }
                const oob::Report report = link.finish(oob::Done{done, done * kMessage, kSeed, 1});
                row.verified_bytes += report.verified_bytes;
                row.mismatched_bytes += report.mismatched_bytes;
            }
        }
    } catch (const std::exception& error) {
        for (Row& row : rows) {
            row.error = error.what();
        }
    }
    return rows;
}

std::vector<Row> measure_registration(odp::Device& device, odp::Mode mode,
                                      const std::vector<std::uint64_t>& sizes) {
    std::vector<Row> rows;
    for (const std::uint64_t size : sizes) {
        Row row = base_row(mode, "register", size);
        try {
            const odp::RegionOptions options = region_options(mode, 0);
            const MappedBuffer buffer(static_cast<std::size_t>(size), options.chunk_size, true);
            // The median of a few: the first registration of a fresh mapping
            // also pays one-off costs of the kernel (and, in a guest, of the
            // emulator) that are not the mode's. Five at every size: fewer
            // paired ratios give a goal no verdict (spread.hpp).
            const int repeats = 5;
            std::vector<double> samples;
            for (int i = 0; i < repeats; ++i) {
                const auto start = Clock::now();
                odp::Region region =
                    device.register_region(buffer.data(), buffer.size(), kBufferAccess, options);
                samples.push_back(micros_since(start));
                add_stats(row, region.stats());
            }
            row.reg_us = median(samples);
            row.reg_us_samples = std::move(samples);
            row.iterations = static_cast<std::uint64_t>(repeats);
        } catch (const std::exception& error) {
            row.error = error.what();
        }
        rows.push_back(std::move(row));
    }
    return rows;
}

FirstTouch::FirstTouch(odp::Mode mode, std::uint64_t size, bool prefetch)
    : row_(base_row(mode, prefetch ? "prefetch" : "first_touch", size)),
      mode_(mode),
      prefetch_(prefetch) {
    row_.server_mode = "pinned";
}

void FirstTouch::cold_start(odp::Device& device, const Peer& peer, bool counted, bool move_data) {
    if (!row_.error.empty()) {
        return;  // its first error is the row
    }
    try {
        const auto length = static_cast<std::size_t>(row_.size);
        const odp::RegionOptions options = region_options(mode_, length);
        TestMemory memory;
        memory.buffer = MappedBuffer(length, options.chunk_size, true);
        fill_pattern(memory.buffer.bytes(), kSeed, 0);
        auto start = Clock::now();
        memory.region =
            device.register_region(memory.buffer.data(), length, kBufferAccess, options);
        const double registration = micros_since(start);
        std::optional<PeerLink> link;
        if (move_data) {
            link.emplace(device, write_link(peer, length, 1), memory.region.mode());
        }
        double prefetch = 0;
        if (prefetch_) {
            start = Clock::now();
            memory.region.prefetch(memory.buffer.data(), length, odp::Prefetch::Read);
            prefetch = micros_since(start);
        }
        // First use: translate() alone is what the mode costs to make the
        // range usable (emulated: registers the chunk; pinned and native: a
        // lookup, pinned paid at registration, native pays in the NIC later).
        start = Clock::now();
        odp::Lease cold = memory.region.translate(memory.buffer.data(), length, 4);
        const double first_touch = micros_since(start);
        if (counted) {
            registrations_.push_back(registration);
            first_touches_.push_back(first_touch);
            if (prefetch_) {
                prefetches_.push_back(prefetch);
            }
        }
        if (!link) {
            return;
        }
        post_operation(*link, oob::TestKind::Write, cold, link->remote(0, length), 0);
        wait_one(*link);  // throws unless the write succeeded
        cold.release();
        row_.first_write_us = micros_since(start);
        std::vector<double> warm;
        for (int i = 0; i < 5; ++i) {
            warm.push_back(timed_operation(*link, memory, oob::TestKind::Write, 0, length, 0));
        }
        row_.warm_us = median(warm);
        row_.iterations = 6;
        const oob::Report report = link->finish(oob::Done{6, 6 * row_.size, kSeed, 1});
        row_.verified_bytes = report.verified_bytes;
        row_.mismatched_bytes = report.mismatched_bytes;
        add_stats(row_, memory.region.stats());
    } catch (const std::exception& error) {
        row_.error = error.what();
    }
}

Row FirstTouch::finish() && {
    if (row_.error.empty() && !first_touches_.empty()) {
        row_.reg_us = median(registrations_);
        row_.first_touch_us = median(first_touches_);
        row_.reg_us_samples = std::move(registrations_);
        row_.first_touch_us_samples = std::move(first_touches_);
        if (prefetch_) {
            row_.prefetch_us = median(prefetches_);
        }
    }
    return std::move(row_);
}

Row measure_budget(const std::string& device_name, const Peer& peer, odp::Mode mode,
                   const WorkingSetSpec& spec) {
    constexpr std::size_t kMessage = 64 * 1024;
    constexpr std::uint32_t kDepth = 16;
    Row row = base_row(mode, spec.test, spec.test == "budget" ? kMessage : spec.working_set);
    row.server_mode = "pinned";
    row.budget_bytes = spec.budget;
    try {
        const std::shared_ptr<odp::Device> device = odp::Device::open({device_name, spec.budget});
        const odp::RegionOptions options = region_options(mode, kMessage, spec.fault_ahead);
        TestMemory memory;
        memory.buffer =
            MappedBuffer(static_cast<std::size_t>(spec.working_set), options.chunk_size, true);
        fill_pattern(memory.buffer.bytes(), kSeed, 0);
        memory.region = device->register_region(memory.buffer.data(), memory.buffer.size(),
                                                kBufferAccess, options);
        PeerLink link(*device, write_link(peer, kMessage, kDepth), memory.region.mode());
        WindowSpec window_spec = write_window(kMessage, kDepth, memory.buffer.size());
        window_spec.random_seed = spec.random ? kSeed : 0;
        if (spec.warm_up != 0) {
            window_spec.count = spec.warm_up;
            run_window(link, memory, window_spec);
        }
        const odp::Stats before = memory.region.stats();
        window_spec.first_op = spec.warm_up;
        window_spec.count = spec.iterations;
        const Window window = run_window(link, memory, window_spec);
        const odp::Stats after = memory.region.stats();
        row.iterations = window.operations;
        row.bw_MBps = bandwidth_MBps(window.operations * kMessage, window.seconds);
        row.round_bw_MBps = {*row.bw_MBps};
        const auto hits = static_cast<double>(after.hits - before.hits);
        const auto misses = static_cast<double>(after.misses - before.misses);
        row.hit_rate = hits + misses > 0 ? hits / (hits + misses) : 1.0;
        link.finish(oob::Done{spec.warm_up + window.operations,
                              (spec.warm_up + window.operations) * kMessage, kSeed, 0});
        add_stats(row, after);
        row.faults = after.chunk_faults - before.chunk_faults;  // the measured writes'
        row.pinned_bytes_peak =
            std::max(after.peak_pinned_bytes, device->stats().peak_pinned_bytes);
        if (row.pinned_bytes_peak > spec.budget) {
            row.error = "pinned peak " + odp::format_bytes(row.pinned_bytes_peak) +
                        " exceeded the budget of " + odp::format_bytes(spec.budget);
        }
    } catch (const std::exception& error) {
        row.error = error.what();
    }
    return row;
}

Row measure_remap(odp::Device& device, const Peer& peer, odp::Mode mode, int rounds) {
    constexpr std::size_t kMessage = 64 * 1024;
    constexpr std::uint32_t kSlots = 16;
    constexpr std::size_t kLength = kMessage * kSlots;
    Row row = base_row(mode, "remap", kMessage);
    row.server_mode = "pinned";
    try {
        const odp::RegionOptions options = region_options(mode, kMessage);
        TestMemory source;
        TestMemory target;
        source.buffer = MappedBuffer(kLength, options.chunk_size, true);
        target.buffer = MappedBuffer(kLength, options.chunk_size, true);
        source.region =
            device.register_region(source.buffer.data(), kLength, kBufferAccess, options);
        target.region =
            device.register_region(target.buffer.data(), kLength, kBufferAccess, options);
        PeerLink link(device, write_link(peer, kMessage, kSlots), source.region.mode());
        WindowSpec spec;
        spec.size = kMessage;
        spec.stride = kMessage;
        spec.depth = kSlots;
        spec.count = kSlots;
        for (int round = 0; round < rounds; ++round) {
            const std::uint32_t seed = kSeed + static_cast<std::uint32_t>(round);
            fill_pattern(source.buffer.bytes(), seed, 0);
            spec.test = oob::TestKind::Write;
            run_window(link, source, spec);
            spec.test = oob::TestKind::Read;
            run_window(link, target, spec);
            // What the application sees in its current mapping is what counts.
            row.mismatched_bytes += count_mismatches(target.buffer.bytes(), seed, 0);
            row.verified_bytes += kLength;
            row.iterations += 2 * kSlots;
            // Free and reallocate both buffers at the same addresses.
            source.buffer.remap(0, kLength);
            target.buffer.remap(0, kLength);
        }
        link.finish(oob::Done{row.iterations, row.iterations * kMessage, kSeed, 0});
        add_stats(row, source.region.stats());
        add_stats(row, target.region.stats());
    } catch (const std::exception& error) {
        row.error = error.what();
    }
    return row;
}

}  // namespace odp_perf
