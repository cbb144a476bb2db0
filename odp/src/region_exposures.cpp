// The exposure registry: remote views of a region (Region::expose) and
// their callbacks when the memory under them changes.
//
// Concurrency contract:
//  * exposures_ is guarded by exposures_mutex_, held only to list, unlist
//    or collect exposures, never while a callback runs; exposure_count_
//    lets invalidation skip the mutex when there are none.
//  * Each exposure's callback runs at most once, under the exposure's own
//    (recursive) mutex, on the invalidating thread; Exposure::release()
//    takes that mutex, so after it returns the callback neither runs nor
//    will. The callback may call release() itself.
//  * An exposure is listed before its chunks are leased: an invalidation
//    between the two fires it (it may fire before expose() returns).
#include <algorithm>

#include "region_core.hpp"
#include "test_hooks.hpp"

namespace odp::detail {

// Marks every exposure overlapping `hit` as changed and runs each callback at
// most once.
void RegionCore::fire_exposures(Range hit, InvalidationReason reason) noexcept {
    if (exposure_count_.load(std::memory_order_acquire) == 0) {
        return;
    }
    std::vector<std::shared_ptr<ExposureState>> to_fire;
    {
        const std::scoped_lock lock(exposures_mutex_);
        for (const auto& state : exposures_) {
            if (state->range.overlaps(hit)) {
                state->changed.store(true, std::memory_order_release);
                to_fire.push_back(state);
            }
        }
    }
    for (const auto& state : to_fire) {
        const std::scoped_lock lock(state->mutex);
        if (!state->released && !state->fired && state->callback) {
            state->fired = true;
            try {
                state->callback(hit, reason);
            } catch (const std::exception& error) {
                log_error(std::string("exposure callback threw (ignored): ") + error.what());
            } catch (...) {
                log_error("exposure callback threw (ignored)");
            }
        }
    }
}

Exposure RegionCore::expose(std::uintptr_t address, std::size_t length, ExposureCallback callback) {
    const Range want = checked_part(address, length, "expose");
    if (!has(config_.access, Access::RemoteWrite) && !has(config_.access, Access::RemoteRead) &&
        !has(config_.access, Access::RemoteAtomic)) {
        throw_error(EACCES, what("expose", want) + ": the region was registered with access " +
                                to_string(config_.access) +
                                ", no remote access: register it with RemoteWrite/RemoteRead");
    }
    // Changes made before this call are behind the exposure, not under it:
    // their pending events are delivered before it is listed (else a munmap
    // that returned before expose() would mark it changed at release).
    if (mirror_ && !mirror_->up_to_date()) {
        mirror_->synchronize();
    }
    // Listed before the chunks are leased: an invalidation from here on runs
    // the callback (one that lands before translate() is already behind the
    // pages it leases). The callback may thus run before expose() returns.
    auto state = std::make_shared<ExposureState>();
    state->callback = std::move(callback);
    state->range = want;
    {
        const std::scoped_lock lock(exposures_mutex_);
        exposures_.push_back(state);
        exposure_count_.fetch_add(1, std::memory_order_release);
    }
    Exposure exposure;
    try {
        exposure.lease_ = lease_range(want, unlimited_sges, "expose");
    } catch (...) {
        remove_exposure(state);
        const std::scoped_lock lock(state->mutex);
        state->released = true;
        throw;
    }
    exposure.state_ = std::move(state);  // from here on its destructor unlists it
    run_test_hook(HookPoint::ExposeTranslated);
    exposure.range_ = want;
    const auto sges = exposure.lease_.sges();
    const auto rkeys = exposure.lease_.rkeys();
    exposure.segments_.reserve(sges.size());
    for (std::size_t i = 0; i < sges.size(); ++i) {
        exposure.segments_.push_back(RemoteSegment{sges[i].addr, sges[i].length, rkeys[i]});
    }
    return exposure;
}

void RegionCore::remove_exposure(const std::shared_ptr<ExposureState>& state) noexcept {
    const std::scoped_lock lock(exposures_mutex_);
    if (std::erase(exposures_, state) != 0) {
        exposure_count_.fetch_sub(1, std::memory_order_release);
    }
}

}  // namespace odp::detail
