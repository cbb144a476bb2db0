#include "crash_report.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace odp::stress {

SignalSafeText& SignalSafeText::text(std::string_view piece) noexcept {
    while (!piece.empty()) {
        if (used_ == sizeof buffer_) {
            flush();
        }
        const std::size_t count = std::min(piece.size(), sizeof buffer_ - used_);
        std::memcpy(buffer_ + used_, piece.data(), count);
        used_ += count;
        piece.remove_prefix(count);
    }
    return *this;
}

SignalSafeText& SignalSafeText::decimal(std::uint64_t value) noexcept {
    char digits[24];
    std::size_t at = sizeof digits;
    do {
        digits[--at] = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value != 0);
    return text(std::string_view(digits + at, sizeof digits - at));
}

SignalSafeText& SignalSafeText::hex(std::uint64_t value) noexcept {
    char digits[20];
    std::size_t at = sizeof digits;
    do {
        digits[--at] = "0123456789abcdef"[value % 16];
        value /= 16;
    } while (value != 0);
    digits[--at] = 'x';
    digits[--at] = '0';
    return text(std::string_view(digits + at, sizeof digits - at));
}

void SignalSafeText::flush() noexcept {
    std::size_t written = 0;
    while (written < used_) {
        const ssize_t count = ::write(fd_, buffer_ + written, used_ - written);
        if (count <= 0 && errno != EINTR) {
            break;
        }
        written += count > 0 ? static_cast<std::size_t>(count) : 0;
    }
    used_ = 0;
}

namespace {

struct Installed {
    std::array<NamedBuffer, 4> buffers{};
    std::size_t count = 0;
    PageHistory history = nullptr;
};
Installed installed;

// The lines of a /proc file, read through a fixed buffer; longer lines are
// cut at line_max (the rest skipped).
class LineReader {
  public:
    static constexpr std::size_t line_max = 320;

    explicit LineReader(const char* path) noexcept : fd_(::open(path, O_RDONLY | O_CLOEXEC)) {}
    ~LineReader() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    LineReader(const LineReader&) = delete;
    LineReader& operator=(const LineReader&) = delete;

    [[nodiscard]] bool opened() const noexcept { return fd_ >= 0; }

    // The next line without its newline; false at the end.
    bool next(std::string_view& line) noexcept {
        std::size_t length = 0;
        bool any = false;
        for (;;) {
            if (at_ == filled_) {
                const ssize_t count = fd_ < 0 ? 0 : ::read(fd_, chunk_, sizeof chunk_);
                if (count < 0 && errno == EINTR) {
                    continue;
                }
                if (count <= 0) {
                    line = std::string_view(line_, length);
                    return any;
                }
                at_ = 0;
                filled_ = static_cast<std::size_t>(count);
            }
            const char c = chunk_[at_++];
            any = true;
            if (c == '\n') {
                line = std::string_view(line_, length);
                return true;
            }
            if (length < line_max) {
                line_[length++] = c;
            }
        }
    }

  private:
    int fd_;
    char chunk_[4096];
    std::size_t at_ = 0;
    std::size_t filled_ = 0;
    char line_[line_max];
};

std::uint64_t parse_hex(std::string_view& text) noexcept {
    std::uint64_t value = 0;
    while (!text.empty()) {
        const char c = text.front();
        const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (digit < 0) {
            break;
        }
        value = value * 16 + static_cast<std::uint64_t>(digit);
        text.remove_prefix(1);
    }
    return value;
}

// "begin-end perms ..." (maps, and smaps' first line of a mapping).
bool parse_range(std::string_view line, std::uintptr_t& begin, std::uintptr_t& end) noexcept {
    begin = parse_hex(line);
    if (line.empty() || line.front() != '-') {
        return false;
    }
    line.remove_prefix(1);
    end = parse_hex(line);
    return !line.empty() && line.front() == ' ' && begin < end;
}

struct SavedLine {
    char text[LineReader::line_max];
    std::size_t length = 0;
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;

    void save(std::string_view line, std::uintptr_t from, std::uintptr_t to) noexcept {
        length = line.size();
        std::memcpy(text, line.data(), length);
        begin = from;
        end = to;
    }
    [[nodiscard]] std::string_view view() const noexcept { return {text, length}; }
};

// The mapping containing `address` and its neighbours; returns the range
// they span (for smaps), or {address, address + 1} when maps is unreadable.
void describe_maps(SignalSafeText& out, std::uintptr_t address, std::uintptr_t& span_begin,
                   std::uintptr_t& span_end) {
    span_begin = address;
    span_end = address + 1;
    LineReader maps("/proc/self/maps");
    if (!maps.opened()) {
        out.text("  /proc/self/maps: cannot open\n");
        return;
    }
    SavedLine before;  // the last mapping ending at or below the address
    SavedLine containing;
    SavedLine after;  // the first mapping above it
    bool have_before = false;
    bool have_containing = false;
    bool have_after = false;
    std::string_view line;
    while (!have_after && maps.next(line)) {
        std::uintptr_t begin = 0;
        std::uintptr_t end = 0;
        if (!parse_range(line, begin, end)) {
            continue;
        }
        if (end <= address) {
            before.save(line, begin, end);
            have_before = true;
        } else if (begin <= address) {
            containing.save(line, begin, end);
            have_containing = true;
        } else {
            after.save(line, begin, end);
            have_after = true;
        }
    }
    out.text("  mappings around it (/proc/self/maps):\n");
    if (have_before) {
        out.text("       ").text(before.view()).text("\n");
        span_begin = before.begin;
    }
    if (have_containing) {
        out.text("    => ").text(containing.view()).text("\n");
    } else {
        out.text("    => no mapping contains the address (a hole: SEGV_MAPERR)\n");
    }
    if (have_after) {
        out.text("       ").text(after.view()).text("\n");
        span_end = after.end;
    }
    if (!have_before && have_containing) {
        span_begin = containing.begin;
    }
    if (!have_after && have_containing) {
        span_end = containing.end;
    }
}

// Each mapping in [span_begin, span_end) with its smaps flags (uw: registered
// with userfaultfd write-protect, um: missing, mr/mw/me: may read/write/exec).
void describe_smaps(SignalSafeText& out, std::uintptr_t span_begin, std::uintptr_t span_end) {
    LineReader smaps("/proc/self/smaps");
    if (!smaps.opened()) {
        out.text("  /proc/self/smaps: cannot open\n");
        return;
    }
    out.text("  their smaps VmFlags:\n");
    bool inside = false;
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;
    std::string_view line;
    while (smaps.next(line)) {
        std::uintptr_t from = 0;
        std::uintptr_t to = 0;
        if (parse_range(line, from, to)) {
            begin = from;
            end = to;
            inside = begin < span_end && span_begin < end;
            if (begin >= span_end) {
                break;
            }
            continue;
        }
        if (inside && line.starts_with("VmFlags:")) {
            out.text("    ").hex(begin).text("-").hex(end).text(" ").text(line).text("\n");
        }
    }
}

// The page's /proc/self/pagemap entry: present, swapped, uffd-wp (a pte or
// a marker), guard region (Linux 6.15+).
void describe_pagemap(SignalSafeText& out, std::uintptr_t address) {
    const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    std::uint64_t entry = 0;
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const bool read = fd >= 0 && ::pread(fd, &entry, sizeof entry,
                                         static_cast<off_t>(address / page * sizeof entry)) ==
                                     static_cast<ssize_t>(sizeof entry);
    if (fd >= 0) {
        ::close(fd);
    }
    if (!read) {
        out.text("  pagemap: unreadable\n");
        return;
    }
    out.text("  pagemap entry ").hex(entry).text(":");
    const auto bit = [&](int number, std::string_view name) {
        if (((entry >> number) & 1) != 0) {
            out.text(" ").text(name);
        }
    };
    bit(63, "present");
    bit(62, "swapped");
    bit(61, "file/shared");
    bit(58, "guard-region");
    bit(57, "uffd-wp");
    bit(56, "exclusive");
    bit(55, "soft-dirty");
    out.text(entry == 0 ? " none (not populated, no marker)\n" : "\n");
}

std::string_view syscall_name(long number) noexcept {
    switch (number) {
        case SYS_mmap:
            return "mmap";
        case SYS_munmap:
            return "munmap";
        case SYS_mremap:
            return "mremap";
        case SYS_mprotect:
            return "mprotect";
        case SYS_madvise:
            return "madvise";
        case SYS_ioctl:
            return "ioctl";
        case SYS_read:
            return "read";
        case SYS_poll:
            return "poll";
        case SYS_futex:
            return "futex";
        case SYS_nanosleep:
            return "nanosleep";
        case SYS_clock_nanosleep:
            return "clock_nanosleep";
        case SYS_move_pages:
            return "move_pages";
        case SYS_migrate_pages:
            return "migrate_pages";
        case SYS_wait4:
            return "wait4";
        case SYS_clone:
            return "clone";
        case SYS_write:
            return "write";
        case SYS_openat:
            return "openat";
        default:
            return "";
    }
}

// Every thread: its name and what /proc/<tid>/syscall says it is inside.
void describe_threads(SignalSafeText& out) {
    const int directory = ::open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory < 0) {
        out.text("  /proc/self/task: cannot open\n");
        return;
    }
    out.text("  threads (/proc/self/task/*/comm and syscall, read after the fault):\n");
    alignas(8) char entries[4096];
    for (;;) {
        const long count = ::syscall(SYS_getdents64, directory, entries, sizeof entries);
        if (count <= 0) {
            break;
        }
        for (long at = 0; at < count;) {
            struct Entry {
                std::uint64_t inode;
                std::int64_t offset;
                unsigned short length;
                unsigned char type;
                char name[1];
            };
            const auto* entry = reinterpret_cast<const Entry*>(entries + at);
            at += entry->length;
            const std::string_view tid(entry->name);
            if (tid.empty() || tid.front() == '.') {
                continue;
            }
            char path[64] = "/proc/self/task/";
            const std::size_t prefix = std::strlen(path);
            const std::size_t tid_length = std::min<std::size_t>(tid.size(), 20);
            std::memcpy(path + prefix, tid.data(), tid_length);
            out.text("    ").text(tid.substr(0, tid_length)).text(" ");
            std::memcpy(path + prefix + tid_length, "/comm", 6);
            LineReader comm(path);
            std::string_view line;
            if (comm.next(line)) {
                out.text(line);
            }
            std::memcpy(path + prefix + tid_length, "/syscall", 9);
            LineReader syscall_file(path);
            if (syscall_file.next(line)) {
                out.text(": ").text(line.substr(0, std::min<std::size_t>(line.size(), 40)));
                std::string_view number = line;
                long value = 0;
                bool digits = !number.empty() && number.front() >= '0' && number.front() <= '9';
                while (!number.empty() && number.front() >= '0' && number.front() <= '9') {
                    value = value * 10 + (number.front() - '0');
                    number.remove_prefix(1);
                }
                if (digits && !syscall_name(value).empty()) {
                    out.text(" (").text(syscall_name(value)).text(")");
                }
            }
            out.text("\n");
        }
    }
    ::close(directory);
}

std::string_view code_name(int signal, int code) noexcept {
    if (code <= 0) {
        return "sent by a process (SI_USER/SI_TKILL), not a fault";
    }
    if (signal == SIGSEGV) {
        switch (code) {
            case SEGV_MAPERR:
                return "SEGV_MAPERR (no mapping at the address)";
            case SEGV_ACCERR:
                return "SEGV_ACCERR (the mapping's protection refuses the access)";
#ifdef SEGV_PKUERR
            case SEGV_PKUERR:
                return "SEGV_PKUERR (a protection key refuses the access)";
#endif
            default:
                return "another SEGV code";
        }
    }
    switch (code) {
        case BUS_ADRALN:
            return "BUS_ADRALN";
        case BUS_ADRERR:
            return "BUS_ADRERR (no object behind the page: a userfaultfd SIGBUS, a truncated file)";
        case BUS_OBJERR:
            return "BUS_OBJERR";
#ifdef BUS_MCEERR_AR
        case BUS_MCEERR_AR:
            return "BUS_MCEERR_AR (memory failure)";
        case BUS_MCEERR_AO:
            return "BUS_MCEERR_AO (memory failure)";
#endif
        default:
            return "another BUS code";
    }
}

void on_fault(int signal, siginfo_t* info, void* /*context*/) {
    const int saved_errno = errno;
    const auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
    {
        SignalSafeText out(STDERR_FILENO);
        out.text("\nodp-stress: ")
            .text(signal == SIGSEGV ? "SIGSEGV" : "SIGBUS")
            .text(" in thread ")
            .decimal(static_cast<std::uint64_t>(::gettid()))
            .text(" at address ")
            .hex(address)
            .text(": ")
            .text(code_name(signal, info->si_code))
            .text(" (si_code ")
            .text(info->si_code < 0 ? "-" : "")
            .decimal(static_cast<std::uint64_t>(info->si_code < 0 ? -info->si_code : info->si_code))
            .text(")\n");
        const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
        for (std::size_t i = 0; i < installed.count; ++i) {
            const NamedBuffer& buffer = installed.buffers[i];
            if (address >= buffer.begin && address - buffer.begin < buffer.length) {
                const std::size_t offset = address - buffer.begin;
                out.text("  in the ")
                    .text(buffer.name)
                    .text(" buffer at offset ")
                    .hex(offset)
                    .text(" (page offset ")
                    .hex(offset / page * page)
                    .text(")\n");
                if (installed.history != nullptr) {
                    installed.history(out, i, offset);
                }
            }
        }
        std::uintptr_t span_begin = 0;
        std::uintptr_t span_end = 0;
        describe_maps(out, address, span_begin, span_end);
        out.flush();
        describe_smaps(out, span_begin, span_end);
        describe_pagemap(out, address);
        describe_threads(out);
        out.text("odp-stress: the default action follows (core dump)\n");
    }
    // The default action, then the same signal again: pending while this
    // handler runs, it is taken as the handler returns, with the registers
    // of the faulting instruction, so the core's backtrace shows the fault.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    ::sigemptyset(&default_action.sa_mask);
    ::sigaction(signal, &default_action, nullptr);
    ::syscall(SYS_tgkill, ::getpid(), ::gettid(), signal);
    errno = saved_errno;
}

constexpr std::size_t alternate_stack_bytes = std::size_t{256} << 10;

}  // namespace

void install_crash_report(const NamedBuffer* buffers, std::size_t count, PageHistory history) {
    installed.count = std::min(count, installed.buffers.size());
    std::copy(buffers, buffers + installed.count, installed.buffers.begin());
    installed.history = history;
    struct sigaction action {};
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    ::sigemptyset(&action.sa_mask);
    for (const int signal : {SIGSEGV, SIGBUS}) {
        if (::sigaction(signal, &action, nullptr) != 0) {
            throw std::runtime_error(std::string("sigaction for the crash report: ") +
                                     std::strerror(errno));
        }
    }
}

AlternateSignalStack::AlternateSignalStack()
    : stack_(std::make_unique<unsigned char[]>(alternate_stack_bytes)) {
    stack_t stack{};
    stack.ss_sp = stack_.get();
    stack.ss_size = alternate_stack_bytes;
    installed_ = ::sigaltstack(&stack, nullptr) == 0;
}

AlternateSignalStack::~AlternateSignalStack() {
    if (installed_) {
        stack_t off{};
        off.ss_flags = SS_DISABLE;
        ::sigaltstack(&off, nullptr);
    }
}

}  // namespace odp::stress
