// Reports what the device says about ODP (ibv_query_device_ex) and what
// actually happens when an IBV_ACCESS_ON_DEMAND MR is registered, so the
// smoke suite can check that the two agree.  Raw verbs on purpose: this
// checks the guest, not libodp.
#include <infiniband/verbs.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>

namespace {

struct DeviceListDeleter {
    void operator()(ibv_device** list) const { ibv_free_device_list(list); }
};
struct ContextDeleter {
    void operator()(ibv_context* ctx) const { ibv_close_device(ctx); }
};
struct PdDeleter {
    void operator()(ibv_pd* pd) const { ibv_dealloc_pd(pd); }
};
struct MrDeleter {
    void operator()(ibv_mr* mr) const { ibv_dereg_mr(mr); }
};

int fail(const char* what, std::string_view device) {
    std::fprintf(stderr, "odp_probe: %s on %.*s: %s\n", what, static_cast<int>(device.size()),
                 device.data(), std::strerror(errno));
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string_view wanted = argc > 1 ? argv[1] : "rxe0";
    int count = 0;
    const std::unique_ptr<ibv_device*, DeviceListDeleter> list(ibv_get_device_list(&count));
    if (!list) {
        return fail("ibv_get_device_list", wanted);
    }
    ibv_device* device = nullptr;
    for (int i = 0; i < count; ++i) {
        if (wanted == ibv_get_device_name(list.get()[i])) {
            device = list.get()[i];
        }
    }
    if (device == nullptr) {
        std::fprintf(stderr, "odp_probe: no verbs device named %.*s\n",
                     static_cast<int>(wanted.size()), wanted.data());
        return 2;
    }
    const std::unique_ptr<ibv_context, ContextDeleter> ctx(ibv_open_device(device));
    if (!ctx) {
        return fail("ibv_open_device", wanted);
    }
    ibv_device_attr_ex attr{};
    if (ibv_query_device_ex(ctx.get(), nullptr, &attr) != 0) {
        return fail("ibv_query_device_ex", wanted);
    }
    const auto& odp = attr.odp_caps;
    const bool caps_say_odp = (odp.general_caps & IBV_ODP_SUPPORT) != 0;
    std::printf("odp_caps.general: %s\n", caps_say_odp ? "ODP_SUPPORT" : "none");
    std::printf("odp_caps.rc: send=%d recv=%d write=%d read=%d atomic=%d\n",
                (odp.per_transport_caps.rc_odp_caps & IBV_ODP_SUPPORT_SEND) != 0,
                (odp.per_transport_caps.rc_odp_caps & IBV_ODP_SUPPORT_RECV) != 0,
                (odp.per_transport_caps.rc_odp_caps & IBV_ODP_SUPPORT_WRITE) != 0,
                (odp.per_transport_caps.rc_odp_caps & IBV_ODP_SUPPORT_READ) != 0,
                (odp.per_transport_caps.rc_odp_caps & IBV_ODP_SUPPORT_ATOMIC) != 0);

    const std::unique_ptr<ibv_pd, PdDeleter> pd(ibv_alloc_pd(ctx.get()));
    if (!pd) {
        return fail("ibv_alloc_pd", wanted);
    }
    constexpr std::size_t kLength = 1 << 20;
    void* buffer =
        mmap(nullptr, kLength, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) {
        return fail("mmap 1 MiB", wanted);
    }
    const std::unique_ptr<ibv_mr, MrDeleter> mr(
        ibv_reg_mr(pd.get(), buffer, kLength,
                   IBV_ACCESS_ON_DEMAND | IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE));
    const int reg_errno = errno;
    std::printf("reg_mr(ON_DEMAND): %s\n", mr ? "ok" : std::strerror(reg_errno));
    const bool registered = mr != nullptr;
    std::printf("consistent: %s\n", registered == caps_say_odp ? "yes" : "no");
    munmap(buffer, kLength);
    return registered == caps_say_odp ? 0 : 1;
}
