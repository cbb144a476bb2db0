#include "mapping_changes.hpp"

#include <fcntl.h>
#include <linux/kernel-page-flags.h>
#include <linux/mempolicy.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <vector>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21  // Linux 5.4
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1; glibc 2.36 does not name it yet
#endif

namespace odp::stress {

std::atomic<ChangeHook> change_hook{nullptr};

namespace {

void run_change_hook(ChangePoint point, const void* address) {
    if (const ChangeHook hook = change_hook.load(std::memory_order_acquire)) {
        hook(point, address);
    }
}

// Held by every change that leaves part of a buffer unmapped for a moment
// (munmap-mmap, mremap away and back), from its first system call to its
// last. mmap(NULL) gets the highest free gap that fits, and such a hole can
// be it: without this, one thread's mremap could move its pages into another
// change's hole, which that change's mmap(MAP_FIXED) then refills; moving
// the pages back would leave a hole in the buffer. The slice locks cannot
// prevent that: the kernel chooses the place. (Found by reading while
// looking for the 7.3 SIGSEGV, whose cause was move_back_what_moved's; the
// host test forces the kernel's choice, see mapping_changes_test.cpp.)
std::mutex address_space_mutex;

constexpr std::array<std::string_view, change_kind_count> kind_names = {
    "munmap-mmap", "dontneed", "mremap",  "mprotect",
    "fork-write",  "pageout",  "migrate", "thp-split",
};

std::string failed(const char* call) {
    return std::string(call) + ": " + std::strerror(errno);
}

std::string read_text(const char* path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// The online NUMA nodes ("0-1" -> {0, 1}).
std::vector<int> online_nodes() {
    std::vector<int> nodes;
    std::stringstream list(read_text("/sys/devices/system/node/online"));
    std::string item;
    while (std::getline(list, item, ',')) {
        int first = 0;
        int last = 0;
        if (std::sscanf(item.c_str(), "%d-%d", &first, &last) == 2) {
            for (int node = first; node <= last; ++node) {
                nodes.push_back(node);
            }
        } else if (std::sscanf(item.c_str(), "%d", &first) == 1) {
            nodes.push_back(first);
        }
    }
    return nodes;
}

// Maps fresh anonymous read-write pages over [address, +length), huge-page
// advised like the rest of every buffer, so that the VMAs merge again.
bool map_fresh(unsigned char* address, std::size_t length) {
    if (::mmap(address, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
               0) != address) {
        return false;
    }
    (void)::madvise(address, length, MADV_HUGEPAGE);
    return true;
}

ChangeResult munmap_mmap(unsigned char* address, std::size_t length) {
    ChangeResult result;
    const std::scoped_lock lock(address_space_mutex);
    if (::munmap(address, length) != 0) {
        result.failure = failed("munmap");
        return result;
    }
    result.zeroed = true;
    run_change_hook(ChangePoint::HoleOpen, address);
    if (!map_fresh(address, length)) {
        // Nothing else can be done: the buffer has a hole now.
        throw std::runtime_error("mmap MAP_FIXED over a range just unmapped: " +
                                 std::string(std::strerror(errno)));
    }
    result.applied = true;
    return result;
}

// After a failed mremap of [address, +length) to `away`: since Linux 6.17 a
// move spanning several mappings stops with EFAULT at a userfaultfd-armed one
// that is not the first, and the mappings before it stay moved. Moves each
// such piece (a hole now) back from `away`, or maps fresh pages there if that
// fails too. Returns the bytes that had moved; sets result.zeroed on fresh pages.
std::size_t move_back_what_moved(unsigned char* address, std::size_t length, unsigned char* away,
                                 ChangeResult& result) {
    const std::size_t page = page_size();
    unsigned char resident = 0;
    const auto unmapped = [&](std::size_t at) {
        return ::mincore(address + at, page, &resident) != 0 && errno == ENOMEM;
    };
    std::size_t moved = 0;
    for (std::size_t begin = 0; begin < length;) {
        if (!unmapped(begin)) {
            begin += page;
            continue;
        }
        std::size_t end = begin + page;
        while (end < length && unmapped(end)) {
            end += page;
        }
        const std::size_t piece = end - begin;
        moved += piece;
        if (::mremap(away + begin, piece, piece, MREMAP_MAYMOVE | MREMAP_FIXED, address + begin) !=
            address + begin) {
            if (!map_fresh(address + begin, piece)) {
                throw std::runtime_error("mmap MAP_FIXED over pages a failed mremap moved away: " +
                                         std::string(std::strerror(errno)));
            }
            result.zeroed = true;
        }
        begin = end;
    }
    return moved;
}

ChangeResult mremap_away_and_back(unsigned char* address, std::size_t length) {
    ChangeResult result;
    const std::scoped_lock lock(address_space_mutex);
    void* away = ::mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (away == MAP_FAILED) {
        result.failure = failed("mmap a place to move to");
        return result;
    }
    run_change_hook(ChangePoint::PlaceChosen, away);
    if (::mremap(address, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, away) != away) {
        result.failure = failed("mremap away");
        // Unmapping the place as it is would drop pages that did move (the
        // 7.3 SIGSEGV: a hole in the buffer, docs/results/soak.md).
        const std::size_t moved =
            move_back_what_moved(address, length, static_cast<unsigned char*>(away), result);
        result.pages = moved / page_size();
        if (moved != 0) {
            result.failure += " after moving the first " + std::to_string(moved / page_size()) +
                              " pages (moved back" + (result.zeroed ? ", or fresh pages" : "") +
                              ")";
        }
        ::munmap(away, length);
        return result;
    }
    if (::mremap(away, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, address) != address) {
        result.failure = failed("mremap back");
        // Keep the buffer whole: fresh pages where the moved ones were.
        ::munmap(away, length);
        if (!map_fresh(address, length)) {
            throw std::runtime_error("mmap MAP_FIXED after a failed mremap back: " +
                                     std::string(std::strerror(errno)));
        }
        result.zeroed = true;
        return result;
    }
    result.applied = true;
    return result;
}

ChangeResult protect_and_back(unsigned char* address, std::size_t length) {
    ChangeResult result;
    if (::mprotect(address, length, PROT_READ) != 0) {
        result.failure = failed("mprotect(PROT_READ)");
        return result;
    }
    if (::mprotect(address, length, PROT_READ | PROT_WRITE) != 0) {
        throw std::runtime_error(failed("mprotect back to PROT_READ|PROT_WRITE"));
    }
    result.applied = true;
    return result;
}

// The child shares every page copy-on-write until the parent has written to
// each page of the range; then it exits. The parent's write is an atomic
// read-modify-write that keeps the byte: an RDMA transfer may be writing the
// page at the same moment, and a plain load + store could undo its byte.
ChangeResult fork_and_write(unsigned char* address, std::size_t length) {
    ChangeResult result;
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        result.failure = failed("pipe2");
        return result;
    }
    const pid_t child = ::fork();
    if (child < 0) {
        result.failure = failed("fork");
        ::close(fds[0]);
        ::close(fds[1]);
        return result;
    }
    if (child == 0) {
        // Only async-signal-safe calls here: the parent has other threads.
        char go = 0;
        while (::read(fds[0], &go, 1) < 0 && errno == EINTR) {
        }
        ::_exit(0);
    }
    ::close(fds[0]);
    for (std::size_t at = 0; at < length; at += page_size()) {
        __atomic_fetch_or(address + at, static_cast<unsigned char>(0), __ATOMIC_RELAXED);
    }
    const char go = 1;
    (void)!::write(fds[1], &go, 1);
    ::close(fds[1]);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    result.applied = true;
    return result;
}

ChangeResult advise(unsigned char* address, std::size_t length, int advice, const char* call,
                    bool zeroes) {
    ChangeResult result;
    if (::madvise(address, length, advice) != 0) {
        result.failure = failed(call);
        return result;
    }
    result.applied = true;
    result.zeroed = zeroes;
    return result;
}

ChangeResult migrate(unsigned char* address, std::size_t length, std::mt19937_64& random,
                     bool allow_whole_process) {
    ChangeResult result;
    static const std::vector<int> nodes = online_nodes();
    if (nodes.size() < 2) {
        result.failure = "fewer than two NUMA nodes";
        return result;
    }
    const int to = nodes[random() % nodes.size()];
    if (allow_whole_process && random() % 16 == 0) {
        // Every page of the process on the other nodes moves to `to`.
        unsigned long from_mask = 0;
        for (const int node : nodes) {
            from_mask |= node == to ? 0UL : 1UL << node;
        }
        const unsigned long to_mask = 1UL << to;
        const long left =
            ::syscall(SYS_migrate_pages, 0, sizeof(unsigned long) * 8 + 1, &from_mask, &to_mask);
        if (left < 0) {
            result.failure = failed("migrate_pages");
            return result;
        }
        result.whole_process = true;
        result.applied = true;
        return result;
    }
    const std::size_t count = length / page_size();
    std::vector<void*> pages(count);
    std::vector<int> targets(count, to);
    std::vector<int> status(count, -1);
    for (std::size_t i = 0; i < count; ++i) {
        pages[i] = address + i * page_size();
    }
    if (::syscall(SYS_move_pages, 0, count, pages.data(), targets.data(), status.data(),
                  MPOL_MF_MOVE) < 0) {
        result.failure = failed("move_pages");
        return result;
    }
    for (const int node : status) {
        result.pages += node == to ? 1 : 0;
    }
    result.applied = true;
    return result;
}

// Whether the page at `address` is part of a transparent huge page
// (/proc/self/pagemap gives its frame, /proc/kpageflags its flags: root only);
// nullopt when that cannot be read.
std::optional<bool> is_huge(const unsigned char* address) {
    const int pagemap = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    const int flags_file = ::open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
    std::optional<bool> huge;
    std::uint64_t entry = 0;
    std::uint64_t flags = 0;
    const auto index = reinterpret_cast<std::uintptr_t>(address) / page_size();
    if (pagemap >= 0 && flags_file >= 0 &&
        ::pread(pagemap, &entry, sizeof entry, static_cast<off_t>(index * sizeof entry)) ==
            sizeof entry &&
        (entry >> 63) != 0) {
        const std::uint64_t frame = entry & ((std::uint64_t{1} << 55) - 1);
        if (frame != 0 && ::pread(flags_file, &flags, sizeof flags,
                                  static_cast<off_t>(frame * sizeof flags)) == sizeof flags) {
            huge = ((flags >> KPF_THP) & 1) != 0;
        }
    }
    if (pagemap >= 0) {
        ::close(pagemap);
    }
    if (flags_file >= 0) {
        ::close(flags_file);
    }
    return huge;
}

// Collapses the block into a huge page (MADV_COLLAPSE keeps the bytes; before
// Linux 6.1, fresh pages faulted in whole), then splits it: write-protects a
// piece of it and restores it, or unmaps a piece and maps fresh pages there.
ChangeResult split_huge_page(unsigned char* block, std::mt19937_64& random) {
    ChangeResult result;
    (void)::madvise(block, huge_page_size, MADV_HUGEPAGE);
    if (::madvise(block, huge_page_size, MADV_COLLAPSE) != 0 && errno == EINVAL) {
        // No collapse here (before Linux 6.1, or a VMA registered with
        // userfaultfd-wp): fresh pages instead. Never written by this thread:
        // a transfer may already have faulted them in and landed its bytes
        // (a memset here once overwrote them: a silent error of the stress,
        // not of the library, found on 6.1 with userfaultfd).
        if (!map_fresh(block, huge_page_size)) {
            throw std::runtime_error("mmap MAP_FIXED of a 2 MiB block: " +
                                     std::string(std::strerror(errno)));
        }
        result.zeroed = true;
    }
    // A collapse can fail (pinned pages: a leased chunk): the split still runs.
    result.pages = is_huge(block).value_or(false) ? 1 : 0;
    const std::size_t pages_in_block = huge_page_size / page_size();
    const std::size_t count = 1 + random() % 16;
    const std::size_t first = 1 + random() % (pages_in_block - count - 1);
    unsigned char* piece = block + first * page_size();
    const std::size_t length = count * page_size();
    ChangeResult split =
        random() % 2 == 0 ? protect_and_back(piece, length) : munmap_mmap(piece, length);
    split.zeroed = split.zeroed || result.zeroed;
    split.pages = result.pages;
    return split;
}

}  // namespace

std::size_t page_size() noexcept {
    static const auto size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return size;
}

std::string_view name_of(ChangeKind kind) noexcept {
    return kind_names[static_cast<std::size_t>(kind)];
}

std::optional<ChangeKind> parse_change_kind(std::string_view name) noexcept {
    for (const ChangeKind kind : all_change_kinds) {
        if (name_of(kind) == name) {
            return kind;
        }
    }
    return std::nullopt;
}

bool may_zero(ChangeKind kind) noexcept {
    return kind == ChangeKind::MunmapMmap || kind == ChangeKind::Dontneed ||
           kind == ChangeKind::ThpSplit;
}

std::optional<std::string> why_unavailable(ChangeKind kind) {
    switch (kind) {
        case ChangeKind::Pageout: {
            // /proc/swaps: a header line, then one line per active swap area.
            const std::string swaps = read_text("/proc/swaps");
            const auto lines = std::count(swaps.begin(), swaps.end(), '\n');
            if (lines < 2) {
                return "no swap is active, MADV_PAGEOUT would keep anonymous pages in place "
                       "(run-stress.sh sets up zram swap; `modprobe zram` failed or was not run)";
            }
            return std::nullopt;
        }
        case ChangeKind::Migrate:
            if (online_nodes().size() < 2) {
                return "fewer than two online NUMA nodes (scripts/odp-vm gives guests two: "
                       "--numa 2)";
            }
            return std::nullopt;
        case ChangeKind::ThpSplit: {
            const std::string enabled = read_text("/sys/kernel/mm/transparent_hugepage/enabled");
            if (enabled.empty() || enabled.find("[never]") != std::string::npos) {
                return "transparent huge pages are off (/sys/kernel/mm/transparent_hugepage/"
                       "enabled: " +
                       (enabled.empty() ? std::string("missing") : enabled) + ")";
            }
            return std::nullopt;
        }
        default:
            return std::nullopt;
    }
}

Buffer::Buffer(std::string name, std::size_t length) : name_(std::move(name)), length_(length) {
    if (length_ == 0 || length_ % huge_page_size != 0) {
        throw std::invalid_argument("buffer " + name_ + ": length must be a multiple of 2 MiB");
    }
    // Over-map, then trim to a 2 MiB boundary so that huge pages can back it.
    void* raw = ::mmap(nullptr, length_ + huge_page_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        throw std::runtime_error("mmap of buffer " + name_ + ": " + std::strerror(errno));
    }
    auto* start = static_cast<unsigned char*>(raw);
    const std::uintptr_t misalignment = reinterpret_cast<std::uintptr_t>(start) % huge_page_size;
    const std::size_t head = misalignment == 0 ? 0 : huge_page_size - misalignment;
    if (head != 0) {
        ::munmap(start, head);
    }
    data_ = start + head;
    ::munmap(data_ + length_, huge_page_size - head);
    (void)::madvise(data_, length_, MADV_HUGEPAGE);
    std::memset(data_, 0, length_);
}

Buffer::~Buffer() {
    ::munmap(data_, length_);
}

ChangeResult apply_change(ChangeKind kind, const Buffer& buffer, std::size_t offset,
                          std::size_t length, std::mt19937_64& random, bool allow_whole_process) {
    unsigned char* address = buffer.data() + offset;
    switch (kind) {
        case ChangeKind::MunmapMmap:
            return munmap_mmap(address, length);
        case ChangeKind::Dontneed:
            return advise(address, length, MADV_DONTNEED, "madvise(MADV_DONTNEED)", true);
        case ChangeKind::Mremap:
            return mremap_away_and_back(address, length);
        case ChangeKind::Mprotect:
            return protect_and_back(address, length);
        case ChangeKind::ForkWrite:
            return fork_and_write(address, length);
        case ChangeKind::Pageout:
            return advise(address, length, MADV_PAGEOUT, "madvise(MADV_PAGEOUT)", false);
        case ChangeKind::Migrate:
            return migrate(address, length, random, allow_whole_process);
        case ChangeKind::ThpSplit:
            return split_huge_page(address, random);
    }
    throw std::logic_error("unknown change kind");
}

}  // namespace odp::stress
