// The NIC as libodp needs it: register, deregister, advise. The real one wraps
// a verbs context and protection domain; odp::FakeNic (fake_nic.hpp) lets host
// tests and benchmarks run without a device.
#pragma once

#include <odp/export.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <odp/types.hpp>
#include <span>
#include <string>
#include <string_view>

struct ibv_context;
struct ibv_pd;
struct ibv_sge;

namespace odp {

// ODP support for one transport, from ibv_query_device_ex(): odp_caps.
struct TransportOdpCaps {
    bool send = false;
    bool recv = false;
    bool write = false;
    bool read = false;
    bool atomic = false;
    bool srq_recv = false;
    friend bool operator==(const TransportOdpCaps&, const TransportOdpCaps&) = default;
};

struct DeviceCaps {
    bool odp = false;           // IBV_ODP_SUPPORT
    bool implicit_odp = false;  // IBV_ODP_SUPPORT_IMPLICIT: an ODP MR over the address space
    bool prefetch = false;      // ibv_advise_mr(PREFETCH_WRITE) works on an ODP MR
    TransportOdpCaps rc;
    TransportOdpCaps uc;
    TransportOdpCaps ud;
    TransportOdpCaps xrc;
    std::uint64_t max_mr_size = 0;
    std::uint32_t max_sge = 0;
    // Whether native ODP moved real bytes correctly in a loopback check run
    // when the device was opened (RDMA WRITE into and READ from ODP MRs at
    // sub-page offsets). Mode::Auto picks Native only when it did: rxe on
    // Linux 7.3 reports ODP yet drops the packets that do not start a page.
    // native_data_check says "passed", "failed: <what went wrong>", or
    // "not run: <why>" (then native_data_ok trusts the reported caps).
    bool native_data_ok = true;
    std::string native_data_check;
};
// Multi-line, human readable ("odp: yes (implicit: no, prefetch: no)\nRC: send recv ...").
[[nodiscard]] ODP_API std::string to_string(const DeviceCaps& caps);

// A registration as the NIC returned it; owned by the caller, who must hand it
// back to Nic::deregister() exactly once.
struct NicMr {
    void* handle = nullptr;  // ibv_mr* on a real NIC
    std::uint32_t lkey = 0;
    std::uint32_t rkey = 0;
};

class ODP_API Nic {
  public:
    virtual ~Nic() = default;
    Nic() = default;
    Nic(const Nic&) = delete;
    Nic& operator=(const Nic&) = delete;

    [[nodiscard]] virtual std::string_view name() const noexcept = 0;
    [[nodiscard]] virtual const DeviceCaps& caps() const noexcept = 0;
    // Registers [address, address + length) with IBV_ACCESS_* `ibv_access`
    // (address 0 and length SIZE_MAX with IBV_ACCESS_ON_DEMAND: implicit ODP).
    // Throws odp::Error naming the range and the device; EFAULT means (part
    // of) the range is not mapped or not accessible.
    virtual NicMr register_memory(std::uintptr_t address, std::size_t length, int ibv_access) = 0;
    // Never throws; logs a failure.
    virtual void deregister(const NicMr& mr) noexcept = 0;
    // ibv_advise_mr; throws odp::Error(EOPNOTSUPP) if the device cannot.
    virtual void advise(Prefetch advice, std::span<const ibv_sge> sges) = 0;
    // True if registering memory pins it (a real NIC): the pinned budget is
    // then capped by RLIMIT_MEMLOCK, which the kernel enforces.
    [[nodiscard]] virtual bool pins_memory() const noexcept { return true; }
    // The verbs objects behind a real NIC; nullptr for a fake.
    [[nodiscard]] virtual ibv_context* context() const noexcept = 0;
    [[nodiscard]] virtual ibv_pd* pd() const noexcept = 0;
};

// Opens a verbs device by name ("" = the first one), allocates a protection
// domain and queries its capabilities (probing ibv_advise_mr when ODP is
// supported). Throws odp::Error naming the device when there is none, it
// cannot be opened (EACCES: permissions of /dev/infiniband/uverbs*), or a
// query fails.
[[nodiscard]] ODP_API std::unique_ptr<Nic> open_verbs_nic(std::string_view name);

}  // namespace odp
