// The process's mappings from /proc/self/maps (internal).
#pragma once

#include <odp/types.hpp>
#include <string>
#include <vector>

namespace odp::detail {

struct Mapping {
    Range range;
    std::string permissions;  // "rw-p"
    std::string path;         // "" for anonymous, "[heap]", "/SYSV00000000 (deleted)", a file
};

// The mappings overlapping `within`, in address order. Throws odp::Error.
std::vector<Mapping> read_mappings(Range within);

}  // namespace odp::detail
