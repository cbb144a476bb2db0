/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * odp_mirror: userspace ABI of /dev/odp_mirror (kernel-glue/odp_mirror.ko).
 *
 * The module keeps one HMM mirror per process: userspace registers virtual
 * address ranges ("regions"); the kernel never pins them, and every time the
 * mapping under a region changes (munmap, mremap, madvise, mprotect,
 * migration, reclaim, exit...) it bumps the region's generation counter and
 * queues an event.  Userspace reads both through read-only shared memory,
 * without system calls.
 *
 * Binding.  open("/dev/odp_mirror") binds the file to the caller's address
 * space.  All files opened by one process share one per-process state (the
 * region table, the event ring and the generation array).  Every ioctl and
 * mmap on a file from a different address space (a file inherited over fork,
 * or passed over a unix socket) fails with EPERM; poll() on it reports
 * EPOLLERR.
 *
 * Regions belong to the process; region ids and generation slots are unique
 * within it.  Any file of the process may FAULT, SNAPSHOT or UNREGISTER any
 * region; a region is removed automatically when the file that registered it
 * is closed.
 *
 * Argument structs.  Every ioctl takes a pointer to a struct whose first
 * field is `__u32 size`, set by userspace to sizeof() the struct it was built
 * with.  The kernel
 *  - fails with EINVAL if size is smaller than the ABI version 1 size,
 *  - fails with E2BIG if size is larger than the struct it knows and any byte
 *    past the known struct is non-zero (larger, zero-filled structs from a
 *    newer userspace are accepted), or if size is larger than the page size,
 *  - fails with EINVAL if a reserved field or an unknown flag is non-zero,
 *  - writes back at most `size` bytes,
 *  - fails with EFAULT if the struct (or a buffer it points to) is not
 *    accessible.
 * The ioctl command numbers below are dispatched on their type and number
 * only; the size encoded in them is informative.  Unknown numbers: ENOTTY.
 *
 * Ranges.  Addresses and lengths are bytes; start and length must be
 * multiples of the page size (ODP_MIRROR_IOC_QUERY.page_size), length must be
 * non-zero (EINVAL otherwise).  start + length wrapping around 2^64 fails
 * with EOVERFLOW; a range ending above the top of the user address space
 * (ODP_MIRROR_IOC_QUERY.address_limit) fails with ERANGE.
 *
 * Events never block the kernel.  When the ring is full the event is dropped,
 * `lost` in the ring header is incremented and `overflow` is set; a reader
 * that sees `lost` change must treat every region as invalidated.
 *
 * Limits.  Every allocation is charged to the opener's memory cgroup; open()
 * fails with ENOMEM at the cgroup's memory.max, and with EDQUOT when the
 * states of the opener's uid would hold more than the module parameter
 * max_user_bytes.
 *
 * Must compile as C and as C++ in userspace (only <linux/types.h> and
 * <linux/ioctl.h> are needed).  See docs/kernel-abi.md for the full
 * reference, including the memory-ordering rules of the ring.
 */
#ifndef _UAPI_LINUX_ODP_MIRROR_H
#define _UAPI_LINUX_ODP_MIRROR_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define ODP_MIRROR_DEVICE_NAME	"odp_mirror"
#define ODP_MIRROR_DEVICE_PATH	"/dev/odp_mirror"

/* Bumped on incompatible changes only; compatible growth uses `size`. */
#define ODP_MIRROR_ABI_VERSION	1

/* ODP_MIRROR_IOC_QUERY.features */
#define ODP_MIRROR_FEATURE_EVENT_RING	(1ULL << 0) /* mmap-able event ring */
#define ODP_MIRROR_FEATURE_GENERATIONS	(1ULL << 1) /* mmap-able generation array */
#define ODP_MIRROR_FEATURE_FAULT	(1ULL << 2) /* ODP_MIRROR_IOC_FAULT, read and write */
#define ODP_MIRROR_FEATURE_SNAPSHOT	(1ULL << 3) /* ODP_MIRROR_IOC_SNAPSHOT */
#define ODP_MIRROR_FEATURE_STATS	(1ULL << 4) /* ODP_MIRROR_IOC_STATS and debugfs */
#define ODP_MIRROR_FEATURE_POLL		(1ULL << 5) /* poll/epoll: EPOLLIN when events are queued */
#define ODP_MIRROR_FEATURE_POLL_LOST	(1ULL << 6) /* ODP_MIRROR_CONSUMER_POLL_LOST */

/*
 * Event reasons (struct odp_mirror_event.reason), derived from the kernel's
 * enum mmu_notifier_event:
 *   UNMAP      the mapping was removed: munmap, the source of mremap, the
 *              part of a region given up by a shrinking mremap, mmap
 *              MAP_FIXED over it                          (MMU_NOTIFY_UNMAP)
 *   CLEAR      page-table entries were zapped while the mapping stays:
 *              madvise(MADV_DONTNEED/MADV_FREE/MADV_PAGEOUT), truncation,
 *              copy-on-write break (write after fork), reclaim/swap-out, and
 *              on 6.1/6.12 also ordinary page migration (move_pages,
 *              migrate_pages, compaction, soft-offline), which these kernels
 *              report as MMU_NOTIFY_CLEAR                 (MMU_NOTIFY_CLEAR)
 *   PROTECTION permissions were reduced: mprotect, write-protection of the
 *              parent's pages at fork, userfaultfd write-protect
 *                        (MMU_NOTIFY_PROTECTION_VMA, MMU_NOTIFY_PROTECTION_PAGE)
 *   MIGRATION  migration reported as such by the kernel (MMU_NOTIFY_MIGRATE,
 *              e.g. migrate_vma to device memory)
 *   TEARDOWN   the address space is being destroyed: process exit (any
 *              invalidation once the last user of the mm is gone, and
 *              MMU_NOTIFY_RELEASE), or the OOM reaper (non-blockable)
 *   OTHER      anything else (soft-dirty clearing, exclusive access, events
 *              added by newer kernels)
 */
#define ODP_MIRROR_REASON_UNMAP		1
#define ODP_MIRROR_REASON_CLEAR		2
#define ODP_MIRROR_REASON_PROTECTION	3
#define ODP_MIRROR_REASON_MIGRATION	4
#define ODP_MIRROR_REASON_TEARDOWN	5
#define ODP_MIRROR_REASON_OTHER		6
/* Size of the by-reason counter arrays; index 0 is never used. */
#define ODP_MIRROR_REASON_SLOTS		8

/* struct odp_mirror_event.flags */
/* The invalidation could not sleep (OOM reaper); it was handled all the same. */
#define ODP_MIRROR_EVENT_NONBLOCKING	(1U << 0)

/*
 * One invalidation of one region.  64 bytes.  [start, end) is the changed
 * range clipped to the region; generation is the region's value in the
 * generation array after this invalidation.
 */
struct odp_mirror_event {
	__u64 seq;		/* ring position: the n-th event ever queued has seq n-1 */
	__u64 cookie;		/* REGISTER cookie of the region */
	__u64 start;		/* first byte invalidated, page aligned */
	__u64 end;		/* one past the last byte invalidated, page aligned */
	__u64 generation;	/* region generation after this invalidation */
	__u32 region_id;	/* REGISTER id */
	__u32 slot;		/* REGISTER slot (index in the generation array) */
	__u16 reason;		/* ODP_MIRROR_REASON_* */
	__u16 flags;		/* ODP_MIRROR_EVENT_* */
	__u32 reserved0;	/* zero */
	__u64 reserved1;	/* zero */
};

/*
 * mmap layout.  Three areas, each mapped separately with MAP_SHARED at the
 * offset below and at most the length returned by ODP_MIRROR_IOC_QUERY:
 *
 * ODP_MIRROR_MMAP_RING (read-only; PROT_WRITE fails with EACCES)
 *   offset 0                               struct odp_mirror_ring_header
 *   offset ODP_MIRROR_RING_EVENTS_OFFSET   struct odp_mirror_event[entries]
 *   length: query.ring_mmap_size
 *
 * ODP_MIRROR_MMAP_CONSUMER (read-write, the only memory userspace writes)
 *   offset 0                               struct odp_mirror_ring_consumer
 *   length: query.consumer_mmap_size
 *
 * ODP_MIRROR_MMAP_GENERATIONS (read-only; PROT_WRITE fails with EACCES)
 *   offset 0                               __u64 generation[max_regions]
 *   length: query.generations_mmap_size
 *   generation[slot] of a live region changes (increases) every time the
 *   region is invalidated, and on UNREGISTER.  Slots are reused, their
 *   counters never go back.  "Is my translation still valid" is one load:
 *   __atomic_load_n(&generation[slot], __ATOMIC_ACQUIRE) == the value
 *   returned by REGISTER/FAULT/SNAPSHOT or carried by the last event.
 *
 * Any other offset, or a length past the end of an area: EINVAL.  Mappings
 * are not inherited by fork children (VM_DONTCOPY, and VM_IO so that
 * madvise(MADV_DOFORK) fails with EINVAL).  A file opened O_RDONLY can map
 * the read-only areas.
 *
 * Ring protocol (single consumer per process):
 *   h = __atomic_load_n(&hdr->head, __ATOMIC_ACQUIRE);
 *   for (t = cons->tail; t != h; t++)
 *           use events[t & (hdr->entries - 1)];   (its seq == t)
 *   __atomic_store_n(&cons->tail, h, __ATOMIC_RELEASE);
 *   l = __atomic_load_n(&hdr->lost, __ATOMIC_ACQUIRE);
 *   if (l != lost_seen) { every region is stale; lost_seen = l; }
 * The kernel queues an event only if head - tail < entries; a bogus tail
 * written by userspace only makes the kernel drop (and count) events.
 * poll/epoll report EPOLLIN while head != tail, and, with
 * ODP_MIRROR_CONSUMER_POLL_LOST set in cons->flags, while lost != lost_seen:
 * a reader that opts in stores the `lost` it has handled in cons->lost_seen
 * (store-release), so a drop counted just after it caught up still wakes it.
 */
#define ODP_MIRROR_MMAP_RING		0x00000000ULL
#define ODP_MIRROR_MMAP_CONSUMER	0x10000000ULL
#define ODP_MIRROR_MMAP_GENERATIONS	0x20000000ULL

/* Byte offset of events[0] inside the ring area. */
#define ODP_MIRROR_RING_EVENTS_OFFSET	4096

struct odp_mirror_ring_header {
	__u64 head;		/* events queued so far (store-release by the kernel) */
	__u64 lost;		/* events dropped because the ring was full, ever */
	__u32 overflow;		/* 1 if the last event queued was dropped, else 0 */
	__u32 entries;		/* event slots, a power of two */
	__u64 reserved[5];	/* zero */
};

/* struct odp_mirror_ring_consumer.flags */
/* poll/epoll also report EPOLLIN while lost != lost_seen. */
#define ODP_MIRROR_CONSUMER_POLL_LOST	(1U << 0)

struct odp_mirror_ring_consumer {
	__u64 tail;		/* events consumed so far (store-release by userspace) */
	__u64 lost_seen;	/* with POLL_LOST: the `lost` the reader has handled */
	__u32 flags;		/* ODP_MIRROR_CONSUMER_*; unknown bits are ignored */
	__u32 reserved0;	/* ignored by the kernel */
	__u64 reserved[5];	/* ignored by the kernel */
};

/* ODP_MIRROR_IOC_QUERY: ABI version, features, limits and the mmap sizes. */
struct odp_mirror_query {
	__u32 size;			/* in: sizeof(struct odp_mirror_query) */
	__u32 abi_version;		/* out: ODP_MIRROR_ABI_VERSION */
	__u64 features;			/* out: ODP_MIRROR_FEATURE_* */
	__u32 page_size;		/* out: kernel page size in bytes */
	__u32 max_regions;		/* out: region limit of this process = generation slots */
	__u32 ring_entries;		/* out: event ring slots (limit of queued events) */
	__u32 event_size;		/* out: sizeof(struct odp_mirror_event) */
	__u64 ring_mmap_size;		/* out: bytes of the ODP_MIRROR_MMAP_RING area */
	__u64 consumer_mmap_size;	/* out: bytes of the ODP_MIRROR_MMAP_CONSUMER area */
	__u64 generations_mmap_size;	/* out: bytes of the ODP_MIRROR_MMAP_GENERATIONS area */
	__u64 max_fault_bytes;		/* out: FAULT/SNAPSHOT length limit per call */
	__u64 address_limit;		/* out: end of the user address space (ERANGE past it) */
	__u64 reserved[3];		/* in: zero; out: zero */
};

/*
 * ODP_MIRROR_IOC_REGISTER: mirror [start, start + length).  The range may
 * contain unmapped addresses and may be as large as the user address space;
 * nothing is faulted or pinned.  Regions may overlap.
 * Errors: EINVAL (zero/unaligned length or start, flags, reserved), EOVERFLOW,
 * ERANGE, ENOSPC (max_regions regions already registered in this process),
 * ENOMEM, EPERM (file of another address space), EINTR (fatal signal).
 */
struct odp_mirror_register {
	__u32 size;		/* in: sizeof(struct odp_mirror_register) */
	__u32 flags;		/* in: zero (no flags defined yet) */
	__u64 start;		/* in */
	__u64 length;		/* in */
	__u64 cookie;		/* in: opaque, copied into every event of the region */
	__u32 id;		/* out: region id, non-zero, unique in the process */
	__u32 slot;		/* out: index into the generation array */
	__u64 generation;	/* out: current generation[slot] */
	__u64 reserved[2];	/* in: zero; out: zero */
};

/*
 * ODP_MIRROR_IOC_UNREGISTER: remove a region.  Its generation is bumped (so
 * cached translations fail their check) and its slot freed; a FAULT or
 * SNAPSHOT still running on it finishes with ENOENT.  No event is queued.
 * Errors: ENOENT (unknown id), EINVAL (reserved), EPERM, EINTR (fatal signal).
 */
struct odp_mirror_unregister {
	__u32 size;		/* in: sizeof(struct odp_mirror_unregister) */
	__u32 id;		/* in */
	__u64 reserved[2];	/* in: zero */
};

/* struct odp_mirror_fault.flags */
#define ODP_MIRROR_FAULT_WRITE	(1U << 0) /* make the pages writable (break COW) */

/*
 * ODP_MIRROR_IOC_FAULT: make every page of [start, start + length) present
 * in the page tables (writable with ODP_MIRROR_FAULT_WRITE) like a CPU access
 * would, without pinning anything.  The range must lie inside the region.
 * On success pages_present == length / page_size and `generation` is the
 * region's generation the result belongs to: if generation[slot] still holds
 * it, nothing was invalidated since.
 * Errors: ENOENT (unknown id, or unregistered during the call), ERANGE (range
 * not inside the region), EINVAL (zero/unaligned, flags, reserved, longer
 * than max_fault_bytes), EOVERFLOW, EFAULT (a page is unmapped or not
 * accessible, e.g. PROT_NONE), EPERM (write to a read-only mapping, or file
 * of another address space), EBUSY (the range kept being invalidated: the
 * attempts this call threw away took a second in total: retry), EINTR (fatal
 * signal, or any signal while retrying), ESRCH (the address space is exiting),
 * ENOMEM.
 */
struct odp_mirror_fault {
	__u32 size;		/* in: sizeof(struct odp_mirror_fault) */
	__u32 id;		/* in: region id */
	__u64 start;		/* in */
	__u64 length;		/* in */
	__u32 flags;		/* in: ODP_MIRROR_FAULT_* */
	__u32 reserved0;	/* in: zero */
	__u64 pages_present;	/* out */
	__u64 generation;	/* out */
	__u64 reserved[2];	/* in: zero; out: zero */
};

/* Bytes of the SNAPSHOT page map. */
#define ODP_MIRROR_PAGE_PRESENT		(1U << 0)
#define ODP_MIRROR_PAGE_WRITABLE	(1U << 1)

/*
 * ODP_MIRROR_IOC_SNAPSHOT: report, without faulting, which pages of
 * [start, start + length) (inside the region) are present and which are
 * writable.  If `pages` is non-zero it points to length / page_size bytes
 * that receive ODP_MIRROR_PAGE_* bits, one byte per page.  Unmapped
 * addresses read as 0.
 * Errors: as FAULT, except EFAULT means `pages` is not writable memory.
 */
struct odp_mirror_snapshot {
	__u32 size;		/* in: sizeof(struct odp_mirror_snapshot) */
	__u32 id;		/* in: region id */
	__u64 start;		/* in */
	__u64 length;		/* in */
	__u64 pages;		/* in: user pointer to __u8[length / page_size], or 0 */
	__u64 present;		/* out: pages present */
	__u64 writable;		/* out: pages present and writable */
	__u64 generation;	/* out */
	__u64 reserved[2];	/* in: zero; out: zero */
};

/*
 * Counters.  Gauges (live objects) first, then monotonic totals.  In the
 * per-process set, mms is 1 and open_files counts the files of the process.
 * When no file of the module is open, every module-wide gauge is zero.
 */
struct odp_mirror_counters {
	__u64 open_files;		/* gauge */
	__u64 mms;			/* gauge: per-process states alive */
	__u64 regions;			/* gauge */
	__u64 faults_in_flight;		/* gauge: FAULT and SNAPSHOT calls running */
	__u64 registrations;		/* REGISTER successes */
	__u64 unregistrations;		/* regions removed (UNREGISTER or close) */
	__u64 faults;			/* FAULT successes */
	__u64 fault_retries;		/* read_begin/retry loops restarted */
	__u64 pages_faulted;		/* pages made present by FAULT */
	__u64 snapshots;		/* SNAPSHOT successes */
	__u64 invalidations;		/* notifier callbacks on regions */
	__u64 invalidations_nonblocking; /* ... of which could not sleep */
	__u64 invalidations_by_reason[ODP_MIRROR_REASON_SLOTS]; /* index: ODP_MIRROR_REASON_* */
	__u64 events;			/* events queued */
	__u64 events_lost;		/* events dropped, ring full */
	__u64 reserved[10];		/* zero */
};

/*
 * ODP_MIRROR_IOC_STATS: counters of the calling process and of the module.
 * flags and both output structs must be zero on input (EINVAL).
 */
struct odp_mirror_stats {
	__u32 size;			/* in: sizeof(struct odp_mirror_stats) */
	__u32 flags;			/* in: zero */
	struct odp_mirror_counters process;	/* out */
	struct odp_mirror_counters module;	/* out */
};

#define ODP_MIRROR_IOC_MAGIC	0xDB

#define ODP_MIRROR_IOC_QUERY		_IOWR(ODP_MIRROR_IOC_MAGIC, 0x00, struct odp_mirror_query)
#define ODP_MIRROR_IOC_REGISTER		_IOWR(ODP_MIRROR_IOC_MAGIC, 0x01, struct odp_mirror_register)
#define ODP_MIRROR_IOC_UNREGISTER	_IOW(ODP_MIRROR_IOC_MAGIC, 0x02, struct odp_mirror_unregister)
#define ODP_MIRROR_IOC_FAULT		_IOWR(ODP_MIRROR_IOC_MAGIC, 0x03, struct odp_mirror_fault)
#define ODP_MIRROR_IOC_SNAPSHOT		_IOWR(ODP_MIRROR_IOC_MAGIC, 0x04, struct odp_mirror_snapshot)
#define ODP_MIRROR_IOC_STATS		_IOWR(ODP_MIRROR_IOC_MAGIC, 0x05, struct odp_mirror_stats)

#endif /* _UAPI_LINUX_ODP_MIRROR_H */
