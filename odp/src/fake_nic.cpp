#include <infiniband/verbs.h>
#include <sys/mman.h>
#include <unistd.h>

#include <odp/error.hpp>
#include <odp/fake_nic.hpp>
#include <thread>
#include <vector>

namespace odp {

namespace {

// mincore() fails with ENOMEM on any unmapped page and never faults pages in.
bool is_mapped(std::uintptr_t address, std::size_t length) {
    static const std::uintptr_t page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    const std::uintptr_t begin = address & ~(page - 1);
    const std::uintptr_t end = (address + length + page - 1) & ~(page - 1);
    std::vector<unsigned char> residency((end - begin) / page);
    return mincore(reinterpret_cast<void*>(begin), end - begin, residency.data()) == 0;
}

}  // namespace

FakeNic::FakeNic(DeviceCaps caps, std::string name) : caps_(caps), name_(std::move(name)) {}

void FakeNic::fail_next_registrations(int errno_value, std::size_t count) {
    const std::scoped_lock lock(mutex_);
    fail_errno_ = errno_value;
    fail_count_ = count;
}

void FakeNic::set_check_mapping(bool check) noexcept {
    const std::scoped_lock lock(mutex_);
    check_mapping_ = check;
}

void FakeNic::set_on_register(std::function<void(Range)> hook) {
    const std::scoped_lock lock(mutex_);
    on_register_ = std::move(hook);
}

void FakeNic::set_registration_cost(std::chrono::microseconds cost) {
    const std::scoped_lock lock(mutex_);
    registration_cost_ = cost;
}

void FakeNic::set_before_register(std::function<void(Range)> hook) {
    const std::scoped_lock lock(mutex_);
    before_register_ = std::move(hook);
}

FakeNic::Counters FakeNic::counters() const {
    const std::scoped_lock lock(mutex_);
    return counters_;
}

std::vector<Range> FakeNic::live_registrations() const {
    const std::scoped_lock lock(mutex_);
    std::vector<Range> ranges;
    for (const auto& [key, range] : live_) {
        ranges.push_back(range);
    }
    return ranges;
}

bool FakeNic::covers(std::uint32_t lkey, std::uintptr_t address, std::size_t length) const {
    const std::scoped_lock lock(mutex_);
    const auto it = live_.find(lkey);
    return it != live_.end() && address >= it->second.begin && length <= it->second.end - address;
}

NicMr FakeNic::register_memory(std::uintptr_t address, std::size_t length, int ibv_access) {
    std::function<void(Range)> before;
    {
        const std::scoped_lock lock(mutex_);
        before = before_register_;
    }
    if (before) {
        before(Range{address, length == SIZE_MAX ? ~std::uintptr_t{0} : address + length});
    }
    NicMr mr;
    std::function<void(Range)> hook;
    std::chrono::microseconds cost{0};
    {
        const std::scoped_lock lock(mutex_);
        const std::string what = "fake ibv_reg_mr(" + format_address(address) + ", " +
                                 format_bytes(length) + ") on " + name_;
        if (fail_count_ > 0) {
            --fail_count_;
            ++counters_.failures;
            throw_error(fail_errno_, what + " (injected failure)");
        }
        if ((ibv_access & IBV_ACCESS_ON_DEMAND) != 0 && !caps_.odp) {
            ++counters_.failures;
            throw_error(EOPNOTSUPP, what + ": no ODP on this device");
        }
        const bool implicit = address == 0 && length == SIZE_MAX;
        if (!implicit &&
            (length == 0 || (check_mapping_ && (ibv_access & IBV_ACCESS_ON_DEMAND) == 0 &&
                             !is_mapped(address, length)))) {
            ++counters_.failures;
            throw_error(EFAULT, what + ": memory not mapped");
        }
        const std::uint32_t key = next_key_++;
        live_.emplace(key, implicit ? Range{0, UINTPTR_MAX} : Range{address, address + length});
        ++counters_.registrations;
        counters_.bytes_registered += implicit ? 0 : length;
        mr = NicMr{nullptr, key, key};
        hook = on_register_;
        cost = registration_cost_;
    }
    if (cost.count() > 0) {
        std::this_thread::sleep_for(cost);
    }
    if (hook) {
        hook(Range{address, address + length});
    }
    return mr;
}

void FakeNic::deregister(const NicMr& mr) noexcept {
    const std::scoped_lock lock(mutex_);
    if (live_.erase(mr.lkey) == 0) {
        log_error("fake ibv_dereg_mr: unknown key " + std::to_string(mr.lkey) + " on " + name_ +
                  " (double deregistration)");
        ++counters_.failures;
        return;
    }
    ++counters_.deregistrations;
}

void FakeNic::advise(Prefetch /*advice*/, std::span<const ibv_sge> sges) {
    const std::scoped_lock lock(mutex_);
    if (!caps_.prefetch) {
        throw_error(EOPNOTSUPP, "fake ibv_advise_mr on " + name_ + ": no prefetch support");
    }
    for (const ibv_sge& sge : sges) {
        if (!live_.contains(sge.lkey)) {
            throw_error(EINVAL, "fake ibv_advise_mr on " + name_ + ": unknown lkey " +
                                    std::to_string(sge.lkey));
        }
    }
    ++counters_.advises;
}

}  // namespace odp
