// odp::Error: the one error convention of odp-layer.
//
// Every failure is reported by throwing odp::Error, a std::system_error that
// carries the errno value and a message saying what was being done, on what,
// and what the caller can do about it:
//
//   ibv_reg_mr(0x7f2a00000000, 2 MiB) on rxe0: Cannot allocate memory
//   (RLIMIT_MEMLOCK is 8 MiB; raise it with `ulimit -l` or lower max_pinned_bytes)
//
// Destructors never throw: they report failures with odp::log_error().
#pragma once

#include <odp/export.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

namespace odp {

class ODP_API Error : public std::system_error {
  public:
    // `errno_value` is a positive errno (EINVAL, ENOMEM, ...); `message` says
    // what was being done, on what, and what to do.
    Error(int errno_value, const std::string& message);

    // The errno value this error carries (same as code().value()).
    [[nodiscard]] int errno_value() const noexcept { return code().value(); }
};

// Thrown when the pinned-memory budget is exhausted and nothing can be evicted
// because every registered chunk is leased (errno EAGAIN): release leases
// (complete work requests) and retry, or raise max_pinned_bytes.
class ODP_API BackPressure : public Error {
  public:
    using Error::Error;
};

// Throws odp::Error(errno_value, message).
[[noreturn]] ODP_API void throw_error(int errno_value, const std::string& message);

// Throws odp::Error with the current errno (EIO if errno is 0).
[[noreturn]] ODP_API void throw_errno(const std::string& message);

// For functions that return -1 and set errno (system calls).
inline int check_syscall(int rc, std::string_view what) {
    if (rc == -1) {
        throw_errno(std::string(what));
    }
    return rc;
}

// For verbs calls that return 0 on success and an errno value (or -1 with
// errno set) on failure: ibv_modify_qp, ibv_post_send, ibv_dereg_mr, ...
inline void check_rc(int rc, std::string_view what) {
    if (rc != 0) {
        throw_error(rc > 0 ? rc : (errno != 0 ? errno : EIO), std::string(what));
    }
}

// For calls that return a pointer, or nullptr with errno set.
template <typename T>
T* check_ptr(T* pointer, std::string_view what) {
    if (pointer == nullptr) {
        throw_errno(std::string(what));
    }
    return pointer;
}

// Logs a failure that cannot be thrown (destructors, noexcept paths) to stderr
// with an "odp:" prefix. Never throws.
ODP_API void log_error(std::string_view message) noexcept;

// "2 MiB", "1.5 GiB", "4096 B": sizes in messages.
[[nodiscard]] ODP_API std::string format_bytes(std::uint64_t bytes);

// "0x7f2a00000000"
[[nodiscard]] ODP_API std::string format_address(std::uintptr_t address);

}  // namespace odp
