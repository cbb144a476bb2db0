/* odp/odp.h: the C API of libodp (C11; usable from C++ as well).
 *
 * Unpinned memory registration for RDMA: native on-demand paging (ODP) where
 * the device has it, an emulation everywhere else, plain pinning as the
 * baseline. The same library as the C++ API (odp/device.hpp, ...), seen
 * through opaque handles:
 *
 *   odp_device_open    -> struct odp_device    (odp_device_close)
 *   odp_region_register -> struct odp_region   (odp_region_close)
 *   odp_region_translate -> struct odp_lease + the caller's ibv_sge array
 *                                               (odp_lease_release)
 *   odp_region_expose  -> struct odp_exposure  (odp_exposure_release)
 *
 * Conventions, everywhere:
 *  - A function that can fail returns 0 or a negative errno value (-EINVAL,
 *    -ENOMEM, ...; see docs/guide.md, "Errors"). On failure the calling
 *    thread's last error message (odp_last_error) says what was being done,
 *    on what, and what to do: the same text as the C++ odp::Error. Outputs
 *    are written only on success. No C++ exception ever leaves the library.
 *  - Handles are created and destroyed in pairs; the destroy functions accept
 *    NULL. A region keeps its device alive and a lease or exposure keeps its
 *    region alive, so they may be closed in any order.
 *  - Structs that carry a `size` field are extensible: initialise them with
 *    their odp_*_init() function (it zeroes them and sets size), then set the
 *    fields you need. A later libodp only appends fields; it reads or writes
 *    no more than `size` bytes, and a caller built with a newer odp.h than
 *    the library must leave the fields the library does not know at zero
 *    (-E2BIG otherwise).
 *  - Strings returned through `char **` are allocated with malloc: free() them.
 *  - Thread-safe like the C++ API: any number of threads may translate,
 *    expose, prefetch and release at once.
 */
#ifndef ODP_ODP_H
#define ODP_ODP_H

#include <infiniband/verbs.h>
#include <odp/export.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* C++ sees each enum with the type C gives it (GCC and Clang: unsigned int,
 * all values being positive) as a fixed underlying type: any value a C caller
 * passes is then a valid value for the library to check and refuse. */
#ifdef __cplusplus
#define ODP_ENUM_TYPE : unsigned int
#else
#define ODP_ENUM_TYPE
#endif

struct odp_device;
struct odp_region;
struct odp_lease;
struct odp_exposure;

/* How a region is registered with the NIC. */
enum odp_mode ODP_ENUM_TYPE {
    ODP_MODE_AUTO = 0,     /* native if the device's ODP covers the access, else emulated */
    ODP_MODE_PINNED = 1,   /* one plain ibv_reg_mr over the whole region, pinned now */
    ODP_MODE_NATIVE = 2,   /* one IBV_ACCESS_ON_DEMAND MR: the NIC faults pages itself */
    ODP_MODE_EMULATED = 3, /* chunks registered on first use, kept coherent by the mirror */
};

/* What a region may be used for (bits; every region is a valid send/write
 * source). Remote write and atomic imply local write, as in verbs. */
enum odp_access ODP_ENUM_TYPE {
    ODP_ACCESS_LOCAL_WRITE = 1u << 0, /* the NIC writes into it: receives, READ responses */
    ODP_ACCESS_REMOTE_WRITE = 1u << 1,
    ODP_ACCESS_REMOTE_READ = 1u << 2,
    ODP_ACCESS_REMOTE_ATOMIC = 1u << 3,
};

/* Emulated mode: where invalidation events come from (docs/sources.md). */
enum odp_monitor ODP_ENUM_TYPE {
    ODP_MONITOR_AUTO = 0,        /* the odp_mirror module if loaded, else userfaultfd */
    ODP_MONITOR_MODULE = 1,      /* odp_mirror.ko */
    ODP_MONITOR_USERFAULTFD = 2, /* unmap/remove/remap events of anonymous and shmem memory */
    ODP_MONITOR_NONE = 3,        /* none: the caller never changes the mapping under the region
                                    (or reports it with odp_region_invalidate) */
};

enum odp_prefetch ODP_ENUM_TYPE {
    ODP_PREFETCH_WRITE = 0, /* IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE */
    ODP_PREFETCH_READ = 1,  /* IBV_ADVISE_MR_ADVICE_PREFETCH */
};

/* Why the memory under a range stopped being what was registered. */
enum odp_invalidation_reason ODP_ENUM_TYPE {
    ODP_INVALIDATION_UNMAP = 0,      /* munmap, mremap away, shmdt, exit */
    ODP_INVALIDATION_CLEAR = 1,      /* madvise(DONTNEED/FREE/REMOVE), hole punch */
    ODP_INVALIDATION_PROTECTION = 2, /* mprotect */
    ODP_INVALIDATION_MIGRATION = 3,  /* migration, compaction, NUMA balancing, swap */
    ODP_INVALIDATION_TEARDOWN = 4,   /* the region or the process is going away */
    ODP_INVALIDATION_OTHER = 5,      /* anything the source could not classify */
    ODP_INVALIDATION_OVERFLOW = 6,   /* events were lost: everything is stale */
};
/* Slots of odp_stats.invalidations: room for reasons added later. */
#define ODP_INVALIDATION_SLOTS 16

/* RC/UC/UD/XRC operations that work on native ODP memory (odp_device_caps). */
enum odp_odp_op ODP_ENUM_TYPE {
    ODP_OP_SEND = 1u << 0,
    ODP_OP_RECV = 1u << 1,
    ODP_OP_WRITE = 1u << 2,
    ODP_OP_READ = 1u << 3,
    ODP_OP_ATOMIC = 1u << 4,
    ODP_OP_SRQ_RECV = 1u << 5,
};

/* --- errors ------------------------------------------------------------- */

/* The message of the last call that failed on this thread ("" if none did);
 * valid until the next failing call on this thread. A successful call leaves
 * it as it was, like errno. */
ODP_API const char* odp_last_error(void);

/* --- devices ------------------------------------------------------------ */

struct odp_device_attr {
    size_t size;
    const char* name;          /* verbs device name; NULL or "": the first device */
    uint64_t max_pinned_bytes; /* pinned budget; 0: RLIMIT_MEMLOCK (half of RAM if unlimited) */
};
static inline void odp_device_attr_init(struct odp_device_attr* attr) {
    memset(attr, 0, sizeof *attr);
    attr->size = sizeof *attr;
}

/* Opens a verbs device, allocates its protection domain and reads its ODP
 * capabilities. attr may be NULL (the first device, default budget).
 * -ENODEV: no device or no such device (the message lists those present);
 * -EACCES: no permission on /dev/infiniband; -EINVAL: a budget above
 * RLIMIT_MEMLOCK. */
ODP_API int odp_device_open(const struct odp_device_attr* attr, struct odp_device** device);
/* Drops the handle; the device lives on while regions of it are open. */
ODP_API void odp_device_close(struct odp_device* device);

/* "rxe0"; valid while the handle is open. */
ODP_API const char* odp_device_name(const struct odp_device* device);
/* The verbs objects, for the caller's own CQs and QPs; NULL on a fake NIC. */
ODP_API struct ibv_context* odp_device_context(const struct odp_device* device);
ODP_API struct ibv_pd* odp_device_pd(const struct odp_device* device);

struct odp_device_caps {
    size_t size;
    bool odp;            /* IBV_ODP_SUPPORT */
    bool implicit_odp;   /* an ODP MR over the whole address space */
    bool prefetch;       /* ibv_advise_mr works on an ODP MR */
    bool native_data_ok; /* native ODP moved the right bytes in the loopback check */
    uint32_t rc_ops;     /* ODP_OP_* bits per transport */
    uint32_t uc_ops;
    uint32_t ud_ops;
    uint32_t xrc_ops;
    uint32_t max_sge;
    uint64_t max_mr_size;
    /* "passed", "failed: <what>" or "not run: <why>"; valid while the
     * device handle is open. */
    const char* native_data_check;
};
static inline void odp_device_caps_init(struct odp_device_caps* caps) {
    memset(caps, 0, sizeof *caps);
    caps->size = sizeof *caps;
}
ODP_API int odp_device_query_caps(const struct odp_device* device, struct odp_device_caps* caps);
/* The capabilities as text, several lines (what odp-perf prints). */
ODP_API int odp_device_describe(const struct odp_device* device, char** text);

struct odp_device_budget {
    size_t size;
    uint64_t max_pinned_bytes; /* what emulated chunks and pinned regions may pin at once */
    uint64_t pinned_bytes;     /* pinned now */
    /* Where the maximum came from, e.g. "RLIMIT_MEMLOCK (8 MiB)"; valid
     * while the device handle is open. */
    const char* source;
};
static inline void odp_device_budget_init(struct odp_device_budget* budget) {
    memset(budget, 0, sizeof *budget);
    budget->size = sizeof *budget;
}
ODP_API int odp_device_query_budget(const struct odp_device* device,
                                    struct odp_device_budget* budget);

/* --- regions ------------------------------------------------------------ */

struct odp_region_attr {
    size_t size;
    enum odp_mode mode;       /* ODP_MODE_AUTO by default */
    enum odp_monitor monitor; /* emulated: the invalidation source; ODP_MONITOR_AUTO */
    size_t chunk_size;        /* emulated: power of two >= page size; 0: 2 MiB */
    /* Appended in 0.2.0 (libodp 0.1.0 refuses a nonzero value
     * with -E2BIG). Emulated: when chunks are faulted in address order,
     * register up to this many chunks beyond the last one used in the
     * background, before they are needed (within the budget, never evicting
     * a leased chunk; it stops when the pattern stops; refilled in batches,
     * once at most half of them are registered). 0: off. */
    size_t fault_ahead;
};
static inline void odp_region_attr_init(struct odp_region_attr* attr) {
    memset(attr, 0, sizeof *attr);
    attr->size = sizeof *attr;
}

/* Registers [address, address + length) with `access` (odp_access bits);
 * attr may be NULL (ODP_MODE_AUTO). -EOPNOTSUPP: native mode without device
 * support; -EINVAL/-EOVERFLOW: bad range or chunk size; -E2BIG: larger than
 * the device's max_mr_size; pinned mode: the verbs error of ibv_reg_mr. */
ODP_API int odp_region_register(struct odp_device* device, const void* address, size_t length,
                                unsigned access, const struct odp_region_attr* attr,
                                struct odp_region** region);
/* The whole user address space: implicit ODP where the device has it, else
 * emulated over every address. ODP_MODE_PINNED is refused (-EINVAL). */
ODP_API int odp_region_register_address_space(struct odp_device* device, unsigned access,
                                              const struct odp_region_attr* attr,
                                              struct odp_region** region);
/* Deregisters what no lease or exposure holds; the rest goes when they do. */
ODP_API void odp_region_close(struct odp_region* region);

struct odp_region_info {
    size_t size;
    enum odp_mode mode; /* the mode in use, never ODP_MODE_AUTO */
    unsigned access;    /* odp_access bits */
    uintptr_t begin;    /* [begin, end) */
    uintptr_t end;
    size_t chunk_size; /* emulated; the region's length otherwise */
    bool implicit;     /* odp_region_register_address_space */
};
static inline void odp_region_info_init(struct odp_region_info* info) {
    memset(info, 0, sizeof *info);
    info->size = sizeof *info;
}
ODP_API int odp_region_query(const struct odp_region* region, struct odp_region_info* info);
/* "emulated, 2 MiB chunks, [0x7f.., 0x7f..) on rxe0, monitor userfaultfd" */
ODP_API int odp_region_describe(const struct odp_region* region, char** text);
/* Which invalidation source watches the region: "odp_mirror module",
 * "userfaultfd", "none (...)", "not needed (native)", ... */
ODP_API int odp_region_monitor(const struct odp_region* region, char** text);

/* Translates [address, address + length) into SGEs written to sges[0..n)
 * (one per chunk when emulated, in address order; n in *sge_count) and
 * leases them: they stay registered with these keys until
 * odp_lease_release. Emulated chunks not registered yet are registered now.
 * -E2BIG: more than max_sge SGEs needed (nothing registered); -EFAULT: memory
 * not mapped; -EAGAIN: the pinned budget is full of leased chunks (release
 * leases and retry); -EINVAL: outside the region. */
ODP_API int odp_region_translate(struct odp_region* region, const void* address, size_t length,
                                 struct ibv_sge* sges, size_t max_sge, size_t* sge_count,
                                 struct odp_lease** lease);
/* Gives the lease back and frees the handle. *changed (if not NULL) is true
 * when the memory under one of its chunks changed while it was leased: the
 * work request may have moved the old pages' bytes. Always returns 0. */
ODP_API int odp_lease_release(struct odp_lease* lease, bool* changed);

/* What a peer needs to access one piece of an exposed range. */
struct odp_segment {
    uint64_t address;
    uint32_t length;
    uint32_t rkey;
};

/* Called once, on the mirror's thread, as soon as the mapping under an
 * exposed range changes ([begin, end) is the event's range). It must not
 * block, and must not call odp_exposure_release (that frees the handle). */
typedef void (*odp_change_fn)(void* context, uintptr_t begin, uintptr_t end,
                              enum odp_invalidation_reason reason);

/* Registers and leases [address, address + length) for a peer's RDMA
 * (remote access needed: -EACCES otherwise). on_change may be NULL. */
ODP_API int odp_region_expose(struct odp_region* region, const void* address, size_t length,
                              odp_change_fn on_change, void* context,
                              struct odp_exposure** exposure);
/* The segments to send to the peer (*count of them, in address order);
 * valid until odp_exposure_release. */
ODP_API const struct odp_segment* odp_exposure_segments(const struct odp_exposure* exposure,
                                                        size_t* count);
/* True once the mapping under the exposed range has changed. */
ODP_API bool odp_exposure_changed(const struct odp_exposure* exposure);
/* Ends the exposure and frees the handle; *changed (if not NULL) says
 * whether the mapping changed while exposed (a peer's writes went to the old
 * pages). After it returns the callback no longer runs. Always returns 0. */
ODP_API int odp_exposure_release(struct odp_exposure* exposure, bool* changed);

/* Native: ibv_advise_mr (-EOPNOTSUPP if the device cannot); emulated:
 * registers the chunks now without leasing them; pinned: nothing to do. */
ODP_API int odp_region_prefetch(struct odp_region* region, const void* address, size_t length,
                                enum odp_prefetch advice);
/* Added in 0.2.0. The same without waiting: emulated, the chunks are
 * queued for the device's background thread (registered within the budget,
 * never evicting a leased chunk; a chunk that cannot be registered is only
 * missing from chunks_faulted_ahead); native: as odp_region_prefetch;
 * pinned: nothing to do. */
ODP_API int odp_region_prefetch_async(struct odp_region* region, const void* address, size_t length,
                                      enum odp_prefetch advice);
/* Deregisters the invalidated chunks no lease holds now. */
ODP_API int odp_region_collect(struct odp_region* region);
/* Tells the region that the mapping under [address, address + length)
 * changed (with ODP_MONITOR_NONE the caller is the only source). */
ODP_API int odp_region_invalidate(struct odp_region* region, const void* address, size_t length,
                                  enum odp_invalidation_reason reason);

/* --- statistics --------------------------------------------------------- */

struct odp_stats {
    size_t size;
    uint64_t hits;               /* translate chunk lookups served from the table */
    uint64_t misses;             /* lookups that took the slow path */
    uint64_t chunk_faults;       /* chunks registered on demand (emulated) */
    uint64_t bytes_registered;   /* cumulative bytes handed to ibv_reg_mr */
    uint64_t prefetches;         /* prefetches that did work */
    uint64_t chunks_invalidated; /* registered chunks turned stale by events */
    uint64_t stale_while_leased; /* of those, chunks leased at the time */
    uint64_t evictions;          /* chunks deregistered to stay in the budget */
    uint64_t back_pressure;      /* calls refused: budget full of leased chunks */
    uint64_t pinned_bytes;       /* registered (pinned) now */
    uint64_t peak_pinned_bytes;  /* highest pinned_bytes seen */
    /* Events received, indexed by enum odp_invalidation_reason. */
    uint64_t invalidations[ODP_INVALIDATION_SLOTS];
    /* Appended in 0.2.0 (libodp 0.1.0 leaves them as they were). */
    uint64_t chunks_faulted_ahead; /* registered in the background (fault-ahead, async prefetch) */
    uint64_t fault_ahead_hits;     /* of those, chunks a lease used afterwards */
};
static inline void odp_stats_init(struct odp_stats* stats) {
    memset(stats, 0, sizeof *stats);
    stats->size = sizeof *stats;
}
ODP_API int odp_region_stats(const struct odp_region* region, struct odp_stats* stats);
/* Totals over every region of the device, alive or closed. */
ODP_API int odp_device_stats(const struct odp_device* device, struct odp_stats* stats);
/* {"hits":1,...,"invalidations":{"unmap":0,...}}: the C++ odp::to_json. */
ODP_API int odp_stats_json(const struct odp_stats* stats, char** json);

/* --- names -------------------------------------------------------------- */

/* "auto", "pinned", "native", "emulated"; NULL for a value out of range. */
ODP_API const char* odp_mode_name(enum odp_mode mode);
/* The inverse of odp_mode_name; -EINVAL (listing the names) otherwise. */
ODP_API int odp_mode_parse(const char* name, enum odp_mode* mode);
/* "auto", "module", "userfaultfd", "none"; NULL for a value out of range. */
ODP_API const char* odp_monitor_name(enum odp_monitor monitor);
/* "unmap", "clear", ...; NULL for a value out of range. */
ODP_API const char* odp_invalidation_reason_name(enum odp_invalidation_reason reason);

#ifdef __cplusplus
}
#endif

#endif /* ODP_ODP_H */
