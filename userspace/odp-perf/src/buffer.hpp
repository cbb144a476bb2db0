// Anonymous memory for the tests: aligned mappings, refilled with a known
// pattern, remapped in place to exercise invalidation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace odp_perf {

// Byte `offset` of the test pattern for `seed`: both sides compute it, so
// every byte that crossed the wire can be checked without sending it twice.
constexpr std::uint8_t pattern_byte(std::uint32_t seed, std::uint64_t offset) noexcept {
    const std::uint64_t x = (offset + 1) * 0x9e3779b97f4a7c15ULL ^ (std::uint64_t{seed} << 17);
    return static_cast<std::uint8_t>((x >> 29) ^ (x >> 47) ^ seed);
}

// Fills `bytes` with the pattern of `seed` as if it started at `offset`
// (`invert`: the complement, so untouched bytes never match by accident).
void fill_pattern(std::span<std::uint8_t> bytes, std::uint32_t seed, std::uint64_t offset,
                  bool invert = false);
// Bytes of `bytes` that differ from the pattern of `seed` at `offset`.
std::uint64_t count_mismatches(std::span<const std::uint8_t> bytes, std::uint32_t seed,
                               std::uint64_t offset);

// An anonymous private mapping of `length` bytes aligned to `alignment` (a
// power of two). Move-only; unmapped by the destructor.
class MappedBuffer {
  public:
    MappedBuffer() = default;
    MappedBuffer(std::size_t length, std::size_t alignment, bool populate);
    MappedBuffer(MappedBuffer&& other) noexcept;
    MappedBuffer& operator=(MappedBuffer&& other) noexcept;
    MappedBuffer(const MappedBuffer&) = delete;
    MappedBuffer& operator=(const MappedBuffer&) = delete;
    ~MappedBuffer();

    std::uint8_t* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return length_; }
    std::span<std::uint8_t> bytes() const noexcept { return {data_, length_}; }
    std::uintptr_t address() const noexcept { return reinterpret_cast<std::uintptr_t>(data_); }

    // Replaces the pages under [offset, offset + length) with fresh zero pages
    // at the same address (munmap + mmap MAP_FIXED), as an application that
    // frees and reallocates its buffer would. Throws odp::Error.
    void remap(std::size_t offset, std::size_t length);

  private:
    void release() noexcept;

    std::uint8_t* data_ = nullptr;
    std::size_t length_ = 0;
};

// Touches every page so its first-touch cost is not measured later.
void populate(std::span<std::uint8_t> bytes);

std::size_t page_size();
constexpr std::size_t next_power_of_two(std::size_t value) {
    std::size_t p = 1;
    while (p < value) {
        p <<= 1;
    }
    return p;
}
constexpr std::size_t round_up(std::size_t value, std::size_t multiple) {
    return (value + multiple - 1) / multiple * multiple;
}

}  // namespace odp_perf
