// Helpers for the libodp host tests: a fake NIC the test can keep watching
// after the device that owns it is gone, and anonymous mappings.
#pragma once

#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <sys/mman.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <odp/device.hpp>
#include <odp/error.hpp>
#include <odp/fake_nic.hpp>
#include <utility>

#include "test_hooks.hpp"

namespace odp::test {

inline constexpr std::size_t MiB = std::size_t{1} << 20;

// Forwards to a FakeNic shared with the test.
class SharedFakeNic final : public Nic {
  public:
    explicit SharedFakeNic(std::shared_ptr<FakeNic> fake) : fake_(std::move(fake)) {}
    [[nodiscard]] std::string_view name() const noexcept override { return fake_->name(); }
    [[nodiscard]] const DeviceCaps& caps() const noexcept override { return fake_->caps(); }
    NicMr register_memory(std::uintptr_t address, std::size_t length, int access) override {
        return fake_->register_memory(address, length, access);
    }
    void deregister(const NicMr& mr) noexcept override { fake_->deregister(mr); }
    void advise(Prefetch advice, std::span<const ibv_sge> sges) override {
        fake_->advise(advice, sges);
    }
    [[nodiscard]] bool pins_memory() const noexcept override { return fake_->pins_memory(); }
    [[nodiscard]] ibv_context* context() const noexcept override { return nullptr; }
    [[nodiscard]] ibv_pd* pd() const noexcept override { return nullptr; }

  private:
    std::shared_ptr<FakeNic> fake_;
};

inline DeviceCaps native_caps(bool implicit = true, bool prefetch = true) {
    DeviceCaps caps;
    caps.odp = true;
    caps.implicit_odp = implicit;
    caps.prefetch = prefetch;
    caps.rc = TransportOdpCaps{true, true, true, true, true, true};
    return caps;
}

struct FakeDevice {
    std::shared_ptr<FakeNic> fake;
    std::shared_ptr<Device> device;
};

inline FakeDevice make_device(std::uint64_t budget = 64 * MiB, DeviceCaps caps = {}) {
    auto fake = std::make_shared<FakeNic>(caps);
    DeviceOptions options;
    options.max_pinned_bytes = budget;
    auto device = Device::open(std::make_unique<SharedFakeNic>(fake), options);
    return {fake, device};
}

// An anonymous read-write mapping of `size` bytes aligned to `alignment`.
class Mapping {
  public:
    explicit Mapping(std::size_t size, std::size_t alignment = 2 * MiB) : size_(size) {
        const std::size_t padded = size + alignment;
        void* raw =
            mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) {
            throw_errno("mmap test buffer");
        }
        const auto start = reinterpret_cast<std::uintptr_t>(raw);
        const std::uintptr_t aligned = (start + alignment - 1) & ~(alignment - 1);
        if (aligned > start) {
            munmap(raw, aligned - start);
        }
        const std::uintptr_t end = start + padded;
        if (end > aligned + size) {
            munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
        }
        base_ = reinterpret_cast<char*>(aligned);
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { munmap(base_, size_); }

    [[nodiscard]] char* data() const noexcept { return base_; }
    [[nodiscard]] std::uintptr_t address() const noexcept {
        return reinterpret_cast<std::uintptr_t>(base_);
    }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }

  private:
    char* base_ = nullptr;
    std::size_t size_ = 0;
};

// Runs `body`, which must throw odp::Error with `errno_value`; returns its message.
template <typename Body>
std::string expect_error(int errno_value, Body&& body) {
    try {
        body();
    } catch (const Error& error) {
        EXPECT_EQ(error.errno_value(), errno_value) << error.what();
        return error.what();
    }
    ADD_FAILURE() << "no odp::Error thrown (expected errno " << errno_value << ")";
    return {};
}

inline RegionOptions emulated(std::size_t chunk = 2 * MiB) {
    RegionOptions options;
    options.mode = Mode::Emulated;
    options.chunk_size = chunk;
    options.monitor = MonitorKind::None;  // tests drive invalidation directly
    return options;
}

// Runs `body` at every library test hook point while in scope (one at a time).
class ScopedTestHook {
  public:
    explicit ScopedTestHook(std::function<void(detail::HookPoint)> body) {
        current() = std::move(body);
        detail::test_hook.store(&trampoline);
    }
    ScopedTestHook(const ScopedTestHook&) = delete;
    ScopedTestHook& operator=(const ScopedTestHook&) = delete;
    ~ScopedTestHook() {
        detail::test_hook.store(nullptr);
        current() = {};
    }

  private:
    static std::function<void(detail::HookPoint)>& current() {
        static std::function<void(detail::HookPoint)> body;
        return body;
    }
    static void trampoline(detail::HookPoint point) { current()(point); }
};

// Long enough for any thread of a loaded machine to get a CPU: a bound on a
// hang, never a measurement.
inline constexpr auto patience = std::chrono::seconds(20);

// Holds the first registration that covers `held` inside the fake NIC until
// opened, i.e. keeps that fault in flight, outside the device's lock.
class RegistrationGate {
  public:
    RegistrationGate(FakeNic& fake, std::uintptr_t held) : fake_(fake), held_(held) {
        fake_.set_on_register([this](Range range) {
            if (!range.contains(Range::from_length(held_, 1))) {
                return;
            }
            std::unique_lock lock(mutex_);
            if (++entries_ != 1) {
                return;  // only the first one is held
            }
            changed_.notify_all();
            changed_.wait(lock, [this] { return open_; });
        });
    }
    RegistrationGate(const RegistrationGate&) = delete;
    RegistrationGate& operator=(const RegistrationGate&) = delete;
    ~RegistrationGate() {
        open();
        fake_.set_on_register({});
    }

    [[nodiscard]] bool wait_held() {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, patience, [this] { return entries_ != 0; });
    }
    void open() {
        const std::scoped_lock lock(mutex_);
        open_ = true;
        changed_.notify_all();
    }
    // Registrations that covered `held` so far.
    [[nodiscard]] int entries() {
        const std::scoped_lock lock(mutex_);
        return entries_;
    }

  private:
    FakeNic& fake_;
    const std::uintptr_t held_;
    std::mutex mutex_;
    std::condition_variable changed_;
    int entries_ = 0;
    bool open_ = false;
};

// Runs `body` on its own thread; the future says whether it finished.
template <typename Body>
auto in_background(Body&& body) {
    return std::async(std::launch::async, std::forward<Body>(body));
}

template <typename T>
bool finished(std::future<T>& future) {
    return future.wait_for(patience) == std::future_status::ready;
}

}  // namespace odp::test
