// odp-stress's report of a SIGSEGV or SIGBUS: what a core's backtrace cannot
// say afterwards, printed the moment the fault happens. Where the address is
// (which buffer, which offset), why the kernel refused it (si_code), what was
// mapped there and around it with its smaps VmFlags (a hole, a PROT_NONE or
// read-only mapping, userfaultfd "uw"/"um"), the page's pagemap entry
// (uffd-wp bit, guard region), the mapping changes in flight at that moment
// and the last ones recorded for that page, and what every thread was inside.
// Then the default action is restored and the signal raised again, so the
// core and run-stress.sh's gdb backtrace still follow, at the faulting
// instruction. Everything the handler does is async-signal-safe: write(2),
// open/read of /proc, no allocation, no lock.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace odp::stress {

// Text built on the stack and written with write(2) when full or flushed.
class SignalSafeText {
  public:
    explicit SignalSafeText(int fd) noexcept : fd_(fd) {}
    ~SignalSafeText() { flush(); }
    SignalSafeText(const SignalSafeText&) = delete;
    SignalSafeText& operator=(const SignalSafeText&) = delete;

    SignalSafeText& text(std::string_view piece) noexcept;
    SignalSafeText& decimal(std::uint64_t value) noexcept;
    SignalSafeText& hex(std::uint64_t value) noexcept;  // "0x..." lower case
    void flush() noexcept;

  private:
    int fd_;
    char buffer_[1024];
    std::size_t used_ = 0;
};

// A buffer the report names faulting addresses by ("source", "target").
struct NamedBuffer {
    std::string_view name;  // must outlive the handler: a literal
    std::uintptr_t begin = 0;
    std::size_t length = 0;
};

// What the stress adds about a page of buffer `index` of the installed
// buffers: the changes in flight and the last ones recorded. Called from the
// handler: async-signal-safe, no allocation, no lock.
using PageHistory = void (*)(SignalSafeText& out, std::size_t buffer_index, std::size_t offset);

// Installs the handler for SIGSEGV and SIGBUS (on the thread's alternate
// stack where it has one). `buffers` is copied; at most 4 are kept.
void install_crash_report(const NamedBuffer* buffers, std::size_t count, PageHistory history);

// An alternate signal stack for the calling thread for as long as it lives,
// so that the report also runs when the thread's own stack is what failed.
class AlternateSignalStack {
  public:
    AlternateSignalStack();
    ~AlternateSignalStack();
    AlternateSignalStack(const AlternateSignalStack&) = delete;
    AlternateSignalStack& operator=(const AlternateSignalStack&) = delete;

  private:
    std::unique_ptr<unsigned char[]> stack_;
    bool installed_ = false;
};

}  // namespace odp::stress
