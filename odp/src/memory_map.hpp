// The process's mappings, as /proc/self/maps describes them (internal).
//
// The one place libodp reads them: the userfaultfd source (to register each
// mapping of a watched range, on every watch and every arm) and the regions'
// slow path when registering a whole chunk failed with EFAULT (reading the maps
// never faults pages in; mincore would not either, but it cannot tell
// PROT_NONE guard pages or read-only mappings, which ibv_reg_mr also refuses,
// from usable memory).
//
// On Linux 6.11+ the PROCMAP_QUERY ioctl walks only the VMAs of the range asked
// for; older kernels get the text of /proc/self/maps, which costs 0.1-1 ms per
// read in an emulated guest.
#pragma once

#include <odp/types.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace odp::detail {

struct Mapping {
    Range range;
    bool readable = false;
    bool writable = false;
    std::string permissions;  // as in /proc/self/maps: "rw-p", "r--s"
    std::string path;         // "" if anonymous, "[heap]", "/SYSV00000000 (deleted)", a file's path

    friend bool operator==(const Mapping&, const Mapping&) = default;
};

// Every address.
inline constexpr Range whole_address_space{0, ~std::uintptr_t{0}};

// Parses the text of /proc/<pid>/maps, keeping the mappings that overlap
// `within`. Throws odp::Error(EPROTO) on a line it cannot read.
[[nodiscard]] std::vector<Mapping> parse_maps(std::string_view text,
                                              Range within = whole_address_space);

// The mappings of this process overlapping `within`, in address order.
// Throws odp::Error.
[[nodiscard]] std::vector<Mapping> read_mappings(Range within);

// How read_mappings gets them; Auto is the PROCMAP_QUERY ioctl where the kernel
// has it, else the text. Tests force one or the other.
enum class MapsReader { Auto, Query, Text };
// Query throws odp::Error(ENOTSUP) when the kernel has no PROCMAP_QUERY.
[[nodiscard]] std::vector<Mapping> read_mappings(Range within, MapsReader reader);
// Whether this kernel has PROCMAP_QUERY (Linux 6.11+); probes it once.
[[nodiscard]] bool procmap_query_supported();

// The sub-ranges of `within` that are mapped readable (and writable if
// `need_write`), adjacent ones merged, in address order.
[[nodiscard]] std::vector<Range> accessible_ranges(const std::vector<Mapping>& maps, Range within,
                                                   bool need_write);
[[nodiscard]] std::vector<Range> accessible_ranges(Range within, bool need_write);

}  // namespace odp::detail
