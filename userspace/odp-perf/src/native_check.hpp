// Does the device's native ODP move the right bytes?  A plain-verbs check
// (no libodp regions): RDMA WRITE and READ between a pinned MR and an
// IBV_ACCESS_ON_DEMAND MR over a loopback RC connection, every byte compared.
// odp-perf compare runs it so that a native-mode data mismatch can be told
// apart (device/kernel defect vs. odp-layer bug).
#pragma once

#include <odp/device.hpp>
#include <string>

namespace odp_perf {

struct NativeCheck {
    bool ran = false;  // false: the device has no native ODP
    bool ok = false;
    std::string detail;  // what moved wrong, per direction
};

NativeCheck check_native_odp_data(odp::Device& device);

}  // namespace odp_perf
