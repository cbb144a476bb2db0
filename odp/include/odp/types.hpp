// Value types shared by every part of libodp (and the seam with odp::Mirror).
#pragma once

#include <odp/export.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace odp {

// A half-open range of virtual addresses [begin, end). Never empty when built
// with from_length() or checked(): bad arguments throw odp::Error(EINVAL or
// EOVERFLOW) instead of producing a wrapped or empty range.
struct ODP_API Range {
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;

    // [address, address + length); throws odp::Error(EINVAL) for length 0 and
    // odp::Error(EOVERFLOW) when address + length wraps around.
    static Range from_length(std::uintptr_t address, std::size_t length);
    static Range from_length(const void* address, std::size_t length);

    // [begin, end); throws odp::Error(EINVAL) unless begin < end.
    static Range checked(std::uintptr_t begin, std::uintptr_t end);

    [[nodiscard]] constexpr std::size_t length() const noexcept { return end - begin; }
    [[nodiscard]] constexpr bool empty() const noexcept { return begin >= end; }
    [[nodiscard]] constexpr bool contains(std::uintptr_t address) const noexcept {
        return address >= begin && address < end;
    }
    [[nodiscard]] constexpr bool contains(const Range& other) const noexcept {
        return other.begin >= begin && other.end <= end;
    }
    [[nodiscard]] constexpr bool overlaps(const Range& other) const noexcept {
        return begin < other.end && other.begin < end;
    }
    // The overlap of two ranges; empty() if they do not overlap.
    [[nodiscard]] constexpr Range intersect(const Range& other) const noexcept {
        const std::uintptr_t b = begin > other.begin ? begin : other.begin;
        const std::uintptr_t e = end < other.end ? end : other.end;
        return b < e ? Range{b, e} : Range{b, b};
    }
    friend constexpr bool operator==(const Range&, const Range&) = default;
};

// Why the memory under a range stopped being what was registered.
enum class InvalidationReason : std::uint8_t {
    Unmap,       // munmap, mremap away, shmdt, exit
    Clear,       // madvise(DONTNEED/FREE/REMOVE), hole punch: pages replaced by zero pages
    Protection,  // mprotect
    Migration,   // page migration, compaction, NUMA balancing, swap
    Teardown,    // the region or the process is going away
    Other,       // anything else the source could not classify
    Overflow,    // the source lost events: everything must be treated as stale
};
inline constexpr std::size_t invalidation_reason_count = 7;
[[nodiscard]] ODP_API std::string_view to_string(InvalidationReason reason) noexcept;

// How a Region is registered with the NIC.
enum class Mode : std::uint8_t {
    Pinned,    // one plain ibv_reg_mr over the whole region (pins everything now)
    Native,    // one IBV_ACCESS_ON_DEMAND MR: the NIC faults pages itself
    Emulated,  // chunks registered lazily, kept coherent by invalidation events
    Auto,      // Native if the device's ODP caps cover the access, Emulated otherwise
};
[[nodiscard]] ODP_API std::string_view to_string(Mode mode) noexcept;
// "pinned", "native", "emulated", "auto" (as printed by to_string); throws
// odp::Error(EINVAL) listing the valid names otherwise.
[[nodiscard]] ODP_API Mode parse_mode(std::string_view name);

// What a region may be used for (a bit set; maps to IBV_ACCESS_* flags).
// Every region may be used locally as a send/write source; LocalWrite lets the
// NIC write into it (receives, RDMA READ responses).
enum class Access : std::uint8_t {
    None = 0,
    LocalWrite = 1U << 0,
    RemoteWrite = 1U << 1,
    RemoteRead = 1U << 2,
    RemoteAtomic = 1U << 3,
    All = LocalWrite | RemoteWrite | RemoteRead | RemoteAtomic,
};
[[nodiscard]] constexpr Access operator|(Access a, Access b) noexcept {
    return static_cast<Access>(static_cast<unsigned>(a) | static_cast<unsigned>(b));
}
[[nodiscard]] constexpr Access operator&(Access a, Access b) noexcept {
    return static_cast<Access>(static_cast<unsigned>(a) & static_cast<unsigned>(b));
}
[[nodiscard]] constexpr bool has(Access set, Access flag) noexcept {
    return (set & flag) == flag && flag != Access::None;
}
// IBV_ACCESS_* flags for `access` (without IBV_ACCESS_ON_DEMAND). Remote write
// and atomic imply local write, as verbs requires.
[[nodiscard]] ODP_API int to_ibv_access(Access access) noexcept;
// "LocalWrite|RemoteRead"
[[nodiscard]] ODP_API std::string to_string(Access access);

// Prefetch advice (ibv_advise_mr natively, eager registration when emulated).
enum class Prefetch : std::uint8_t {
    Read,   // IBV_ADVISE_MR_ADVICE_PREFETCH
    Write,  // IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE
};

}  // namespace odp
