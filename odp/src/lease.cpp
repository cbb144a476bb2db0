#include <algorithm>
#include <odp/lease.hpp>
#include <utility>

#include "region_core.hpp"

namespace odp {

Lease::Lease(Lease&& other) noexcept {
    *this = std::move(other);
}

Lease& Lease::operator=(Lease&& other) noexcept {
    if (this != &other) {
        release();
        core_ = std::exchange(other.core_, nullptr);
        sge_count_ = std::exchange(other.sge_count_, 0);
        pin_count_ = std::exchange(other.pin_count_, 0);
        heap_ = std::exchange(other.heap_, false);
        if (!heap_) {
            std::copy_n(other.inline_sges_.begin(), sge_count_, inline_sges_.begin());
            std::copy_n(other.inline_rkeys_.begin(), sge_count_, inline_rkeys_.begin());
            std::copy_n(other.inline_pins_.begin(), pin_count_, inline_pins_.begin());
        }
        heap_sges_ = std::move(other.heap_sges_);
        heap_rkeys_ = std::move(other.heap_rkeys_);
        heap_pins_ = std::move(other.heap_pins_);
    }
    return *this;
}

void Lease::allocate(std::size_t sge_count, std::size_t pin_count) {
    heap_ = true;
    heap_sges_ = std::make_unique<ibv_sge[]>(sge_count);
    heap_rkeys_ = std::make_unique<std::uint32_t[]>(sge_count);
    heap_pins_ = std::make_unique<detail::Pin*[]>(pin_count);
}

std::size_t Lease::length() const noexcept {
    std::size_t total = 0;
    for (const ibv_sge& sge : sges()) {
        total += sge.length;
    }
    return total;
}

bool Lease::release() noexcept {
    detail::RegionCore* core = std::exchange(core_, nullptr);
    if (core == nullptr) {
        return false;
    }
    // A change whose event the source recorded but has not delivered yet
    // (the munmap returned before this call) must be in the pins' state.
    bool changed = !core->catch_up();
    detail::Pin** pins = pin_data();
    const std::uint32_t count = std::exchange(pin_count_, 0);
    // Each pin holds a reference on the core: releasing the last one may
    // delete it, so nothing touches `core` after the loop.
    for (std::uint32_t i = 0; i < count; ++i) {
        changed |= core->release_pin(pins[i]);
    }
    sge_count_ = 0;
    return changed;
}

Exposure::Exposure() noexcept = default;
Exposure::Exposure(Exposure&& other) noexcept {
    *this = std::move(other);
}

Exposure& Exposure::operator=(Exposure&& other) noexcept {
    if (this != &other) {
        release();
        lease_ = std::move(other.lease_);
        range_ = std::exchange(other.range_, Range{});
        segments_ = std::move(other.segments_);
        other.segments_.clear();
        state_ = std::move(other.state_);
    }
    return *this;
}

Exposure::~Exposure() {
    release();
}

bool Exposure::changed() const noexcept {
    return state_ && state_->changed.load(std::memory_order_acquire);
}

bool Exposure::release() noexcept {
    if (!lease_.held()) {
        return false;
    }
    // Delivers pending events first: they mark the exposure and run its
    // callback while it is still listed.
    bool changed = !lease_.core_->catch_up();
    if (state_) {
        lease_.core_->remove_exposure(state_);
        {
            // Waits for a callback running on another thread; a callback that
            // releases its own exposure holds this (recursive) lock already.
            const std::scoped_lock lock(state_->mutex);
            state_->released = true;
        }
        changed = state_->changed.load(std::memory_order_acquire) || changed;
    }
    // Exact (range-based) when the exposure was registered in time; the
    // chunk-granular answer of the lease is only used without a state.
    const bool chunk_changed = lease_.release();
    changed = state_ ? changed : chunk_changed || changed;
    state_.reset();
    segments_.clear();
    return changed;
}

}  // namespace odp
