// Which addresses of this process are mapped, from /proc/self/maps.
//
// Used only on the slow path, when registering a whole chunk failed with
// EFAULT: reading the maps never faults pages in (mincore would not either,
// but it cannot tell PROT_NONE guard pages or read-only mappings, which
// ibv_reg_mr also refuses, from usable memory).
#pragma once

#include <odp/types.hpp>
#include <string_view>
#include <vector>

namespace odp::detail {

struct Mapping {
    Range range;
    bool readable = false;
    bool writable = false;
};

// Parses the text of /proc/<pid>/maps. Throws odp::Error(EPROTO) on a line it
// cannot read.
[[nodiscard]] std::vector<Mapping> parse_maps(std::string_view text);

// The sub-ranges of `within` that are mapped readable (and writable if
// `need_write`), adjacent ones merged, in address order.
[[nodiscard]] std::vector<Range> accessible_ranges(const std::vector<Mapping>& maps, Range within,
                                                   bool need_write);
[[nodiscard]] std::vector<Range> accessible_ranges(Range within, bool need_write);

}  // namespace odp::detail
