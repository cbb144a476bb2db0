// A NIC without hardware, for host tests and benchmarks: registrations are
// bookkeeping only, with counters and injectable failures. Thread-safe.
#pragma once

#include <odp/export.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <odp/nic.hpp>
#include <string>
#include <vector>

namespace odp {

class ODP_API FakeNic final : public Nic {
  public:
    struct Counters {
        std::uint64_t registrations = 0;     // successful register_memory calls
        std::uint64_t deregistrations = 0;   // deregister calls
        std::uint64_t failures = 0;          // register_memory calls that threw
        std::uint64_t advises = 0;           // advise calls that succeeded
        std::uint64_t bytes_registered = 0;  // sum of lengths registered (cumulative)
    };

    explicit FakeNic(DeviceCaps caps = {}, std::string name = "fake0");

    // The next `count` register_memory calls throw odp::Error(errno_value).
    void fail_next_registrations(int errno_value, std::size_t count = 1);
    // When on (the default), registering memory that is not mapped fails with
    // EFAULT like ibv_reg_mr does (checked with mincore(), which never faults
    // pages in). Off: any range registers (benchmarks over huge fake ranges).
    void set_check_mapping(bool check) noexcept;
    // Called (without the fake's lock) after each successful register_memory,
    // with the range: lets tests change the world in the middle of a fault.
    void set_on_register(std::function<void(Range)> hook);
    // Time each successful register_memory takes (slept without the fake's
    // lock, so concurrent registrations overlap as on a real NIC: 2 MiB
    // take 50-100 us there). Default 0.
    void set_registration_cost(std::chrono::microseconds cost);
    // Called (without the fake's lock) at the start of each register_memory,
    // before the mapping is looked at: lets tests change the mapping between
    // the moment libodp prepared a chunk and the NIC's pinning of it.
    void set_before_register(std::function<void(Range)> hook);
    // Whether the fake claims to pin memory (default no: budgets above
    // RLIMIT_MEMLOCK are allowed). Set it before handing the fake to a Device.
    void set_pins_memory(bool pins) noexcept { pins_memory_ = pins; }
    [[nodiscard]] bool pins_memory() const noexcept override { return pins_memory_; }

    [[nodiscard]] Counters counters() const;
    // Registrations not yet deregistered, by range.
    [[nodiscard]] std::vector<Range> live_registrations() const;
    // True if `lkey` belongs to a live registration covering [address, address + length).
    [[nodiscard]] bool covers(std::uint32_t lkey, std::uintptr_t address, std::size_t length) const;

    [[nodiscard]] std::string_view name() const noexcept override { return name_; }
    [[nodiscard]] const DeviceCaps& caps() const noexcept override { return caps_; }
    NicMr register_memory(std::uintptr_t address, std::size_t length, int ibv_access) override;
    void deregister(const NicMr& mr) noexcept override;
    void advise(Prefetch advice, std::span<const ibv_sge> sges) override;
    [[nodiscard]] ibv_context* context() const noexcept override { return nullptr; }
    [[nodiscard]] ibv_pd* pd() const noexcept override { return nullptr; }

  private:
    const DeviceCaps caps_;
    const std::string name_;
    mutable std::mutex mutex_;
    Counters counters_;
    std::map<std::uint32_t, Range> live_;  // by key
    std::uint32_t next_key_ = 1;
    int fail_errno_ = 0;
    std::size_t fail_count_ = 0;
    bool check_mapping_ = true;
    bool pins_memory_ = false;
    std::function<void(Range)> on_register_;
    std::chrono::microseconds registration_cost_{0};
    std::function<void(Range)> before_register_;
};

}  // namespace odp
