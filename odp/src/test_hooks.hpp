// Test-only hooks: points in the library where a host test runs code of its
// own, to open a race window on purpose so that the race fails every time
// instead of by luck. Production never sets the hook; each point costs one
// load of a null pointer (a plain load on x86), and no point is on the hit
// path.
#pragma once

#include <atomic>

namespace odp::detail {

enum class HookPoint {
    // release_pin: the last lease of a stale pin is gone, before the pin is
    // deregistered (Region close may run here).
    LastLeaseReleased,
    // acquire_slow: a new pin is in its slot, before the fault re-checks the
    // chunk's sequence (another thread may try to lease it here).
    FaultPublished,
    // close(): the region's queued fault-ahead requests are dropped, and it
    // is about to wait for the one running (the device mutex is held).
    FaultAheadForgotten,
    // expose: translate() returned, the exposure's chunks are leased.
    ExposeTranslated,
    // The userfaultfd reader: a read() returned events (the kernel has let
    // the threads that sent them go), before they are in the ring.
    UserfaultfdEventsRead,
    // The userfaultfd source read the mappings of a range it is about to
    // register, before the UFFDIO_REGISTER calls.
    UserfaultfdMappingsRead,
};

using TestHook = void (*)(HookPoint point);
extern std::atomic<TestHook> test_hook;

inline void run_test_hook(HookPoint point) noexcept {
    // Acquire: a point on a library thread (the userfaultfd reader) sees
    // what the test set up before installing the hook.
    if (const TestHook hook = test_hook.load(std::memory_order_acquire); hook != nullptr)
        [[unlikely]] {
        hook(point);
    }
}

}  // namespace odp::detail
