/* What the C translation unit saw of the uapi header. */
#ifndef ODP_MIRROR_ABI_C_H
#define ODP_MIRROR_ABI_C_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum odp_mirror_abi_struct {
    ODP_ABI_EVENT,
    ODP_ABI_RING_HEADER,
    ODP_ABI_RING_CONSUMER,
    ODP_ABI_QUERY,
    ODP_ABI_REGISTER,
    ODP_ABI_UNREGISTER,
    ODP_ABI_FAULT,
    ODP_ABI_SNAPSHOT,
    ODP_ABI_COUNTERS,
    ODP_ABI_STATS,
};

size_t odp_mirror_abi_c_size(enum odp_mirror_abi_struct which);
unsigned long odp_mirror_abi_c_ioctl(enum odp_mirror_abi_struct which);

#ifdef __cplusplus
}
#endif

#endif
