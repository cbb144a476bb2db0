// odp::Device: a verbs device (or a fake NIC), its capabilities, the pinned
// budget shared by its regions, and the factory for regions.
#pragma once

#include <odp/export.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <odp/nic.hpp>
#include <odp/region.hpp>
#include <odp/stats.hpp>
#include <odp/types.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace odp {

namespace detail {
struct DeviceState;
}

struct DeviceOptions {
    std::string name;  // verbs device name; empty: the first device
    // Bytes that emulated chunks and pinned regions may pin at once on this
    // device. Default: RLIMIT_MEMLOCK where the kernel enforces it, else half
    // of RAM (RLIMIT_MEMLOCK unlimited, or CAP_IPC_LOCK as root). Asking for
    // more than an enforced RLIMIT_MEMLOCK fails (EINVAL): the kernel would
    // refuse anyway.
    std::optional<std::uint64_t> max_pinned_bytes;
};

class ODP_API Device : public std::enable_shared_from_this<Device> {
    struct Key {};  // only the factories construct

  public:
    // Opens a verbs device. Throws odp::Error naming the device (ENODEV: none
    // or not found, EACCES: no permission).
    [[nodiscard]] static std::shared_ptr<Device> open(const DeviceOptions& options = {});
    // A device over any NIC (e.g. odp::FakeNic for tests); options.name ignored.
    [[nodiscard]] static std::shared_ptr<Device> open(std::unique_ptr<Nic> nic,
                                                      const DeviceOptions& options = {});

    Device(Key, std::unique_ptr<Nic> nic, const DeviceOptions& options);
    ~Device();
    Device(const Device&) = delete;
    Device& operator=(const Device&) = delete;

    [[nodiscard]] std::string_view name() const noexcept;
    [[nodiscard]] const DeviceCaps& caps() const noexcept;
    [[nodiscard]] Nic& nic() const noexcept;
    [[nodiscard]] ibv_context* context() const noexcept;  // nullptr for a fake NIC
    [[nodiscard]] ibv_pd* pd() const noexcept;            // nullptr for a fake NIC

    [[nodiscard]] std::uint64_t max_pinned_bytes() const noexcept;
    // Where max_pinned_bytes came from, e.g. "RLIMIT_MEMLOCK (8 MiB)".
    [[nodiscard]] const std::string& budget_source() const noexcept;
    [[nodiscard]] std::uint64_t pinned_bytes() const noexcept;

    // True if native ODP covers every RC operation `access` implies: send and
    // recv always, read for LocalWrite (RDMA READ responses) and RemoteRead,
    // write for RemoteWrite, atomic for RemoteAtomic.
    [[nodiscard]] bool native_covers(Access access) const noexcept;
    // Auto -> Native or Emulated; Native without ODP for `access` throws
    // odp::Error(EOPNOTSUPP) naming what is missing.
    [[nodiscard]] Mode resolve(Mode requested, Access access) const;

    [[nodiscard]] Region register_region(const void* address, std::size_t length, Access access,
                                         Mode mode = Mode::Auto);
    [[nodiscard]] Region register_region(const void* address, std::size_t length, Access access,
                                         const RegionOptions& options);
    // The whole user address space: implicit ODP where the device has it
    // (Native/Auto), else emulated over every address (Emulated/Auto). Pinned
    // is refused (EINVAL).
    [[nodiscard]] Region register_address_space(Access access, const RegionOptions& options = {});

    // Totals over every region of this device, alive or closed.
    [[nodiscard]] Stats stats() const;

    [[nodiscard]] detail::DeviceState& state() const noexcept { return *state_; }

  private:
    std::unique_ptr<detail::DeviceState> state_;
};

}  // namespace odp
