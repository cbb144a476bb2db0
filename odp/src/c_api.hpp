// The C API's handles (odp/odp.h) as the library sees them. Internal: the
// unit tests include it to wrap a Device on a fake NIC into a C handle.
#pragma once

#include <odp/odp.h>

#include <memory>
#include <odp/device.hpp>
#include <odp/lease.hpp>
#include <odp/region.hpp>
#include <string>
#include <vector>

struct odp_device {
    std::shared_ptr<odp::Device> device;
    std::string name;  // NUL-terminated copy of device->name()
};

struct odp_region {
    odp::Region region;
};

struct odp_lease {
    odp::Lease lease;
};

struct odp_exposure {
    odp::Exposure exposure;
    std::vector<odp_segment> segments;
};

namespace odp::c_api {

// A C handle for a device opened through the C++ API (e.g. on a FakeNic).
// Close it with odp_device_close(). Throws std::bad_alloc.
[[nodiscard]] odp_device* wrap(std::shared_ptr<Device> device);

}  // namespace odp::c_api
