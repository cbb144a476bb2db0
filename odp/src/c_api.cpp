// The C API (odp/odp.h) over the C++ one. Every entry point runs its body
// inside guarded(): any exception becomes a negative errno and this thread's
// last error message, so none crosses into C.
#include "c_api.hpp"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <odp/error.hpp>
#include <odp/mirror.hpp>
#include <odp/nic.hpp>
#include <odp/stats.hpp>
#include <odp/types.hpp>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace {

thread_local std::string last_error;

int fail(int errno_value, const char* message) noexcept {
    try {
        last_error = message;
    } catch (...) {
        last_error.clear();  // no memory for the text: the errno still tells
    }
    return -errno_value;
}

template <typename Body>
int guarded(Body&& body) noexcept {
    try {
        body();
        return 0;
    } catch (const odp::Error& error) {
        return fail(error.errno_value(), error.what());
    } catch (const std::bad_alloc&) {
        return fail(ENOMEM, "out of memory");
    } catch (const std::system_error& error) {
        const bool is_errno = error.code().category() == std::generic_category() ||
                              error.code().category() == std::system_category();
        return fail(is_errno && error.code().value() > 0 ? error.code().value() : EIO,
                    error.what());
    } catch (const std::exception& error) {
        return fail(EIO, error.what());
    } catch (...) {
        return fail(EIO, "unknown C++ exception inside libodp");
    }
}

template <typename T>
T& need(T* handle, const char* what) {
    if (handle == nullptr) {
        odp::throw_error(EINVAL, std::string(what) + " is NULL");
    }
    return *handle;
}

// Extensible structs (odp.h, "Conventions"). `first_size` is the struct's
// size in libodp 0.1, the first version: callers never pass less. Fields
// added later are appended, so these numbers never change. A caller's struct
// may be larger than this library's (a newer odp.h): for settings the fields
// this library does not know must be zero (they would be ignored otherwise);
// `Unknown::Ignore` is for data such as statistics.
enum class Unknown { MustBeZero, Ignore };

template <typename T>
T read_struct(const T* in, std::size_t first_size, const char* what,
              Unknown unknown = Unknown::MustBeZero) {
    T value{};
    value.size = sizeof(T);
    if (in == nullptr) {
        return value;
    }
    // Above a page it is no struct this API will ever have: garbage.
    if (in->size < first_size || in->size > 4096) {
        odp::throw_error(EINVAL, std::string(what) + ".size is " + std::to_string(in->size) +
                                     ", at least " + std::to_string(first_size) +
                                     " expected: initialise it with its odp_*_init() function");
    }
    const auto* bytes = reinterpret_cast<const unsigned char*>(in);
    if (unknown == Unknown::MustBeZero &&
        std::any_of(bytes + std::min(in->size, sizeof(T)), bytes + in->size,
                    [](unsigned char byte) { return byte != 0; })) {
        odp::throw_error(E2BIG,
                         std::string(what) + " sets fields this libodp does not know (size " +
                             std::to_string(in->size) + ", known " + std::to_string(sizeof(T)) +
                             "): the program was built with a newer odp.h than the "
                             "libodp it runs with");
    }
    std::memcpy(&value, in, std::min(in->size, sizeof(T)));
    return value;
}

template <typename T>
void write_struct(T* out, T value, std::size_t first_size, const char* what) {
    need(out, what);
    if (out->size < first_size) {
        odp::throw_error(EINVAL, std::string(what) + ".size is " + std::to_string(out->size) +
                                     ", at least " + std::to_string(first_size) +
                                     " expected: initialise it with its odp_*_init() function");
    }
    value.size = out->size;
    std::memcpy(out, &value, std::min(out->size, sizeof(T)));
}

#define ODP_FIRST_SIZE(type, last_field) (offsetof(type, last_field) + sizeof(type::last_field))
constexpr std::size_t device_attr_v0 = ODP_FIRST_SIZE(odp_device_attr, max_pinned_bytes);
constexpr std::size_t device_caps_v0 = ODP_FIRST_SIZE(odp_device_caps, native_data_check);
constexpr std::size_t device_budget_v0 = ODP_FIRST_SIZE(odp_device_budget, source);
constexpr std::size_t region_attr_v0 = ODP_FIRST_SIZE(odp_region_attr, chunk_size);
constexpr std::size_t region_info_v0 = ODP_FIRST_SIZE(odp_region_info, implicit);
constexpr std::size_t stats_v0 = ODP_FIRST_SIZE(odp_stats, invalidations);
#undef ODP_FIRST_SIZE

// Strings for `char **` outputs: malloc'd, the caller free()s them.
void give_string(const std::string& text, char** out) {
    need(out, "the string output");
    char* copy = static_cast<char*>(std::malloc(text.size() + 1));
    if (copy == nullptr) {
        throw std::bad_alloc();
    }
    std::memcpy(copy, text.c_str(), text.size() + 1);
    *out = copy;
}

odp::Mode to_mode(odp_mode mode) {
    switch (mode) {
        case ODP_MODE_AUTO:
            return odp::Mode::Auto;
        case ODP_MODE_PINNED:
            return odp::Mode::Pinned;
        case ODP_MODE_NATIVE:
            return odp::Mode::Native;
        case ODP_MODE_EMULATED:
            return odp::Mode::Emulated;
    }
    odp::throw_error(EINVAL, "unknown odp_mode " + std::to_string(static_cast<int>(mode)) +
                                 ": use ODP_MODE_AUTO, _PINNED, _NATIVE or _EMULATED");
}

odp_mode from_mode(odp::Mode mode) noexcept {
    switch (mode) {
        case odp::Mode::Pinned:
            return ODP_MODE_PINNED;
        case odp::Mode::Native:
            return ODP_MODE_NATIVE;
        case odp::Mode::Emulated:
            return ODP_MODE_EMULATED;
        case odp::Mode::Auto:
            break;
    }
    return ODP_MODE_AUTO;
}

odp::MonitorKind to_monitor(odp_monitor monitor) {
    switch (monitor) {
        case ODP_MONITOR_AUTO:
            return odp::MonitorKind::Auto;
        case ODP_MONITOR_MODULE:
            return odp::MonitorKind::Module;
        case ODP_MONITOR_USERFAULTFD:
            return odp::MonitorKind::Userfaultfd;
        case ODP_MONITOR_NONE:
            return odp::MonitorKind::None;
    }
    odp::throw_error(EINVAL, "unknown odp_monitor " + std::to_string(static_cast<int>(monitor)) +
                                 ": use ODP_MONITOR_AUTO, _MODULE, _USERFAULTFD or _NONE");
}

constexpr unsigned all_access = ODP_ACCESS_LOCAL_WRITE | ODP_ACCESS_REMOTE_WRITE |
                                ODP_ACCESS_REMOTE_READ | ODP_ACCESS_REMOTE_ATOMIC;
static_assert(static_cast<unsigned>(odp::Access::LocalWrite) == ODP_ACCESS_LOCAL_WRITE &&
              static_cast<unsigned>(odp::Access::RemoteWrite) == ODP_ACCESS_REMOTE_WRITE &&
              static_cast<unsigned>(odp::Access::RemoteRead) == ODP_ACCESS_REMOTE_READ &&
              static_cast<unsigned>(odp::Access::RemoteAtomic) == ODP_ACCESS_REMOTE_ATOMIC);

odp::Access to_access(unsigned access) {
    if ((access & ~all_access) != 0) {
        odp::throw_error(EINVAL, "access " + std::to_string(access) +
                                     " has bits that are no odp_access flag (ODP_ACCESS_*)");
    }
    return static_cast<odp::Access>(access);
}

static_assert(static_cast<int>(odp::InvalidationReason::Unmap) == ODP_INVALIDATION_UNMAP &&
              static_cast<int>(odp::InvalidationReason::Clear) == ODP_INVALIDATION_CLEAR &&
              static_cast<int>(odp::InvalidationReason::Protection) ==
                  ODP_INVALIDATION_PROTECTION &&
              static_cast<int>(odp::InvalidationReason::Migration) == ODP_INVALIDATION_MIGRATION &&
              static_cast<int>(odp::InvalidationReason::Teardown) == ODP_INVALIDATION_TEARDOWN &&
              static_cast<int>(odp::InvalidationReason::Other) == ODP_INVALIDATION_OTHER &&
              static_cast<int>(odp::InvalidationReason::Overflow) == ODP_INVALIDATION_OVERFLOW &&
              odp::invalidation_reason_count <= ODP_INVALIDATION_SLOTS);

bool valid_reason(odp_invalidation_reason reason) noexcept {
    return static_cast<unsigned>(reason) < odp::invalidation_reason_count;
}

odp::RegionOptions to_options(const odp_region_attr* in) {
    const odp_region_attr attr = read_struct(in, region_attr_v0, "odp_region_attr");
    odp::RegionOptions options;
    options.mode = to_mode(attr.mode);
    options.monitor = to_monitor(attr.monitor);
    if (attr.chunk_size != 0) {
        options.chunk_size = attr.chunk_size;
    }
    options.fault_ahead = attr.fault_ahead;
    return options;
}

odp::Prefetch to_prefetch(odp_prefetch advice, const char* function) {
    if (advice != ODP_PREFETCH_WRITE && advice != ODP_PREFETCH_READ) {
        odp::throw_error(EINVAL, std::string(function) + ": unknown advice " +
                                     std::to_string(static_cast<int>(advice)) +
                                     ": use ODP_PREFETCH_WRITE or ODP_PREFETCH_READ");
    }
    return advice == ODP_PREFETCH_READ ? odp::Prefetch::Read : odp::Prefetch::Write;
}

std::uint32_t ops(const odp::TransportOdpCaps& caps) noexcept {
    std::uint32_t bits = 0;
    const auto add = [&](bool supported, unsigned op) { bits |= supported ? op : 0U; };
    add(caps.send, ODP_OP_SEND);
    add(caps.recv, ODP_OP_RECV);
    add(caps.write, ODP_OP_WRITE);
    add(caps.read, ODP_OP_READ);
    add(caps.atomic, ODP_OP_ATOMIC);
    add(caps.srq_recv, ODP_OP_SRQ_RECV);
    return bits;
}

odp_stats to_c(const odp::Stats& in) noexcept {
    odp_stats out{};
    out.hits = in.hits;
    out.misses = in.misses;
    out.chunk_faults = in.chunk_faults;
    out.bytes_registered = in.bytes_registered;
    out.prefetches = in.prefetches;
    out.chunks_invalidated = in.chunks_invalidated;
    out.stale_while_leased = in.stale_while_leased;
    out.evictions = in.evictions;
    out.back_pressure = in.back_pressure;
    out.pinned_bytes = in.pinned_bytes;
    out.peak_pinned_bytes = in.peak_pinned_bytes;
    out.chunks_faulted_ahead = in.chunks_faulted_ahead;
    out.fault_ahead_hits = in.fault_ahead_hits;
    std::copy(in.invalidations.begin(), in.invalidations.end(), out.invalidations);
    return out;
}

odp::Stats from_c(const odp_stats& in) noexcept {
    odp::Stats out;
    out.hits = in.hits;
    out.misses = in.misses;
    out.chunk_faults = in.chunk_faults;
    out.bytes_registered = in.bytes_registered;
    out.prefetches = in.prefetches;
    out.chunks_invalidated = in.chunks_invalidated;
    out.stale_while_leased = in.stale_while_leased;
    out.evictions = in.evictions;
    out.back_pressure = in.back_pressure;
    out.pinned_bytes = in.pinned_bytes;
    out.peak_pinned_bytes = in.peak_pinned_bytes;
    out.chunks_faulted_ahead = in.chunks_faulted_ahead;
    out.fault_ahead_hits = in.fault_ahead_hits;
    std::copy_n(in.invalidations, out.invalidations.size(), out.invalidations.begin());
    return out;
}

}  // namespace

odp_device* odp::c_api::wrap(std::shared_ptr<Device> device) {
    auto handle = std::make_unique<odp_device>();
    handle->name = std::string(device->name());
    handle->device = std::move(device);
    return handle.release();
}

extern "C" {

const char* odp_last_error(void) {
    return last_error.c_str();
}

int odp_device_open(const odp_device_attr* attr_in, odp_device** device) {
    return guarded([&] {
        need(device, "odp_device_open: device (the output)");
        const odp_device_attr attr = read_struct(attr_in, device_attr_v0, "odp_device_attr");
        odp::DeviceOptions options;
        options.name = attr.name != nullptr ? attr.name : "";
        if (attr.max_pinned_bytes != 0) {
            options.max_pinned_bytes = attr.max_pinned_bytes;
        }
        *device = odp::c_api::wrap(odp::Device::open(options));
    });
}

void odp_device_close(odp_device* device) {
    const std::unique_ptr<odp_device> owned(device);
}

const char* odp_device_name(const odp_device* device) {
    return device != nullptr ? device->name.c_str() : "";
}

ibv_context* odp_device_context(const odp_device* device) {
    return device != nullptr ? device->device->context() : nullptr;
}

ibv_pd* odp_device_pd(const odp_device* device) {
    return device != nullptr ? device->device->pd() : nullptr;
}

int odp_device_query_caps(const odp_device* device, odp_device_caps* caps) {
    return guarded([&] {
        const odp::DeviceCaps& in = need(device, "odp_device_query_caps: device").device->caps();
        odp_device_caps out{};
        out.odp = in.odp;
        out.implicit_odp = in.implicit_odp;
        out.prefetch = in.prefetch;
        out.native_data_ok = in.native_data_ok;
        out.rc_ops = ops(in.rc);
        out.uc_ops = ops(in.uc);
        out.ud_ops = ops(in.ud);
        out.xrc_ops = ops(in.xrc);
        out.max_sge = in.max_sge;
        out.max_mr_size = in.max_mr_size;
        out.native_data_check = in.native_data_check.c_str();  // the device's own string
        write_struct(caps, out, device_caps_v0, "odp_device_caps");
    });
}

int odp_device_describe(const odp_device* device, char** text) {
    return guarded([&] {
        give_string(odp::to_string(need(device, "odp_device_describe: device").device->caps()),
                    text);
    });
}

int odp_device_query_budget(const odp_device* device, odp_device_budget* budget) {
    return guarded([&] {
        const odp::Device& in = *need(device, "odp_device_query_budget: device").device;
        odp_device_budget out{};
        out.max_pinned_bytes = in.max_pinned_bytes();
        out.pinned_bytes = in.pinned_bytes();
        out.source = in.budget_source().c_str();  // lives as long as the device
        write_struct(budget, out, device_budget_v0, "odp_device_budget");
    });
}

int odp_region_register(odp_device* device, const void* address, size_t length, unsigned access,
                        const odp_region_attr* attr, odp_region** region) {
    return guarded([&] {
        odp::Device& owner = *need(device, "odp_region_register: device").device;
        need(region, "odp_region_register: region (the output)");
        auto handle = std::make_unique<odp_region>();
        handle->region =
            owner.register_region(address, length, to_access(access), to_options(attr));
        *region = handle.release();
    });
}

int odp_region_register_address_space(odp_device* device, unsigned access,
                                      const odp_region_attr* attr, odp_region** region) {
    return guarded([&] {
        odp::Device& owner = *need(device, "odp_region_register_address_space: device").device;
        need(region, "odp_region_register_address_space: region (the output)");
        auto handle = std::make_unique<odp_region>();
        handle->region = owner.register_address_space(to_access(access), to_options(attr));
        *region = handle.release();
    });
}

void odp_region_close(odp_region* region) {
    const std::unique_ptr<odp_region> owned(region);
}

int odp_region_query(const odp_region* region, odp_region_info* info) {
    return guarded([&] {
        const odp::Region& in = need(region, "odp_region_query: region").region;
        odp_region_info out{};
        out.mode = from_mode(in.mode());
        out.access = static_cast<unsigned>(in.access());
        out.begin = in.range().begin;
        out.end = in.range().end;
        out.chunk_size = in.chunk_size();
        out.implicit = in.implicit();
        write_struct(info, out, region_info_v0, "odp_region_info");
    });
}

int odp_region_describe(const odp_region* region, char** text) {
    return guarded(
        [&] { give_string(need(region, "odp_region_describe: region").region.describe(), text); });
}

int odp_region_monitor(const odp_region* region, char** text) {
    return guarded(
        [&] { give_string(need(region, "odp_region_monitor: region").region.monitor(), text); });
}

int odp_region_translate(odp_region* region, const void* address, size_t length, ibv_sge* sges,
                         size_t max_sge, size_t* sge_count, odp_lease** lease) {
    return guarded([&] {
        odp::Region& from = need(region, "odp_region_translate: region").region;
        need(sge_count, "odp_region_translate: sge_count (the output)");
        need(lease, "odp_region_translate: lease (the output)");
        if (sges == nullptr && max_sge != 0) {
            odp::throw_error(EINVAL, "odp_region_translate: sges is NULL but max_sge is " +
                                         std::to_string(max_sge));
        }
        auto handle = std::make_unique<odp_lease>();
        handle->lease = from.translate(address, length, max_sge);
        const auto translated = handle->lease.sges();
        std::copy(translated.begin(), translated.end(), sges);
        *sge_count = translated.size();
        *lease = handle.release();
    });
}

int odp_lease_release(odp_lease* lease, bool* changed) {
    const std::unique_ptr<odp_lease> owned(lease);
    const bool was_changed = owned && owned->lease.release();
    if (changed != nullptr) {
        *changed = was_changed;
    }
    return 0;
}

int odp_region_expose(odp_region* region, const void* address, size_t length,
                      odp_change_fn on_change, void* context, odp_exposure** exposure) {
    return guarded([&] {
        odp::Region& from = need(region, "odp_region_expose: region").region;
        need(exposure, "odp_region_expose: exposure (the output)");
        odp::ExposureCallback callback;
        if (on_change != nullptr) {
            callback = [on_change, context](odp::Range changed, odp::InvalidationReason reason) {
                on_change(context, changed.begin, changed.end,
                          static_cast<odp_invalidation_reason>(reason));
            };
        }
        auto handle = std::make_unique<odp_exposure>();
        handle->exposure = from.expose(address, length, std::move(callback));
        for (const odp::RemoteSegment& segment : handle->exposure.segments()) {
            handle->segments.push_back({segment.address, segment.length, segment.rkey});
        }
        *exposure = handle.release();
    });
}

const odp_segment* odp_exposure_segments(const odp_exposure* exposure, size_t* count) {
    if (count != nullptr) {
        *count = exposure != nullptr ? exposure->segments.size() : 0;
    }
    return exposure != nullptr ? exposure->segments.data() : nullptr;
}

bool odp_exposure_changed(const odp_exposure* exposure) {
    return exposure != nullptr && exposure->exposure.changed();
}

int odp_exposure_release(odp_exposure* exposure, bool* changed) {
    const std::unique_ptr<odp_exposure> owned(exposure);
    const bool was_changed = owned && owned->exposure.release();
    if (changed != nullptr) {
        *changed = was_changed;
    }
    return 0;
}

int odp_region_prefetch(odp_region* region, const void* address, size_t length,
                        odp_prefetch advice) {
    return guarded([&] {
        odp::Region& in = need(region, "odp_region_prefetch: region").region;
        in.prefetch(address, length, to_prefetch(advice, "odp_region_prefetch"));
    });
}

int odp_region_prefetch_async(odp_region* region, const void* address, size_t length,
                              odp_prefetch advice) {
    return guarded([&] {
        odp::Region& in = need(region, "odp_region_prefetch_async: region").region;
        in.prefetch_async(address, length, to_prefetch(advice, "odp_region_prefetch_async"));
    });
}

int odp_region_collect(odp_region* region) {
    return guarded([&] { need(region, "odp_region_collect: region").region.collect(); });
}

int odp_region_invalidate(odp_region* region, const void* address, size_t length,
                          odp_invalidation_reason reason) {
    return guarded([&] {
        odp::Region& in = need(region, "odp_region_invalidate: region").region;
        if (!valid_reason(reason)) {
            odp::throw_error(EINVAL, "odp_region_invalidate: unknown reason " +
                                         std::to_string(static_cast<int>(reason)));
        }
        in.invalidate(odp::Range::from_length(address, length),
                      static_cast<odp::InvalidationReason>(reason));
    });
}

int odp_region_stats(const odp_region* region, odp_stats* stats) {
    return guarded([&] {
        write_struct(stats, to_c(need(region, "odp_region_stats: region").region.stats()), stats_v0,
                     "odp_stats");
    });
}

int odp_device_stats(const odp_device* device, odp_stats* stats) {
    return guarded([&] {
        write_struct(stats, to_c(need(device, "odp_device_stats: device").device->stats()),
                     stats_v0, "odp_stats");
    });
}

int odp_stats_json(const odp_stats* stats, char** json) {
    return guarded([&] {
        need(stats, "odp_stats_json: stats");
        give_string(
            odp::to_json(from_c(read_struct(stats, stats_v0, "odp_stats", Unknown::Ignore))), json);
    });
}

const char* odp_mode_name(odp_mode mode) {
    try {
        return odp::to_string(to_mode(mode)).data();  // string literals: NUL-terminated
    } catch (...) {
        return nullptr;
    }
}

int odp_mode_parse(const char* name, odp_mode* mode) {
    return guarded([&] {
        need(mode, "odp_mode_parse: mode (the output)");
        need(name, "odp_mode_parse: name");
        *mode = from_mode(odp::parse_mode(name));
    });
}

const char* odp_monitor_name(odp_monitor monitor) {
    try {
        return odp::to_string(to_monitor(monitor)).data();
    } catch (...) {
        return nullptr;
    }
}

const char* odp_invalidation_reason_name(odp_invalidation_reason reason) {
    return valid_reason(reason)
               ? odp::to_string(static_cast<odp::InvalidationReason>(reason)).data()
               : nullptr;
}

}  // extern "C"
