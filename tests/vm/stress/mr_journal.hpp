// The registrations libodp made, for the report of a failed transfer: a Nic
// that forwards every call to the verbs NIC and remembers when each MR was
// registered and deregistered. A work request that failed on a key the
// library had already deregistered (a lease or exposure that outlived its
// MR) shows as such, instead of as a bare completion status.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <odp/nic.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace odp::stress {

class RecordingNic final : public Nic {
  public:
    explicit RecordingNic(std::unique_ptr<Nic> inner);

    [[nodiscard]] std::string_view name() const noexcept override { return inner_->name(); }
    [[nodiscard]] const DeviceCaps& caps() const noexcept override { return inner_->caps(); }
    NicMr register_memory(std::uintptr_t address, std::size_t length, int ibv_access) override;
    void deregister(const NicMr& mr) noexcept override;
    void advise(Prefetch advice, std::span<const ibv_sge> sges) override {
        inner_->advise(advice, sges);
    }
    [[nodiscard]] bool pins_memory() const noexcept override { return inner_->pins_memory(); }
    [[nodiscard]] ibv_context* context() const noexcept override { return inner_->context(); }
    [[nodiscard]] ibv_pd* pd() const noexcept override { return inner_->pd(); }

    // Milliseconds since this NIC was opened (the clock of every record).
    [[nodiscard]] double now_ms() const noexcept;
    // The remembered registrations whose lkey or rkey is `key`, newest last,
    // one line each: range, when registered, when deregistered (or "still
    // registered").
    [[nodiscard]] std::string history_of(std::uint32_t key) const;

  private:
    struct Record {
        std::uint32_t lkey = 0;
        std::uint32_t rkey = 0;
        std::uintptr_t address = 0;
        std::size_t length = 0;
        double registered_ms = 0;
        std::optional<double> deregistered_ms;
    };
    static constexpr std::size_t kept_records = std::size_t{1} << 14;

    std::unique_ptr<Nic> inner_;
    const std::chrono::steady_clock::time_point opened_ = std::chrono::steady_clock::now();
    mutable std::mutex mutex_;
    std::deque<Record> records_;  // oldest first, at most kept_records
};

}  // namespace odp::stress
