#include <odp/region.hpp>
#include <utility>

#include "region_core.hpp"

namespace odp {

Region::Region(Region&& other) noexcept : core_(std::exchange(other.core_, nullptr)) {}

Region& Region::operator=(Region&& other) noexcept {
    if (this != &other) {
        if (core_ != nullptr) {
            core_->close();
        }
        core_ = std::exchange(other.core_, nullptr);
    }
    return *this;
}

Region::~Region() {
    if (core_ != nullptr) {
        core_->close();
    }
}

detail::RegionCore& Region::core() const {
    if (core_ == nullptr) {
        throw_error(EINVAL, "use of an empty odp::Region (moved from or default-constructed)");
    }
    return *core_;
}

Mode Region::mode() const {
    return core().config().mode;
}
Range Region::range() const {
    return core().config().range;
}
Access Region::access() const {
    return core().config().access;
}
std::size_t Region::chunk_size() const {
    const auto& config = core().config();
    return config.mode == Mode::Emulated ? config.chunk_size : config.range.length();
}
bool Region::implicit() const {
    return core().config().implicit;
}
std::string Region::monitor() const {
    return core().monitor_description();
}
std::vector<Unwatched> Region::unwatched() const {
    return core().unwatched();
}
std::string Region::describe() const {
    return core().describe();
}

Lease Region::translate(const void* address, std::size_t length, std::size_t max_sge) {
    return core().translate(reinterpret_cast<std::uintptr_t>(address), length, max_sge);
}

Lease Region::translate(std::uintptr_t address, std::size_t length, std::size_t max_sge) {
    return core().translate(address, length, max_sge);
}

Exposure Region::expose(const void* address, std::size_t length, ExposureCallback on_change) {
    return core().expose(reinterpret_cast<std::uintptr_t>(address), length, std::move(on_change));
}

void Region::prefetch(const void* address, std::size_t length, Prefetch advice) {
    core().prefetch(reinterpret_cast<std::uintptr_t>(address), length, advice);
}

void Region::prefetch_async(const void* address, std::size_t length, Prefetch advice) {
    core().prefetch_async(reinterpret_cast<std::uintptr_t>(address), length, advice);
}

void Region::collect() {
    core().collect();
}

Stats Region::stats() const {
    return core().stats();
}

void Region::invalidate(Range range, InvalidationReason reason) noexcept {
    if (core_ != nullptr) {
        core_->on_invalidate(range, reason);
    }
}

void Region::invalidate_all(InvalidationReason reason) noexcept {
    if (core_ != nullptr) {
        core_->on_invalidate_all(reason);
    }
}

InvalidationListener& Region::listener() const {
    return core();
}

}  // namespace odp
