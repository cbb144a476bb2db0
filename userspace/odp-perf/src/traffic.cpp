#include "traffic.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <odp/error.hpp>
#include <odp/lease.hpp>

namespace odp_perf {
namespace {

using Clock = std::chrono::steady_clock;

constexpr odp::Access kBufferAccess =
    odp::Access::LocalWrite | odp::Access::RemoteWrite | odp::Access::RemoteRead;

double micros(Clock::duration d) {
    return std::chrono::duration<double, std::micro>(d).count();
}

const char* operation_name(oob::TestKind test) {
    switch (test) {
        case oob::TestKind::Write:
            return "RDMA WRITE";
        case oob::TestKind::Read:
            return "RDMA READ";
        case oob::TestKind::Send:
            return "SEND";
    }
    return "operation";
}

// splitmix64's finaliser: a well-spread value for every input.
std::uint64_t mix(std::uint64_t x) noexcept {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

void check_completion(const ibv_wc& wc, oob::TestKind test) {
    if (wc.status != IBV_WC_SUCCESS) {
        odp::throw_error(EIO, std::string(operation_name(test)) +
                                  " completion failed: " + ibv_wc_status_str(wc.status) +
                                  " (wr_id " + std::to_string(wc.wr_id) + ", vendor error " +
                                  std::to_string(wc.vendor_err) + ")");
    }
}

}  // namespace

Window run_window(PeerLink& link, TestMemory& memory, const WindowSpec& spec) {
    const std::uint64_t slots = spec.slots != 0 ? spec.slots : spec.depth;
    const std::size_t local_span = spec.local_span != 0 ? spec.local_span : spec.stride * slots;
    // Like perftest, only every signal_every-th work request asks for a
    // completion: RC completes in order, so it also completes those before it
    // and their leases are released with it.
    // At random offsets the leases in flight can hold more chunks than the
    // budget: a translate then throws BackPressure, and the window drains
    // before it is retried, which needs a completion for the last request
    // posted: every request is signaled.
    const std::uint64_t signal_every =
        spec.random_seed != 0
            ? 1
            : std::max<std::uint64_t>(1, std::min<std::uint64_t>(spec.depth / 4, 16));
    bool last_signaled = true;
    std::uint64_t post_after = 0;  // after BackPressure: wait until this many completed
    std::vector<odp::Lease> leases(spec.depth);
    std::array<ibv_wc, 16> completions{};
    Window window;
    std::uint64_t posted = 0;
    std::uint64_t completed = 0;
    const auto start = Clock::now();
    const auto stop_posting_at = spec.duration_s
                                     ? start + std::chrono::duration_cast<Clock::duration>(
                                                   std::chrono::duration<double>(*spec.duration_s))
                                     : Clock::time_point::max();
    auto last_progress = start;  // when the current run of empty polls began
    std::uint64_t empty_polls = 0;
    bool posting = true;
    while (posting || completed < posted) {
        if (posting &&
            (posted >= spec.count || (spec.duration_s && Clock::now() >= stop_posting_at))) {
            posting = false;
        }
        while (posting && posted - completed < spec.depth && posted < spec.count &&
               completed >= post_after) {
            const std::uint64_t op = spec.first_op + posted;
            const std::size_t local_offset =
                spec.random_seed == 0
                    ? static_cast<std::size_t>(op * spec.stride % local_span)
                    : static_cast<std::size_t>(mix(op ^ mix(spec.random_seed)) %
                                               (local_span / spec.stride) * spec.stride);
            const std::size_t remote_offset = static_cast<std::size_t>(op % slots) * spec.stride;
            const bool last =
                posted + 1 == spec.count || (spec.duration_s && Clock::now() >= stop_posting_at);
            const bool signaled =
                last || (posted + 1) % signal_every == 0 || posted + 1 - completed == spec.depth;
            odp::Lease lease;
            try {
                const bool timed = spec.time_translates_every != 0 &&
                                   local_offset % spec.time_translates_every == 0;
                const auto translate_start = timed ? Clock::now() : Clock::time_point{};
                lease = memory.region.translate(memory.buffer.data() + local_offset, spec.size, 4);
                if (timed) {
                    window.entry_translate_us.push_back(
                        std::chrono::duration<double, std::micro>(Clock::now() - translate_start)
                            .count());
                }
            } catch (const odp::BackPressure&) {
                // The budget is full of chunks leased by requests in flight:
                // as an application does, complete some and retry.
                if (posted == completed || !last_signaled) {
                    throw;
                }
                post_after = completed + 1;
                break;
            }
            post_operation(link, spec.test, lease, link.remote(remote_offset, spec.size), posted,
                           signaled);
            last_signaled = signaled;
            leases[posted % spec.depth] = std::move(lease);
            ++posted;
            if (last) {
                posting = false;
            }
        }
        const int n =
            ibv_poll_cq(&link.cq(), static_cast<int>(completions.size()), completions.data());
        if (n < 0) {
            odp::throw_error(EIO, "ibv_poll_cq failed during the bandwidth test");
        }
        for (int i = 0; i < n; ++i) {
            const ibv_wc& wc = completions[static_cast<std::size_t>(i)];
            check_completion(wc, spec.test);
            for (; completed <= wc.wr_id; ++completed) {
                window.invalidated += leases[completed % spec.depth].release() ? 1 : 0;
            }
        }
        // The clock only every 1024 empty polls: where it is not in the vDSO
        // (an emulated guest's clocksource) each read is a system call.
        if (n > 0) {
            empty_polls = 0;
        } else if (++empty_polls % 1024 == 0) {
            const auto now = Clock::now();
            if (empty_polls == 1024) {
                last_progress = now;
            } else if (now - last_progress > 10s) {
                odp::throw_error(ETIMEDOUT,
                                 std::to_string(posted - completed) + " " +
                                     operation_name(spec.test) +
                                     "s did not complete within 10 s (is the peer alive?)");
            }
        }
    }
    window.operations = completed;
    window.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return window;
}

double bandwidth_MBps(std::uint64_t bytes, double seconds) {
    return seconds > 0 ? static_cast<double>(bytes) / seconds / (1024.0 * 1024.0) : 0;
}

LatencySummary summarize(std::vector<double> samples) {
    LatencySummary summary;
    if (samples.empty()) {
        return summary;
    }
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) {
        const auto index =
            static_cast<std::size_t>(std::ceil(q * static_cast<double>(samples.size()))) - 1;
        return samples[std::min(index, samples.size() - 1)];
    };
    summary.min_us = samples.front();
    summary.max_us = samples.back();
    summary.p50_us = at(0.50);
    summary.p99_us = at(0.99);
    summary.avg_us =
        std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(samples.size());
    return summary;
}

void post_operation(PeerLink& link, oob::TestKind test, const odp::Lease& lease,
                    const RemoteTarget& target, std::uint64_t wr_id, bool signaled) {
    switch (test) {
        case oob::TestKind::Write:
            link.qp().post_write(lease.sges(), target.address, target.rkey, wr_id, signaled);
            return;
        case oob::TestKind::Read:
            link.qp().post_read(lease.sges(), target.address, target.rkey, wr_id, signaled);
            return;
        case oob::TestKind::Send:
            link.await_receive();
            link.qp().post_send(lease.sges(), wr_id, signaled);
            return;
    }
}

ibv_wc wait_one(PeerLink& link, std::chrono::milliseconds timeout) {
    return odp::verbs::wait_completion(link.cq(), timeout);
}

ClientResult run_client_test(odp::Device& device, const ClientSpec& spec) {
    if (spec.size == 0) {
        odp::throw_error(EINVAL, "--size must be at least 1 byte");
    }
    if (spec.depth == 0) {
        odp::throw_error(EINVAL, "--depth must be at least 1");
    }
    ClientResult result;
    const std::size_t size = static_cast<std::size_t>(spec.size);
    const std::size_t stride = next_power_of_two(size);
    // SEND needs a receive per message in flight, each in its own buffer.
    const std::uint32_t slots = spec.test == oob::TestKind::Send || spec.slots == 0
                                    ? spec.depth
                                    : std::min(spec.slots, spec.depth);
    const std::size_t buffer_size = stride * slots;
    result.local_choice = describe_choice(device, spec.mode, kBufferAccess);
    const odp::RegionOptions options =
        region_options(device.resolve(spec.mode, kBufferAccess), stride, spec.fault_ahead);

    TestMemory memory;
    memory.buffer = MappedBuffer(buffer_size, options.chunk_size, true);
    // Sources carry the pattern; a READ target starts as its complement.
    fill_pattern(memory.buffer.bytes(), spec.pattern_seed, 0, spec.test == oob::TestKind::Read);
    memory.region =
        device.register_region(memory.buffer.data(), buffer_size, kBufferAccess, options);
    result.local_mode = memory.region.mode();

    LinkSpec link_spec;
    link_spec.host = spec.host;
    link_spec.port = spec.port;
    link_spec.test = spec.test;
    link_spec.server_mode = spec.peer_mode;
    link_spec.message_size = spec.size;
    link_spec.buffer_size = buffer_size;
    link_spec.depth = spec.depth;
    link_spec.pattern_seed = spec.pattern_seed;
    link_spec.cm = spec.cm;
    PeerLink link(device, link_spec, result.local_mode);
    result.server_mode = link.server_mode();
    result.connection = link.connection();

    // Warm-up: one pass over every slot, so "warm" numbers do not include
    // first-touch registration (measured separately).
    WindowSpec window_spec;
    window_spec.test = spec.test;
    window_spec.size = size;
    window_spec.stride = stride;
    window_spec.depth = spec.depth;
    window_spec.slots = slots;
    window_spec.count = spec.depth;
    std::uint64_t operations = run_window(link, memory, window_spec).operations;
    if (spec.bandwidth) {
        window_spec.first_op = operations;
        window_spec.count = spec.duration_s ? UINT64_MAX : spec.iterations;
        window_spec.duration_s = spec.duration_s;
        const Window window = run_window(link, memory, window_spec);
        operations += window.operations;
        result.operations = window.operations;
        result.bytes = window.operations * spec.size;
        result.seconds = window.seconds;
        result.bw_MBps = bandwidth_MBps(result.bytes, window.seconds);
        result.msg_rate_Mpps =
            window.seconds > 0 ? static_cast<double>(window.operations) / window.seconds / 1e6 : 0;
        result.leases_invalidated += window.invalidated;
    }
    if (spec.latency_iterations > 0) {
        std::vector<double> samples;
        samples.reserve(spec.latency_iterations);
        for (std::uint64_t i = 0; i < spec.latency_iterations; ++i) {
            const std::uint32_t slot = static_cast<std::uint32_t>(operations % slots);
            const std::size_t offset = std::size_t{slot} * stride;
            const auto start = Clock::now();
            odp::Lease lease = memory.region.translate(memory.buffer.data() + offset, size, 4);
            post_operation(link, spec.test, lease, link.remote(offset, size), slot);
            check_completion(wait_one(link), spec.test);
            result.leases_invalidated += lease.release() ? 1 : 0;
            samples.push_back(micros(Clock::now() - start));
            ++operations;
        }
        result.latency = summarize(samples);
        result.latency_samples_us = std::move(samples);
    }

    if (spec.test == oob::TestKind::Read) {
        const std::uint64_t read_slots = std::min<std::uint64_t>(operations, slots);
        for (std::uint64_t slot = 0; slot < read_slots; ++slot) {
            const std::size_t offset = static_cast<std::size_t>(slot) * stride;
            result.mismatched_bytes += count_mismatches(memory.buffer.bytes().subspan(offset, size),
                                                        spec.pattern_seed, offset);
            result.verified_bytes += size;
        }
    }
    const oob::Done done{operations, operations * spec.size, spec.pattern_seed,
                         static_cast<std::uint8_t>(spec.test == oob::TestKind::Read ? 0 : 1)};
    result.server_report = link.finish(done);
    result.verified_bytes += result.server_report.verified_bytes;
    result.mismatched_bytes += result.server_report.mismatched_bytes;
    result.local_stats = memory.region.stats();
    return result;
}

}  // namespace odp_perf
