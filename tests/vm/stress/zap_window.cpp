// odp-zap-window: a chunk faulted in while madvise(MADV_DONTNEED) is still
// zapping the range, after its invalidation event was delivered (found by
// odp-stress, issue 13 item 9).
//
// Both sources report DONTNEED before the pages go: odp_mirror.ko queues the
// event in the notifier's invalidate_range_start, userfaultfd sends REMOVE
// before zapping. Once the event is delivered, the library considers the
// chunk handled; a translate() that faults the chunk again while the zap is
// still walking the range pins (ibv_reg_mr) pages that the zap removes a
// moment later, and nothing reports that second step: the lease moves bytes
// to or from pages that are no longer mapped, and release() says "no change".
//
// The window is widened, not waited for: the zap covers 64 MiB of 4 KiB pages
// (tens of milliseconds under emulation) and the translate of its last page
// starts as soon as the region has counted the event. Each attempt then lands
// an RDMA READ response in the leased page and releases: a release that
// reports no change while the current page does not hold the bytes is a
// silent error. Exit 1 if any attempt had one.
//
//   odp-zap-window --source module|userfaultfd [--attempts N] [--device rxe0]
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/region.hpp>
#include <odp/verbs.hpp>
#include <string>
#include <thread>

namespace {

using namespace std::chrono_literals;

constexpr std::size_t zap_bytes = std::size_t{64} << 20;
constexpr std::size_t page = 4096;

struct Mapping {
    explicit Mapping(std::size_t length_in) : length(length_in) {
        void* mapped =
            ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mapped == MAP_FAILED) {
            odp::throw_errno("mmap " + odp::format_bytes(length));
        }
        data = static_cast<unsigned char*>(mapped);
    }
    ~Mapping() { ::munmap(data, length); }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;

    unsigned char* data = nullptr;
    std::size_t length = 0;
};

int run(odp::MonitorKind source, int attempts, const std::string& device_name) {
    odp::DeviceOptions device_options;
    device_options.name = device_name;
    const auto device = odp::Device::open(device_options);
    const odp::verbs::CqPtr cq = odp::verbs::create_cq(*device->context(), 16);
    odp::verbs::RcQueuePair qp(*device->pd(), *cq, *cq);
    qp.connect(qp.local_endpoint());
    const Mapping staging(page);
    const odp::verbs::MrPtr staging_mr = odp::verbs::reg_mr(
        *device->pd(), staging.data, page, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);

    const Mapping memory(zap_bytes);
    // 4 KiB pages: a zap of huge pages is over too quickly to hit.
    (void)::madvise(memory.data, zap_bytes, MADV_NOHUGEPAGE);
    odp::RegionOptions options;
    options.mode = odp::Mode::Emulated;
    options.monitor = source;
    odp::Region region = device->register_region(
        memory.data, zap_bytes, odp::Access::LocalWrite | odp::Access::RemoteRead, options);
    unsigned char* const last = memory.data + zap_bytes - page;

    int silent = 0;
    for (int attempt = 0; attempt < attempts; ++attempt) {
        std::memset(memory.data, 0x11, zap_bytes);
        region.translate(last, page).release();  // registered before the zap
        const std::uint64_t before = region.stats().total_invalidations();
        std::thread zap([&] { ::madvise(memory.data, zap_bytes, MADV_DONTNEED); });
        while (region.stats().total_invalidations() == before) {
            std::this_thread::yield();
        }
        odp::Lease lease = region.translate(last, page);
        zap.join();
        std::memset(staging.data, 0x77, page);
        qp.post_read(lease.sges(), reinterpret_cast<std::uintptr_t>(staging.data), staging_mr->rkey,
                     static_cast<std::uint64_t>(attempt) + 1);
        (void)odp::verbs::wait_completion(*cq, 30s);
        const bool changed = lease.release();
        const bool landed = last[0] == 0x77 && last[page - 1] == 0x77;
        std::cout << "attempt " << attempt << ": release "
                  << (changed ? "reported a change" : "reported no change")
                  << ", the current page holds " << (landed ? "the bytes" : "zeros (stale)")
                  << "\n";
        silent += !changed && !landed ? 1 : 0;
    }
    std::cout << "odp-zap-window (" << odp::to_string(source) << "): " << silent << " of "
              << attempts << " attempts were silent errors\n";
    return silent == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    odp::MonitorKind source = odp::MonitorKind::Auto;
    int attempts = 10;
    std::string device = "rxe0";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string option = argv[i];
        const std::string value = argv[i + 1];
        if (option == "--source" && (value == "module" || value == "userfaultfd")) {
            source = value == "module" ? odp::MonitorKind::Module : odp::MonitorKind::Userfaultfd;
        } else if (option == "--attempts") {
            attempts = std::stoi(value);
        } else if (option == "--device") {
            device = value;
        } else {
            std::cerr << "usage: odp-zap-window --source module|userfaultfd [--attempts N] "
                         "[--device NAME]\n";
            return 2;
        }
    }
    if (source == odp::MonitorKind::Auto || attempts < 1) {
        std::cerr << "usage: odp-zap-window --source module|userfaultfd [--attempts N] "
                     "[--device NAME]\n";
        return 2;
    }
    try {
        return run(source, attempts, device);
    } catch (const std::exception& error) {
        std::cerr << "odp-zap-window: " << error.what() << "\n";
        return 3;
    }
}
