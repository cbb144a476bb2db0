/* Compiled as C99 with -Wpedantic -Werror: the uapi header is valid C. */
#include <odp_mirror.h>
#include <stddef.h>

#include "abi_c.h"

size_t odp_mirror_abi_c_size(enum odp_mirror_abi_struct which)
{
	switch (which) {
	case ODP_ABI_EVENT:
		return sizeof(struct odp_mirror_event);
	case ODP_ABI_RING_HEADER:
		return sizeof(struct odp_mirror_ring_header);
	case ODP_ABI_RING_CONSUMER:
		return sizeof(struct odp_mirror_ring_consumer);
	case ODP_ABI_QUERY:
		return sizeof(struct odp_mirror_query);
	case ODP_ABI_REGISTER:
		return sizeof(struct odp_mirror_register);
	case ODP_ABI_UNREGISTER:
		return sizeof(struct odp_mirror_unregister);
	case ODP_ABI_FAULT:
		return sizeof(struct odp_mirror_fault);
	case ODP_ABI_SNAPSHOT:
		return sizeof(struct odp_mirror_snapshot);
	case ODP_ABI_COUNTERS:
		return sizeof(struct odp_mirror_counters);
	case ODP_ABI_STATS:
		return sizeof(struct odp_mirror_stats);
	}
	return 0;
}

unsigned long odp_mirror_abi_c_ioctl(enum odp_mirror_abi_struct which)
{
	switch (which) {
	case ODP_ABI_QUERY:
		return ODP_MIRROR_IOC_QUERY;
	case ODP_ABI_REGISTER:
		return ODP_MIRROR_IOC_REGISTER;
	case ODP_ABI_UNREGISTER:
		return ODP_MIRROR_IOC_UNREGISTER;
	case ODP_ABI_FAULT:
		return ODP_MIRROR_IOC_FAULT;
	case ODP_ABI_SNAPSHOT:
		return ODP_MIRROR_IOC_SNAPSHOT;
	case ODP_ABI_STATS:
		return ODP_MIRROR_IOC_STATS;
	default:
		return 0;
	}
}
