// Changes to the mapping under a buffer, made the way an application (or the
// kernel on its behalf) makes them. The stress's changer threads apply them at
// random while RDMA is in flight; workers apply them right before a release
// (a "late" change). Every change leaves the whole buffer mapped read-write
// again when it returns. The caller keeps CPU accesses to the range out while
// a change runs (some unmap or write-protect it briefly). Changes that leave
// a hole in a buffer for a moment, or map what the kernel places (mremap's
// place to move to), run one at a time here (address_space_mutex in the .cpp).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace odp::stress {

enum class ChangeKind : std::uint8_t {
    MunmapMmap,  // munmap, then mmap MAP_FIXED of fresh anonymous pages (zeroes)
    Dontneed,    // madvise(MADV_DONTNEED) (zeroes)
    Mremap,      // mremap away and back: the same pages under new page tables
    Mprotect,    // read-only, then read-write again: the same pages
    ForkWrite,   // fork; the parent rewrites one byte per page with its own value
    Pageout,     // madvise(MADV_PAGEOUT) to swap (zram in the guests): same bytes
    Migrate,     // move_pages to another NUMA node (1 in 16: migrate_pages, whole process)
    ThpSplit,    // a 2 MiB block made a huge page, then split (partial mprotect or munmap+mmap)
};
inline constexpr std::array all_change_kinds = {
    ChangeKind::MunmapMmap, ChangeKind::Dontneed, ChangeKind::Mremap,  ChangeKind::Mprotect,
    ChangeKind::ForkWrite,  ChangeKind::Pageout,  ChangeKind::Migrate, ChangeKind::ThpSplit,
};
inline constexpr std::size_t change_kind_count = all_change_kinds.size();

[[nodiscard]] std::string_view name_of(ChangeKind kind) noexcept;
// "munmap-mmap", "dontneed", ... as printed by name_of; nullopt otherwise.
[[nodiscard]] std::optional<ChangeKind> parse_change_kind(std::string_view name) noexcept;

// Why this machine cannot make changes of `kind` ("no swap is active: ..."),
// or nullopt when it can.
[[nodiscard]] std::optional<std::string> why_unavailable(ChangeKind kind);

// Huge-page alignment: buffers and ThpSplit blocks.
inline constexpr std::size_t huge_page_size = std::size_t{2} << 20;
[[nodiscard]] std::size_t page_size() noexcept;

// An anonymous read-write mapping aligned to 2 MiB, marked MADV_HUGEPAGE and
// populated. Move-only owner.
class Buffer {
  public:
    Buffer(std::string name, std::size_t length);
    ~Buffer();
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    [[nodiscard]] const std::string& name() const noexcept { return name_; }
    [[nodiscard]] unsigned char* data() const noexcept { return data_; }
    [[nodiscard]] std::size_t length() const noexcept { return length_; }

  private:
    std::string name_;
    unsigned char* data_ = nullptr;
    std::size_t length_ = 0;
};

struct ChangeResult {
    bool applied = false;  // false: the system call failed, `failure` says which and why
    std::string failure;
    bool zeroed = false;         // part of the range now reads zeros (its old bytes are gone)
    std::uint64_t pages = 0;     // Migrate: pages moved; ThpSplit: 1 if a huge page was split;
                                 // Mremap failed partway: pages it had moved (moved back)
    bool whole_process = false;  // Migrate: migrate_pages of every page of the process
};

// Applies one change of `kind` to [offset, offset + length) of `buffer`
// (page-aligned; ThpSplit: a 2 MiB block, which it splits at a random place).
// `random` picks the variant (ThpSplit), the node (Migrate), and whether a
// Migrate is process-wide (`allow_whole_process`). Never throws for a failed
// system call: that is a result (libodp must not make the application's own
// calls fail, so the caller reports it).
[[nodiscard]] ChangeResult apply_change(ChangeKind kind, const Buffer& buffer, std::size_t offset,
                                        std::size_t length, std::mt19937_64& random,
                                        bool allow_whole_process);

// Test-only: points inside changes where a host test runs code of its own
// (tests/vm/stress/mapping_changes_test.cpp); odp-stress never sets it.
enum class ChangePoint : std::uint8_t {
    HoleOpen,     // munmap-mmap: the range is unmapped, not yet mapped again
    PlaceChosen,  // mremap: `address` is the place the pages will move to
};
using ChangeHook = void (*)(ChangePoint point, const void* address);
extern std::atomic<ChangeHook> change_hook;

// True if `kind` can leave the range reading zeros, i.e. a registration that
// keeps the old pages (a pinned MR) certainly misses the change.
[[nodiscard]] bool may_zero(ChangeKind kind) noexcept;

}  // namespace odp::stress
