#include "memory_map.hpp"

#include <charconv>
#include <fstream>
#include <odp/error.hpp>
#include <sstream>
#include <string>

namespace odp::detail {

std::vector<Mapping> parse_maps(std::string_view text) {
    std::vector<Mapping> maps;
    while (!text.empty()) {
        const std::size_t newline = text.find('\n');
        const std::string_view line = text.substr(0, newline);
        text = newline == std::string_view::npos ? std::string_view{} : text.substr(newline + 1);
        if (line.empty()) {
            continue;
        }
        // "7f2a00000000-7f2a00200000 rw-p 00000000 00:00 0   [heap]"
        std::uintptr_t begin = 0;
        std::uintptr_t end = 0;
        const char* const first = line.data();
        const char* const last = line.data() + line.size();
        auto [dash, ec1] = std::from_chars(first, last, begin, 16);
        if (ec1 != std::errc{} || dash == last || *dash != '-') {
            throw_error(EPROTO, "cannot parse /proc/self/maps line '" + std::string(line) + "'");
        }
        auto [space, ec2] = std::from_chars(dash + 1, last, end, 16);
        if (ec2 != std::errc{} || last - space < 4 || *space != ' ' || begin >= end) {
            throw_error(EPROTO, "cannot parse /proc/self/maps line '" + std::string(line) + "'");
        }
        maps.push_back(Mapping{Range{begin, end}, space[1] == 'r', space[2] == 'w'});
    }
    return maps;
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
    std::ifstream file("/proc/self/maps");
    if (!file) {
        throw_errno("open /proc/self/maps (is /proc mounted?)");
    }
    std::ostringstream text;
    text << file.rdbuf();
    return accessible_ranges(parse_maps(text.str()), within, need_write);
}

}  // namespace odp::detail
