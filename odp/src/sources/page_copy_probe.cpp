// Whether the kernel can swap a pinned anonymous page out from under the
// process by copy-on-write: the one change the userfaultfd source can never
// report (issue 13, docs/sources.md).
//
// Before Linux 5.19, do_wp_page() copies an anonymous page on a write fault
// whenever the page's reference count is above one, and a pinned page's
// always is. A write fault on a present page comes whenever its page-table
// entry is read-only: after mprotect(PROT_READ) and back to writable (which
// leaves private anonymous entries read-only), after a swap-in, after
// clear_refs. The process then writes into the copy while the NIC keeps the
// old page. The copy calls the MMU notifiers (odp_mirror.ko sees it), but
// userfaultfd has no event for it. From 5.19 on a pinned anonymous page is
// marked exclusive (PageAnonExclusive) and a write reuses it in place.
//
// Probed rather than read from the version, because vendor kernels backport:
// a page that a pipe references through vmsplice() has a count above one like
// a pinned page, and stays exclusive on 5.19+ like one, so a write after
// mprotect() copies it exactly where a pinned page is copied. Reading the
// pipe afterwards tells which page it kept: the old bytes mean a copy.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <odp/mirror.hpp>
#include <utility>
#include <vector>

#include "source.hpp"

namespace odp::detail {
namespace {

constexpr unsigned char before_write = 0xa5;
constexpr unsigned char written = 0x5a;

std::string failed(const char* call) {
    return std::string(call) + ": " + std::strerror(errno);
}

// The probe's page, unmapped on every path.
class ProbePage {
  public:
    ProbePage()
        : address_(::mmap(nullptr, page_size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0)) {}
    ~ProbePage() {
        if (mapped()) {
            ::munmap(address_, page_size());
        }
    }
    ProbePage(const ProbePage&) = delete;
    ProbePage& operator=(const ProbePage&) = delete;
    [[nodiscard]] bool mapped() const noexcept { return address_ != MAP_FAILED; }
    [[nodiscard]] void* address() const noexcept { return address_; }

  private:
    void* address_;
};

bool all_bytes(const std::vector<unsigned char>& bytes, unsigned char value) {
    return std::all_of(bytes.begin(), bytes.end(), [&](unsigned char b) { return b == value; });
}

// "5.10.0-35-amd64" -> {5, 10}; {0, 0} if it does not read so.
std::pair<int, int> major_minor(const std::string& release) {
    int major = 0;
    int minor = 0;
    if (std::sscanf(release.c_str(), "%d.%d", &major, &minor) != 2) {
        return {0, 0};
    }
    return {major, minor};
}

std::string kernel_release() {
    utsname name{};
    return ::uname(&name) == 0 ? std::string(name.release) : std::string("unknown");
}

}  // namespace

PageCopyProbe probe_page_copy_on_write() {
    const ProbePage page;
    if (!page.mapped()) {
        return {PageWriteOutcome::Unknown, failed("mmap")};
    }
    auto* const bytes = static_cast<unsigned char*>(page.address());
    std::memset(bytes, before_write, page_size());
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) {
        return {PageWriteOutcome::Unknown, failed("pipe2")};
    }
    const UniqueFd read_end(ends[0]);
    const UniqueFd write_end(ends[1]);
    iovec whole_page{page.address(), page_size()};
    if (::vmsplice(write_end.get(), &whole_page, 1, 0) != static_cast<ssize_t>(page_size())) {
        return {PageWriteOutcome::Unknown, failed("vmsplice")};
    }
    if (::mprotect(page.address(), page_size(), PROT_READ) != 0 ||
        ::mprotect(page.address(), page_size(), PROT_READ | PROT_WRITE) != 0) {
        return {PageWriteOutcome::Unknown, failed("mprotect")};
    }
    std::memset(bytes, written, page_size());  // the CPU write (a fault if the entry is read-only)
    std::vector<unsigned char> kept(page_size());
    const ssize_t got = ::read(read_end.get(), kept.data(), kept.size());
    if (got != static_cast<ssize_t>(kept.size())) {
        return {PageWriteOutcome::Unknown,
                got < 0 ? failed("read of the pipe") : std::string("short read of the pipe")};
    }
    if (all_bytes(kept, before_write)) {
        return {PageWriteOutcome::Copied, "the pipe kept the page's old bytes"};
    }
    if (all_bytes(kept, written)) {
        return {PageWriteOutcome::Reused, "the pipe saw the write"};
    }
    return {PageWriteOutcome::Unknown, "the pipe held neither the old nor the new bytes"};
}

std::string page_copy_problem(const PageCopyProbe& probe, const std::string& release) {
    std::string evidence;
    switch (probe.outcome) {
        case PageWriteOutcome::Reused:
            return {};
        case PageWriteOutcome::Copied:
            evidence = "a probe saw it: a page referenced by a pipe was copied on such a write";
            break;
        case PageWriteOutcome::Unknown: {
            // Without the probe, the upstream version decides.
            const auto [major, minor] = major_minor(release);
            if (major > 5 || (major == 5 && minor >= 19)) {
                return {};
            }
            evidence = "the probe could not run (" + probe.detail +
                       "), and kernels before Linux 5.19 copy pinned pages so";
            break;
        }
    }
    return "the userfaultfd source cannot keep emulated regions coherent on this kernel (Linux " +
           release +
           "): when the process writes to an anonymous page that a chunk's MR pins after "
           "mprotect() made it read-only and writable again (or after a swap-in), the kernel "
           "gives the process a copy and the NIC keeps the old page, and userfaultfd sends no "
           "event for that copy (" +
           evidence +
           "; Linux 5.19 and later reuse a pinned page). Load odp_mirror.ko (package "
           "odp-mirror-dkms), which sees the copy, or register the memory in Pinned mode";
}

}  // namespace odp::detail

namespace odp {

std::string userfaultfd_coherence_problem() {
    static const std::string problem =
        detail::page_copy_problem(detail::probe_page_copy_on_write(), detail::kernel_release());
    return problem;
}

}  // namespace odp
