#include <cinttypes>
#include <cstdio>
#include <odp/error.hpp>
#include <string>

namespace odp {

Error::Error(int errno_value, const std::string& message)
    : std::system_error(errno_value, std::generic_category(), message) {}

void throw_error(int errno_value, const std::string& message) {
    throw Error(errno_value, message);
}

void throw_errno(const std::string& message) {
    const int saved = errno;
    throw Error(saved != 0 ? saved : EIO, message);
}

void log_error(std::string_view message) noexcept {
    // fprintf, not iostreams: usable from any destructor, even at exit.
    std::fprintf(stderr, "odp: %.*s\n", static_cast<int>(message.size()), message.data());
}

std::string format_bytes(std::uint64_t bytes) {
    static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    std::size_t unit = 0;
    std::uint64_t scale = 1;
    while (unit + 1 < std::size(units) && bytes / scale >= 1024) {
        scale *= 1024;
        ++unit;
    }
    if (bytes % scale == 0) {
        return std::to_string(bytes / scale) + " " + units[unit];
    }
    char text[32];
    std::snprintf(text, sizeof text, "%.1f %s",
                  static_cast<double>(bytes) / static_cast<double>(scale), units[unit]);
    return text;
}

std::string format_address(std::uintptr_t address) {
    char text[24];
    std::snprintf(text, sizeof text, "0x%" PRIxPTR, address);
    return text;
}

}  // namespace odp
