// The complete example of docs/guide.md (kept identical by the unit test
// GuideExample.MatchesTheGuide): register a buffer, translate, post an RDMA
// WRITE, poll, release; then let the peer write into an exposed range.
// It connects the device to itself (loopback), so one device is enough.
//
//   odp-guide-example [device [mode]]   (defaults: the first device, auto)
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/region.hpp>
#include <odp/verbs.hpp>
#include <odp/verbs_cm.hpp>

int main(int argc, char** argv) try {
    using namespace std::chrono_literals;
    constexpr std::size_t size = 3 << 20;  // pinned mode pins both: 6 MiB

    // The device, and a loopback connection: a queue pair connected to itself
    // (InfiniBand, RoCE) or, on iWARP, to a second one through RDMA CM.
    odp::DeviceOptions device_options;
    device_options.name = argc > 1 ? argv[1] : "";
    const auto device = odp::Device::open(device_options);
    std::cout << "device " << device->name() << ", pinned budget "
              << odp::format_bytes(device->max_pinned_bytes()) << " from "
              << device->budget_source() << "\n"
              << odp::to_string(device->caps());
    const odp::verbs::CqPtr cq = odp::verbs::create_cq(*device->context(), 16);
    odp::verbs::LoopbackConnection loopback(*device->pd(), *cq, *cq);
    odp::verbs::RcQueuePair& qp = loopback.qp();

    // Two buffers, registered on demand: nothing is pinned yet.
    auto* source = static_cast<char*>(
        mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    auto* target = static_cast<char*>(
        mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (source == MAP_FAILED || target == MAP_FAILED) {
        odp::throw_errno("mmap of the example buffers");
    }
    const odp::Access access = odp::Access::LocalWrite | odp::Access::RemoteWrite;
    odp::RegionOptions options;  // Mode::Auto: native if the device can, else emulated
    options.mode = argc > 2 ? odp::parse_mode(argv[2]) : odp::Mode::Auto;
    odp::Region sources = device->register_region(source, size, access, options);
    odp::Region targets = device->register_region(target, size, access, options);
    std::cout << "source region: " << sources.describe() << "\n";

    // The peer side: expose 1 MiB of `target` (registers and leases it).
    std::memset(source, 'x', size);
    odp::Exposure exposure = targets.expose(target + 4096, 1 << 20);

    // Our side: translate the bytes to send into SGEs (faulting chunks in),
    // post one RDMA WRITE per remote segment, poll, release.
    std::size_t offset = 0;
    for (const odp::RemoteSegment& segment : exposure.segments()) {
        odp::Lease lease = sources.translate(source + offset, segment.length, 4);
        qp.post_write(lease.sges(), segment.address, segment.rkey, /*wr_id=*/offset);
        (void)odp::verbs::wait_completion(*cq, 10s);  // throws on error or timeout
        if (lease.release()) {
            std::cout << "the source changed under the write: send it again\n";
        }
        offset += segment.length;
    }
    if (exposure.release()) {
        std::cerr << "the target's mapping changed while exposed: data is not there\n";
        return 1;
    }
    for (std::size_t i = 0; i < (1 << 20); ++i) {
        if (target[4096 + i] != 'x') {
            std::cerr << "byte " << i << " did not arrive\n";
            return 1;
        }
    }
    std::cout << "moved " << odp::format_bytes(offset) << " with RDMA WRITE\n"
              << "source region statistics:\n"
              << sources.stats() << "device totals (JSON): " << odp::to_json(device->stats())
              << "\n";
    munmap(source, size);  // the regions do not own the memory
    munmap(target, size);
    return 0;
} catch (const odp::Error& error) {
    std::cerr << "odp-guide-example: " << error.what() << "\n";
    return 2;
}
