// The seam between odp::Mirror (the per-process invalidation source, see
// mirror.hpp) and the regions that need to hear about mapping changes.
#pragma once

#include <odp/export.h>

#include <odp/types.hpp>

namespace odp {

// Implemented by every emulated Region. The Mirror calls it on its reader
// thread for each event overlapping a watched range (Mirror::watch).
//
// Contract for implementations: both callbacks only mark state (atomics), never
// block, never take a lock that an application thread may hold while pinning
// memory (ibv_reg_mr can sleep on mmap_lock, and userfaultfd's unmapping thread
// waits until the reader has consumed the event), never call back into the
// Mirror, and never throw.
class ODP_API InvalidationListener {
  public:
    // The mapping under `range` (may extend beyond the watched range) changed.
    virtual void on_invalidate(Range range, InvalidationReason reason) noexcept = 0;
    // Events were lost (reason Overflow) or the source is going away
    // (Teardown): treat everything as stale.
    virtual void on_invalidate_all(InvalidationReason reason) noexcept = 0;

  protected:
    ~InvalidationListener() = default;
};

}  // namespace odp
