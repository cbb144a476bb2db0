#include "proc_maps.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <odp/error.hpp>

#include "source.hpp"

namespace odp::detail {
namespace {

std::string read_whole_file(const char* path) {
    const UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
        throw_errno(std::string("open(") + path + ")");
    }
    std::string text;
    char buffer[16384];
    for (;;) {
        const ssize_t got = ::read(fd.get(), buffer, sizeof buffer);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw_errno(std::string("read(") + path + ")");
        }
        if (got == 0) {
            return text;
        }
        text.append(buffer, static_cast<std::size_t>(got));
    }
}

std::uintptr_t parse_hex(std::string_view text) {
    std::uintptr_t value = 0;
    std::from_chars(text.data(), text.data() + text.size(), value, 16);
    return value;
}

}  // namespace

std::vector<Mapping> read_mappings(Range within) {
    const std::string text = read_whole_file("/proc/self/maps");
    std::vector<Mapping> mappings;
    std::string_view rest(text);
    while (!rest.empty()) {
        const std::size_t newline = rest.find('\n');
        const std::string_view line = rest.substr(0, newline);
        rest = newline == std::string_view::npos ? std::string_view{} : rest.substr(newline + 1);
        // start-end perms offset dev inode [path]
        const std::size_t dash = line.find('-');
        const std::size_t space = line.find(' ');
        if (dash == std::string_view::npos || space == std::string_view::npos || dash > space) {
            continue;
        }
        Mapping mapping;
        mapping.range = Range{parse_hex(line.substr(0, dash)),
                              parse_hex(line.substr(dash + 1, space - dash - 1))};
        if (!mapping.range.overlaps(within)) {
            continue;
        }
        mapping.permissions = std::string(line.substr(space + 1, 4));
        // The path starts after the fifth field, padded with spaces.
        std::size_t position = space;
        for (int field = 0; field < 4 && position != std::string_view::npos; ++field) {
            position = line.find(' ', position + 1);
        }
        if (position != std::string_view::npos) {
            const std::size_t path_start = line.find_first_not_of(' ', position);
            if (path_start != std::string_view::npos) {
                mapping.path = std::string(line.substr(path_start));
            }
        }
        mappings.push_back(std::move(mapping));
    }
    return mappings;
}

}  // namespace odp::detail
