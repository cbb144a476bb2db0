#include "buffer.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <odp/error.hpp>
#include <string>
#include <utility>

namespace odp_perf {

void fill_pattern(std::span<std::uint8_t> bytes, std::uint32_t seed, std::uint64_t offset,
                  bool invert) {
    const std::uint8_t mask = invert ? 0xff : 0x00;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        bytes[i] = static_cast<std::uint8_t>(pattern_byte(seed, offset + i) ^ mask);
    }
}

std::uint64_t count_mismatches(std::span<const std::uint8_t> bytes, std::uint32_t seed,
                               std::uint64_t offset) {
    std::uint64_t mismatches = 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        mismatches += bytes[i] != pattern_byte(seed, offset + i) ? 1 : 0;
    }
    return mismatches;
}

std::size_t page_size() {
    static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return size;
}

MappedBuffer::MappedBuffer(std::size_t length, std::size_t alignment, bool populate_now) {
    if (length == 0 || alignment == 0 || (alignment & (alignment - 1)) != 0) {
        odp::throw_error(EINVAL, "MappedBuffer: length " + std::to_string(length) +
                                     " and alignment " + std::to_string(alignment) +
                                     " must be non-zero, alignment a power of two");
    }
    length = round_up(length, page_size());
    alignment = std::max(alignment, page_size());
    // Over-map and trim so the start is aligned (chunks then never straddle a slot).
    const std::size_t span_length = length + alignment;
    void* raw =
        mmap(nullptr, span_length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        odp::throw_errno(
            "mmap(" + odp::format_bytes(span_length) +
            ") for a test buffer (lower --size/--sweep or give the guest more memory)");
    }
    const auto start = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = (start + alignment - 1) & ~(std::uintptr_t{alignment} - 1);
    if (aligned > start) {
        munmap(raw, aligned - start);
    }
    const std::uintptr_t tail = aligned + length;
    if (start + span_length > tail) {
        munmap(reinterpret_cast<void*>(tail), start + span_length - tail);
    }
    data_ = reinterpret_cast<std::uint8_t*>(aligned);
    length_ = length;
    if (populate_now) {
        populate(bytes());
    }
}

MappedBuffer::MappedBuffer(MappedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), length_(std::exchange(other.length_, 0)) {}

MappedBuffer& MappedBuffer::operator=(MappedBuffer&& other) noexcept {
    if (this != &other) {
        release();
        data_ = std::exchange(other.data_, nullptr);
        length_ = std::exchange(other.length_, 0);
    }
    return *this;
}

MappedBuffer::~MappedBuffer() {
    release();
}

void MappedBuffer::release() noexcept {
    if (data_ != nullptr && munmap(data_, length_) != 0) {
        odp::log_error("odp-perf: munmap of a test buffer failed");
    }
    data_ = nullptr;
    length_ = 0;
}

void MappedBuffer::remap(std::size_t offset, std::size_t length) {
    if (offset % page_size() != 0 || length % page_size() != 0 || offset + length > length_ ||
        length == 0) {
        odp::throw_error(EINVAL, "MappedBuffer::remap(" + std::to_string(offset) + ", " +
                                     std::to_string(length) + "): not page-aligned inside the " +
                                     odp::format_bytes(length_) + " buffer");
    }
    void* where = data_ + offset;
    odp::check_syscall(munmap(where, length), "munmap for remap");
    void* again =
        mmap(where, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (again == MAP_FAILED) {
        odp::throw_errno("mmap(MAP_FIXED) for remap at " +
                         odp::format_address(reinterpret_cast<std::uintptr_t>(where)));
    }
}

void populate(std::span<std::uint8_t> bytes) {
    const std::size_t step = page_size();
    for (std::size_t i = 0; i < bytes.size(); i += step) {
        // volatile: the write must happen even though nothing reads it.
        *static_cast<volatile std::uint8_t*>(bytes.data() + i) = 0;
    }
}

}  // namespace odp_perf
