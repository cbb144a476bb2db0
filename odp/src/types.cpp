#include <infiniband/verbs.h>

#include <limits>
#include <odp/error.hpp>
#include <odp/types.hpp>

namespace odp {

Range Range::from_length(std::uintptr_t address, std::size_t length) {
    if (length == 0) {
        throw_error(EINVAL, "range at " + format_address(address) +
                                " has length 0: pass the number of bytes to use (at least 1)");
    }
    if (length - 1 > std::numeric_limits<std::uintptr_t>::max() - address) {
        throw_error(EOVERFLOW, "range at " + format_address(address) + " of " +
                                   format_bytes(length) +
                                   " wraps around the end of the address space: check the "
                                   "address and length");
    }
    if (length > std::numeric_limits<std::uintptr_t>::max() - address) {
        // Ends exactly at the top of the address space: not representable
        // as a half-open range. No user mapping lives there.
        throw_error(EOVERFLOW, "range at " + format_address(address) + " of " +
                                   format_bytes(length) + " reaches the end of the address space");
    }
    return Range{address, address + length};
}

Range Range::from_length(const void* address, std::size_t length) {
    return from_length(reinterpret_cast<std::uintptr_t>(address), length);
}

Range Range::checked(std::uintptr_t begin, std::uintptr_t end) {
    if (begin >= end) {
        throw_error(EINVAL, "range [" + format_address(begin) + ", " + format_address(end) +
                                ") is empty or reversed: begin must be below end");
    }
    return Range{begin, end};
}

std::string_view to_string(InvalidationReason reason) noexcept {
    switch (reason) {
        case InvalidationReason::Unmap:
            return "unmap";
        case InvalidationReason::Clear:
            return "clear";
        case InvalidationReason::Protection:
            return "protection";
        case InvalidationReason::Migration:
            return "migration";
        case InvalidationReason::Teardown:
            return "teardown";
        case InvalidationReason::Other:
            return "other";
        case InvalidationReason::Overflow:
            return "overflow";
    }
    return "unknown";
}

std::string_view to_string(Mode mode) noexcept {
    switch (mode) {
        case Mode::Pinned:
            return "pinned";
        case Mode::Native:
            return "native";
        case Mode::Emulated:
            return "emulated";
        case Mode::Auto:
            return "auto";
    }
    return "unknown";
}

Mode parse_mode(std::string_view name) {
    for (const Mode mode : {Mode::Pinned, Mode::Native, Mode::Emulated, Mode::Auto}) {
        if (name == to_string(mode)) {
            return mode;
        }
    }
    throw_error(EINVAL,
                "unknown mode '" + std::string(name) + "': use pinned, native, emulated or auto");
}

int to_ibv_access(Access access) noexcept {
    int flags = 0;
    if (has(access, Access::LocalWrite)) {
        flags |= IBV_ACCESS_LOCAL_WRITE;
    }
    if (has(access, Access::RemoteWrite)) {
        flags |= IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
    }
    if (has(access, Access::RemoteRead)) {
        flags |= IBV_ACCESS_REMOTE_READ;
    }
    if (has(access, Access::RemoteAtomic)) {
        flags |= IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_LOCAL_WRITE;
    }
    return flags;
}

std::string to_string(Access access) {
    std::string text;
    const auto add = [&](Access flag, const char* name) {
        if (has(access, flag)) {
            text += text.empty() ? "" : "|";
            text += name;
        }
    };
    add(Access::LocalWrite, "LocalWrite");
    add(Access::RemoteWrite, "RemoteWrite");
    add(Access::RemoteRead, "RemoteRead");
    add(Access::RemoteAtomic, "RemoteAtomic");
    return text.empty() ? "None" : text;
}

}  // namespace odp
