#include "memory_map.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/types.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <climits>
#include <mutex>
#include <odp/error.hpp>
#include <optional>

#include "sources/source.hpp"

// PROCMAP_QUERY arrived in Linux 6.11; older headers (linux-libc-dev 6.1) lack
// it. Layout and values from include/uapi/linux/fs.h (Linux 6.11+). The kernel
// takes `size` for versioning, so this 104-byte v1 layout keeps working on
// later kernels that grow the struct.
#ifndef PROCMAP_QUERY
struct procmap_query {
    __u64 size;
    __u64 query_flags;    // in
    __u64 query_addr;     // in
    __u64 vma_start;      // out
    __u64 vma_end;        // out
    __u64 vma_flags;      // out: PROCMAP_QUERY_VMA_*
    __u64 vma_page_size;  // out
    __u64 vma_offset;     // out
    __u64 inode;          // out
    __u32 dev_major;      // out
    __u32 dev_minor;      // out
    __u32 vma_name_size;  // in/out
    __u32 build_id_size;  // in/out
    __u64 vma_name_addr;  // in
    __u64 build_id_addr;  // in
};
enum procmap_query_flags {
    PROCMAP_QUERY_VMA_READABLE = 0x01,
    PROCMAP_QUERY_VMA_WRITABLE = 0x02,
    PROCMAP_QUERY_VMA_EXECUTABLE = 0x04,
    PROCMAP_QUERY_VMA_SHARED = 0x08,
    PROCMAP_QUERY_COVERING_OR_NEXT_VMA = 0x10,
    PROCMAP_QUERY_FILE_BACKED_VMA = 0x20,
};
#define PROCMAP_QUERY _IOWR('f', 17, struct procmap_query)
static_assert(sizeof(procmap_query) == 104, "PROCMAP_QUERY v1 layout (include/uapi/linux/fs.h)");
#endif

namespace odp::detail {
namespace {

constexpr const char* maps_path = "/proc/self/maps";

[[noreturn]] void throw_malformed(std::string_view line) {
    throw_error(EPROTO, "cannot parse /proc/self/maps line '" + std::string(line) +
                            "': this kernel's format is not understood; please report it");
}

// Reads a hexadecimal (or decimal) field that must end with `separator`.
const char* parse_field(const char* first, const char* last, std::uintptr_t& value, int base,
                        char separator, std::string_view line) {
    const auto [next, ec] = std::from_chars(first, last, value, base);
    if (ec != std::errc{} || next == first || next == last || *next != separator) {
        throw_malformed(line);
    }
    return next + 1;
}

// "7f2a00000000-7f2a00200000 rw-p 00000000 00:00 0                  [heap]"
// (start-end perms offset major:minor inode, then the name after padding; the
// name may hold spaces, and ends with " (deleted)" for an unlinked file).
Mapping parse_line(std::string_view line) {
    const char* const last = line.data() + line.size();
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;
    const char* at = parse_field(line.data(), last, begin, 16, '-', line);
    at = parse_field(at, last, end, 16, ' ', line);
    if (begin >= end || last - at < 5 || at[4] != ' ') {
        throw_malformed(line);
    }
    Mapping mapping;
    mapping.range = Range{begin, end};
    mapping.permissions.assign(at, 4);
    mapping.readable = at[0] == 'r';
    mapping.writable = at[1] == 'w';
    std::uintptr_t ignored = 0;
    at = parse_field(at + 5, last, ignored, 16, ' ', line);  // offset
    at = parse_field(at, last, ignored, 16, ':', line);      // device major
    at = parse_field(at, last, ignored, 16, ' ', line);      // device minor
    // The inode ends the line when there is no name (older kernels print no
    // trailing space).
    const auto [after_inode, ec] = std::from_chars(at, last, ignored, 10);
    if (ec != std::errc{} || (after_inode != last && *after_inode != ' ')) {
        throw_malformed(line);
    }
    const std::string_view rest(after_inode, static_cast<std::size_t>(last - after_inode));
    if (const std::size_t name = rest.find_first_not_of(' '); name != std::string_view::npos) {
        mapping.path = std::string(rest.substr(name));
    }
    return mapping;
}

// Calls `on_line` with each complete line of `text`; returns what follows the
// last newline (a line still being read).
template <typename OnLine>
std::string_view for_each_line(std::string_view text, OnLine on_line) {
    for (;;) {
        const std::size_t newline = text.find('\n');
        if (newline == std::string_view::npos) {
            return text;
        }
        if (newline != 0 && !on_line(text.substr(0, newline))) {
            return {};
        }
        text.remove_prefix(newline + 1);
    }
}

// The text path. Stops reading at the first mapping past `within`: the kernel
// formats the text as it is read, so the rest is never produced.
std::vector<Mapping> read_maps_text(Range within) {
    const UniqueFd fd(::open(maps_path, O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
        throw_errno(std::string("open(") + maps_path + ") (is /proc mounted?)");
    }
    std::vector<Mapping> mappings;
    std::string pending;
    bool done = false;
    const auto on_line = [&](std::string_view line) {
        Mapping mapping = parse_line(line);
        if (mapping.range.begin >= within.end) {
            done = true;
            return false;
        }
        if (mapping.range.overlaps(within)) {
            mappings.push_back(std::move(mapping));
        }
        return true;
    };
    char buffer[16384];
    while (!done) {
        const ssize_t got = ::read(fd.get(), buffer, sizeof buffer);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw_errno(std::string("read(") + maps_path + ")");
        }
        if (got == 0) {
            if (!pending.empty()) {
                on_line(pending);  // no final newline
            }
            break;
        }
        pending.append(buffer, static_cast<std::size_t>(got));
        pending.erase(0, pending.size() - for_each_line(pending, on_line).size());
    }
    return mappings;
}

enum class Support : int { Unknown, Yes, No };

// One O_CLOEXEC descriptor of /proc/self/maps per process, opened on first
// use: in an emulated 6.12 guest open+close costs ~12 us and a query ~3 us. The
// descriptor describes the mm of the process that opened it, so a forked
// child (different pid) opens its own. Never destroyed: no exit-order issues.
class QueryFd {
  public:
    static QueryFd& instance() {
        static auto* const query_fd = new QueryFd;
        return *query_fd;
    }

    [[nodiscard]] Support support() const noexcept { return support_.load(); }

    // The mappings in `within`, or nullopt when the text must be read instead
    // (no PROCMAP_QUERY, or a name longer than PATH_MAX).
    std::optional<std::vector<Mapping>> read(Range within) {
        const std::lock_guard lock(mutex_);
        if (support_.load() == Support::No) {
            return std::nullopt;
        }
        const pid_t pid = ::getpid();
        if (pid != pid_) {
            fd_ = UniqueFd(::open(maps_path, O_RDONLY | O_CLOEXEC));
            if (fd_.get() < 0) {
                throw_errno(std::string("open(") + maps_path + ") (is /proc mounted?)");
            }
            pid_ = pid;
        }
        std::vector<Mapping> mappings;
        std::uintptr_t address = within.begin;
        while (address < within.end) {
            procmap_query query{};
            query.size = sizeof query;
            query.query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA;
            query.query_addr = address;
            query.vma_name_addr = reinterpret_cast<std::uintptr_t>(name_);
            query.vma_name_size = sizeof name_;
            if (::ioctl(fd_.get(), PROCMAP_QUERY, &query) != 0) {
                const int error = errno;
                if (error == ENOENT) {
                    support_.store(Support::Yes);
                    break;  // nothing mapped at or after `address`
                }
                if (error == ENOTTY || error == EINVAL || error == ENOSYS) {
                    // Linux < 6.11 (ENOTTY), or a seccomp filter (ENOSYS);
                    // remembered so that later calls go straight to the text.
                    support_.store(Support::No);
                    return std::nullopt;
                }
                if (error == ENAMETOOLONG || error == E2BIG) {
                    return std::nullopt;  // the text shows any name
                }
                throw_error(error, "ioctl(PROCMAP_QUERY) on /proc/self/maps at " +
                                       format_address(address) +
                                       " (the kernel has it but refused the query)");
            }
            support_.store(Support::Yes);
            if (query.vma_start >= within.end) {
                break;
            }
            mappings.push_back(to_mapping(query));
            address = static_cast<std::uintptr_t>(query.vma_end);
        }
        return mappings;
    }

  private:
    QueryFd() = default;

    Mapping to_mapping(const procmap_query& query) const {
        Mapping mapping;
        mapping.range = Range{static_cast<std::uintptr_t>(query.vma_start),
                              static_cast<std::uintptr_t>(query.vma_end)};
        mapping.readable = (query.vma_flags & PROCMAP_QUERY_VMA_READABLE) != 0;
        mapping.writable = (query.vma_flags & PROCMAP_QUERY_VMA_WRITABLE) != 0;
        mapping.permissions = {mapping.readable ? 'r' : '-', mapping.writable ? 'w' : '-',
                               (query.vma_flags & PROCMAP_QUERY_VMA_EXECUTABLE) != 0 ? 'x' : '-',
                               (query.vma_flags & PROCMAP_QUERY_VMA_SHARED) != 0 ? 's' : 'p'};
        if (query.vma_name_size > 1) {
            // vma_name_size counts the terminating zero. The text escapes a
            // newline in a path as \012; do the same so both read alike.
            for (const char c : std::string_view(name_, query.vma_name_size - 1)) {
                if (c == '\n') {
                    mapping.path += "\\012";
                } else {
                    mapping.path += c;
                }
            }
        }
        return mapping;
    }

    std::mutex mutex_;  // serialises the descriptor and name_
    std::atomic<Support> support_{Support::Unknown};
    pid_t pid_ = 0;
    UniqueFd fd_;
    char name_[PATH_MAX] = {};
};

}  // namespace

std::vector<Mapping> parse_maps(std::string_view text, Range within) {
    std::vector<Mapping> maps;
    const std::string_view last = for_each_line(text, [&](std::string_view line) {
        Mapping mapping = parse_line(line);
        if (mapping.range.overlaps(within)) {
            maps.push_back(std::move(mapping));
        }
        return true;
    });
    if (!last.empty()) {
        Mapping mapping = parse_line(last);
        if (mapping.range.overlaps(within)) {
            maps.push_back(std::move(mapping));
        }
    }
    return maps;
}

std::vector<Mapping> read_mappings(Range within, MapsReader reader) {
    if (reader != MapsReader::Text) {
        if (std::optional<std::vector<Mapping>> mappings = QueryFd::instance().read(within)) {
            return std::move(*mappings);
        }
        if (reader == MapsReader::Query) {
            throw_error(ENOTSUP,
                        "ioctl(PROCMAP_QUERY) on /proc/self/maps: not available "
                        "(Linux 6.11+ has it)");
        }
    }
    return read_maps_text(within);
}

std::vector<Mapping> read_mappings(Range within) {
    return read_mappings(within, MapsReader::Auto);
}

bool procmap_query_supported() {
    if (QueryFd::instance().support() == Support::Unknown) {
        (void)QueryFd::instance().read(Range{0, 1});
    }
    return QueryFd::instance().support() == Support::Yes;
}

std::vector<Range> accessible_ranges(const std::vector<Mapping>& maps, Range within,
                                     bool need_write) {
    std::vector<Range> ranges;
    for (const Mapping& mapping : maps) {
        if (!mapping.readable || (need_write && !mapping.writable)) {
            continue;
        }
        const Range part = mapping.range.intersect(within);
        if (part.empty()) {
            continue;
        }
        if (!ranges.empty() && ranges.back().end == part.begin) {
            ranges.back().end = part.end;  // adjacent VMAs: one registration covers both
        } else {
            ranges.push_back(part);
        }
    }
    return ranges;
}

std::vector<Range> accessible_ranges(Range within, bool need_write) {
    return accessible_ranges(read_mappings(within), within, need_write);
}

}  // namespace odp::detail
