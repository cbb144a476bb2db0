// odp_mirror_bench: throughput of odp_mirror.ko in a guest, as ratios within one run.
//   event throughput   munmap of many small registered areas vs. the same without regions
//   FAULT throughput   pages/s made present by FAULT vs. touching the same pages from userspace
//   REGISTER time      4 KiB vs 1 TiB ranges (must not grow with size)
// Prints a Markdown table.  Run as root after insmod (see docs/results/mirror-bench.md).
#include <sys/prctl.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <vector>

#include "mirror_device.hpp"

using namespace odp_mirror_test;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Seconds to munmap @areas one-page areas one by one, registered or not.
// Every area is its own VMA (PROT_NONE guard pages between them), so munmap
// never splits a VMA: splitting one makes the kernel invalidate the whole
// 2 MiB around the split point (MMU_NOTIFY_CLEAR), which would report the
// neighbouring areas too.
double unmap_areas(const Mirror& m, std::size_t areas, bool registered, std::size_t* events) {
    const std::size_t page = page_size();
    Mapping all(2 * areas * page, PROT_NONE);
    for (std::size_t i = 0; i < areas; ++i) {
        char* area = all.data() + 2 * i * page;
        if (::mprotect(area, page, PROT_READ | PROT_WRITE) != 0) {
            throw_errno(errno, "mprotect of a benchmark area");
        }
        area[0] = 1;
    }
    std::vector<std::uint32_t> ids;
    if (registered) {
        for (std::size_t i = 0; i < areas; ++i) {
            ids.push_back(m.add(all.addr() + 2 * i * page, page, i).id);
        }
    }
    (void)m.drain();
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < areas; ++i) {
        ::munmap(all.data() + 2 * i * page, page);
    }
    const double s = seconds_since(t0);
    *events = m.drain().size();
    for (const auto id : ids) {
        m.remove(id);
    }
    return s;
}

}  // namespace

int main() try {
    const std::size_t page = page_size();
    // 4 KiB pages only, in every measurement: unmapping one page of a huge
    // page splits it, which invalidates (and reports) all 2 MiB around it.
    if (::prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) {
        throw_errno(errno, "prctl(PR_SET_THP_DISABLE)");
    }
    Mirror m;
    utsname u{};
    ::uname(&u);
    std::printf("odp_mirror_bench on Linux %s, page %zu B, ring %u entries\n\n", u.release, page,
                m.query().ring_entries);
    std::printf("| measurement | value | baseline | ratio |\n|---|---|---|---|\n");

    // Event throughput.
    const std::size_t areas = std::min<std::size_t>(2048, m.query().ring_entries);
    std::size_t events = 0;
    std::size_t none = 0;
    std::vector<double> plain_s;
    std::vector<double> with_s;
    for (int round = 0; round < 3; ++round) {
        plain_s.push_back(unmap_areas(m, areas, false, &none));
        with_s.push_back(unmap_areas(m, areas, true, &events));
    }
    const double plain = median(plain_s);
    const double with_regions = median(with_s);
    std::printf(
        "| events/s, munmap of %zu registered 4 KiB areas, median of 3 (%zu events, %llu lost) | "
        "%.0f | "
        "%.0f munmap/s without regions | %.2f (munmap rate with / without regions) |\n",
        areas, events, static_cast<unsigned long long>(m.lost()),
        static_cast<double>(events) / with_regions, static_cast<double>(areas) / plain,
        plain / with_regions);

    // FAULT throughput against userspace touching the same pages.
    const std::size_t len = 64ULL << 20;
    const std::size_t chunk = 2ULL << 20;
    Mapping buf(len);
    ::madvise(buf.data(), len, MADV_NOHUGEPAGE);  // compare 4 KiB faults with 4 KiB faults
    const auto reg = m.add(buf);
    std::vector<double> fault_rates;
    std::vector<double> touch_rates;
    for (int round = 0; round < 3; ++round) {
        ::madvise(buf.data(), len, MADV_DONTNEED);
        auto t0 = Clock::now();
        std::uint64_t pages = 0;
        for (std::size_t off = 0; off < len; off += chunk) {
            pages += m.fault(reg.id, buf.addr() + off, chunk, true).pages_present;
        }
        fault_rates.push_back(static_cast<double>(pages) / seconds_since(t0));
        ::madvise(buf.data(), len, MADV_DONTNEED);
        t0 = Clock::now();
        for (std::size_t off = 0; off < len; off += page) {
            buf.data()[off] = 1;
        }
        touch_rates.push_back(static_cast<double>(len / page) / seconds_since(t0));
    }
    const double fault_rate = median(fault_rates);
    const double touch_rate = median(touch_rates);
    std::printf(
        "| FAULT (write) pages/s, 64 MiB in 2 MiB calls, median of 3 | %.0f | %.0f pages/s "
        "touched from userspace | %.2f |\n",
        fault_rate, touch_rate, fault_rate / touch_rate);
    m.remove(reg.id);
    (void)m.drain();

    // REGISTER time: 4 KiB vs 1 TiB (address space only, nothing mapped).
    auto register_time = [&](std::uint64_t start, std::uint64_t length) {
        std::vector<double> us;
        for (int i = 0; i < 200; ++i) {
            const auto t0 = Clock::now();
            const auto r = m.add(start, length);
            us.push_back(seconds_since(t0) * 1e6);
            m.remove(r.id);
        }
        return median(us);
    };
    const std::uint64_t tib = 1ULL << 40;
    const double small = register_time(0x100000000000ULL, page);
    const double huge = register_time(0x100000000000ULL, tib);
    std::printf("| REGISTER 1 TiB, median of 200, us | %.1f | %.1f us for 4 KiB | %.2f |\n", huge,
                small, huge / small);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "odp_mirror_bench: %s\n", e.what());
    return 1;
}
