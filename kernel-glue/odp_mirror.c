// SPDX-License-Identifier: GPL-2.0
/*
 * odp_mirror: one HMM mirror per process, for on-demand paging emulation.
 *
 * Userspace registers virtual address ranges ("regions").  Each region gets
 * an mmu_interval_notifier; when the kernel changes the mapping under it the
 * callback bumps the region's generation counter and queues an event in a
 * per-process ring.  Both the ring and the generation array are mapped
 * read-only into the process.  FAULT makes pages present with
 * hmm_range_fault() and SNAPSHOT reports which pages are present; nothing is
 * ever pinned.  The ABI is in include/uapi/odp_mirror.h and
 * docs/kernel-abi.md.
 *
 * Lifetimes (one struct per lifetime, guarded by reference counts):
 *
 *  struct odp_mm      one per address space, shared by every file the process
 *                     opened.  Found through odp_mms by its mm with
 *                     kref_get_unless_zero(); an entry whose count already
 *                     dropped to zero is being freed and is skipped, a fresh
 *                     one is created instead.  Holds mmgrab() on the mm (the
 *                     struct, not the address space): page tables are only
 *                     touched under mmget_not_zero() in FAULT/SNAPSHOT, never
 *                     in a free path.  References: one per open file, one per
 *                     region.
 *  struct odp_region  one per REGISTER.  References: one from the id table
 *                     (dropped by UNREGISTER or by closing the file that
 *                     registered it), one per FAULT/SNAPSHOT in flight.  The
 *                     interval notifier is removed when the last reference
 *                     goes, so a fault in flight always has a live notifier.
 *
 * Locks:
 *  odp_mms_lock       the list of odp_mm objects and the per-user charges.
 *  odp_mm.lock        the id table and the slot bitmap.  Never held across
 *                     a user access or mmap_lock, never taken inside a
 *                     notifier callback; ioctls take it killably.
 *  odp_region.lock    spinlock: the notifier callback against the
 *                     read_retry/commit step of FAULT and SNAPSHOT, and the
 *                     region's generation.  Callbacks never sleep, so the
 *                     non-blockable case (OOM reaper) needs nothing special.
 *  odp_mm.ring_lock   spinlock: event producers.  Nests inside region.lock.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/bitmap.h>
#include <linux/cred.h>
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/hmm.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>
#include <linux/xarray.h>

#include "odp_compat.h"
#include "odp_mirror.h"

/* Pages handled per hmm_range_fault() call; the pfn array is one page. */
#define ODP_BATCH_PAGES		(PAGE_SIZE / sizeof(unsigned long))
/* Upper bound of one FAULT or SNAPSHOT call, keeps a call's latency bounded. */
#define ODP_MAX_FAULT_BYTES	(1ULL << 30)
/* A call whose thrown-away attempts took this long in total: EBUSY. */
#define ODP_FAULT_TIMEOUT_MS	1000
/* Argument structs larger than this are refused (E2BIG) before scanning. */
#define ODP_MAX_ARG_SIZE	PAGE_SIZE

#define ODP_RING_ENTRIES_MIN	16U
#define ODP_RING_ENTRIES_MAX	(1U << 20)
#define ODP_REGIONS_MAX		(1U << 20)

static unsigned int max_regions = 4096;
static unsigned int ring_entries = 4096;
static unsigned long max_user_bytes = 256UL << 20;

static int odp_param_set_regions(const char *val, const struct kernel_param *kp)
{
	unsigned int n;
	int ret = kstrtouint(val, 0, &n);

	if (ret)
		return ret;
	if (n < 1 || n > ODP_REGIONS_MAX)
		return -EINVAL;
	*(unsigned int *)kp->arg = n;
	return 0;
}

static int odp_param_set_ring(const char *val, const struct kernel_param *kp)
{
	unsigned int n;
	int ret = kstrtouint(val, 0, &n);

	if (ret)
		return ret;
	if (n < ODP_RING_ENTRIES_MIN || n > ODP_RING_ENTRIES_MAX || !is_power_of_2(n))
		return -EINVAL;
	*(unsigned int *)kp->arg = n;
	return 0;
}

static const struct kernel_param_ops odp_regions_param_ops = {
	.set = odp_param_set_regions,
	.get = param_get_uint,
};

static const struct kernel_param_ops odp_ring_param_ops = {
	.set = odp_param_set_ring,
	.get = param_get_uint,
};

module_param_cb(max_regions, &odp_regions_param_ops, &max_regions, 0644);
MODULE_PARM_DESC(max_regions,
		 "Regions per process (1..1048576, default 4096); applies to processes that open the device afterwards");
module_param_cb(ring_entries, &odp_ring_param_ops, &ring_entries, 0644);
MODULE_PARM_DESC(ring_entries,
		 "Event ring slots per process, a power of two (16..1048576, default 4096); applies to processes that open the device afterwards");
module_param(max_user_bytes, ulong, 0644);
MODULE_PARM_DESC(max_user_bytes,
		 "Kernel memory the per-process states of one user may hold, in bytes (0: no limit, default 256 MiB); checked when a process opens the device");

/* Counter indices, in the order of struct odp_mirror_counters. */
enum odp_counter {
	ODP_C_OPEN_FILES,
	ODP_C_MMS,
	ODP_C_REGIONS,
	ODP_C_FAULTS_IN_FLIGHT,
	ODP_C_REGISTRATIONS,
	ODP_C_UNREGISTRATIONS,
	ODP_C_FAULTS,
	ODP_C_FAULT_RETRIES,
	ODP_C_PAGES_FAULTED,
	ODP_C_SNAPSHOTS,
	ODP_C_INVALIDATIONS,
	ODP_C_INVALIDATIONS_NONBLOCKING,
	ODP_C_BY_REASON,
	ODP_C_EVENTS = ODP_C_BY_REASON + ODP_MIRROR_REASON_SLOTS,
	ODP_C_EVENTS_LOST,
	ODP_C_COUNT
};

/* Gauges must all be zero when no file is open. */
#define ODP_C_GAUGES	(ODP_C_FAULTS_IN_FLIGHT + 1)

static const char *const odp_counter_names[ODP_C_COUNT] = {
	[ODP_C_OPEN_FILES] = "open_files",
	[ODP_C_MMS] = "mms",
	[ODP_C_REGIONS] = "regions",
	[ODP_C_FAULTS_IN_FLIGHT] = "faults_in_flight",
	[ODP_C_REGISTRATIONS] = "registrations",
	[ODP_C_UNREGISTRATIONS] = "unregistrations",
	[ODP_C_FAULTS] = "faults",
	[ODP_C_FAULT_RETRIES] = "fault_retries",
	[ODP_C_PAGES_FAULTED] = "pages_faulted",
	[ODP_C_SNAPSHOTS] = "snapshots",
	[ODP_C_INVALIDATIONS] = "invalidations",
	[ODP_C_INVALIDATIONS_NONBLOCKING] = "invalidations_nonblocking",
	[ODP_C_BY_REASON + 0] = "invalidations_reason0",
	[ODP_C_BY_REASON + ODP_MIRROR_REASON_UNMAP] = "invalidations_unmap",
	[ODP_C_BY_REASON + ODP_MIRROR_REASON_CLEAR] = "invalidations_clear",
	[ODP_C_BY_REASON + ODP_MIRROR_REASON_PROTECTION] = "invalidations_protection",
	[ODP_C_BY_REASON + ODP_MIRROR_REASON_MIGRATION] = "invalidations_migration",
	[ODP_C_BY_REASON + ODP_MIRROR_REASON_TEARDOWN] = "invalidations_teardown",
	[ODP_C_BY_REASON + ODP_MIRROR_REASON_OTHER] = "invalidations_other",
	[ODP_C_BY_REASON + 7] = "invalidations_reason7",
	[ODP_C_EVENTS] = "events",
	[ODP_C_EVENTS_LOST] = "events_lost",
};

struct odp_counters {
	atomic64_t c[ODP_C_COUNT];
};

/*
 * What the states of one user (real uid of the opener) hold; a state stays
 * charged to its opener until freed, wherever its files went (passed over a
 * socket, kept over exec).  Under odp_mms_lock.
 */
struct odp_user {
	struct list_head node;		/* in odp_users */
	kuid_t uid;
	unsigned long bytes;
	unsigned int mms;
};

struct odp_mm {
	struct kref kref;
	struct list_head node;		/* in odp_mms, under odp_mms_lock */
	struct mm_struct *mm;		/* mmgrab()ed */
	u64 serial;			/* name in debugfs */
	struct odp_user *user;		/* charged @charge bytes */
	unsigned long charge;

	struct mutex lock;		/* regions, slots */
	struct xarray regions;		/* id -> struct odp_region */
	u32 next_id;
	unsigned long *slots;		/* generation slots in use */
	u32 max_regions;

	u64 *generations;		/* vmalloc_user(), mapped read-only */
	size_t generations_size;

	spinlock_t ring_lock;		/* event producers */
	struct odp_mirror_ring_header *ring;	/* vmalloc_user(), mapped read-only */
	struct odp_mirror_event *events;	/* inside ring */
	size_t ring_size;
	u32 ring_entries;
	struct odp_mirror_ring_consumer *consumer; /* vmalloc_user(), user-writable */
	wait_queue_head_t wq;

	struct odp_counters counters;
};

struct odp_region {
	struct mmu_interval_notifier notifier;
	struct kref kref;
	struct odp_mm *omm;		/* holds a reference */
	const struct file *owner;	/* the file that registered it; compared only */
	struct list_head kill_node;	/* private list of odp_release() */
	unsigned long start;
	unsigned long end;
	u64 cookie;
	u32 id;
	u32 slot;
	spinlock_t lock;		/* live, generations[slot], commit vs invalidate */
	bool live;			/* published and not yet unregistered */
};

static DEFINE_MUTEX(odp_mms_lock);
static LIST_HEAD(odp_mms);
static LIST_HEAD(odp_users);
static u64 odp_mm_serial;
static struct odp_counters odp_global;
static struct dentry *odp_debugfs_dir;

/*
 * Test hooks, root-only in debugfs (zero: off).  They widen race windows so
 * that the guest tests fail every time instead of by luck:
 *  inject_drop_hold      while set, a dropped event stops between reading the
 *                        consumer's tail and counting itself lost, until the
 *                        knob is cleared (it spins with the ring lock held,
 *                        so at most ODP_DROP_HOLD_MAX_MS);
 *  drops_held            (read-only) dropped events stopped there now, so a
 *                        test acts while one is held, not after a guess;
 *  inject_retry_ms       FAULT/SNAPSHOT batches see their result invalidated
 *                        until they have been retrying for this long;
 *  inject_retry_budget_ms  replaces a call's retry budget of
 *                        ODP_FAULT_TIMEOUT_MS, so that a test can make a
 *                        signal the only way out of a retrying call.
 * notifier_inserts counts interval notifiers ever inserted (debugfs only).
 */
static u32 odp_inject_drop_hold;
static atomic_t odp_drops_held;
/* Below the soft-lockup watchdog's 20 s: a forgotten knob only delays. */
#define ODP_DROP_HOLD_MAX_MS 10000
static u32 odp_inject_retry_ms;
static u32 odp_inject_retry_budget_ms;
static atomic64_t odp_notifier_inserts;

static void odp_count(struct odp_mm *omm, enum odp_counter idx, s64 delta)
{
	atomic64_add(delta, &omm->counters.c[idx]);
	atomic64_add(delta, &odp_global.c[idx]);
}

/* ---- per-user limit ---------------------------------------------------- */

/* Charge @bytes to @uid, within max_user_bytes (EDQUOT beyond). */
static struct odp_user *odp_user_charge(kuid_t uid, unsigned long bytes)
{
	unsigned long limit = READ_ONCE(max_user_bytes);
	struct odp_user *user;

	lockdep_assert_held(&odp_mms_lock);
	list_for_each_entry(user, &odp_users, node) {
		if (uid_eq(user->uid, uid))
			goto found;
	}
	user = kzalloc(sizeof(*user), GFP_KERNEL_ACCOUNT);
	if (!user)
		return ERR_PTR(-ENOMEM);
	user->uid = uid;
	list_add(&user->node, &odp_users);
found:
	if (limit && (bytes > limit || user->bytes > limit - bytes)) {
		pr_warn_ratelimited("uid %u: a new mirror needs %lu bytes and %u mirrors hold %lu: over max_user_bytes=%lu (EDQUOT); close mirrors or raise /sys/module/odp_mirror/parameters/max_user_bytes\n",
				    from_kuid(&init_user_ns, uid), bytes, user->mms,
				    user->bytes, limit);
		if (!user->mms) {
			list_del(&user->node);
			kfree(user);
		}
		return ERR_PTR(-EDQUOT);
	}
	user->bytes += bytes;
	user->mms++;
	return user;
}

static void odp_user_uncharge(struct odp_user *user, unsigned long bytes)
{
	lockdep_assert_held(&odp_mms_lock);
	user->bytes -= bytes;
	if (!--user->mms) {
		list_del(&user->node);
		kfree(user);
	}
}

/* ---- per-process state ------------------------------------------------- */

/*
 * Zeroed memory that gets mapped into the process: charged to the opener's
 * memory cgroup, and failing (instead of OOM-killing) at the cgroup's limit.
 */
static void *odp_area_alloc(size_t size)
{
	return __vmalloc(size, GFP_KERNEL_ACCOUNT | __GFP_ZERO |
			 __GFP_RETRY_MAYFAIL | __GFP_NOWARN);
}

/* Called under odp_mms_lock. */
static struct odp_mm *odp_mm_create(struct mm_struct *mm)
{
	struct odp_mm *omm = kzalloc(sizeof(*omm), GFP_KERNEL_ACCOUNT);
	struct odp_user *user;
	size_t ring_bytes;

	if (!omm)
		return ERR_PTR(-ENOMEM);
	kref_init(&omm->kref);
	mutex_init(&omm->lock);
	xa_init_flags(&omm->regions, XA_FLAGS_ALLOC1 | XA_FLAGS_ACCOUNT);
	spin_lock_init(&omm->ring_lock);
	init_waitqueue_head(&omm->wq);
	omm->max_regions = READ_ONCE(max_regions);
	omm->ring_entries = READ_ONCE(ring_entries);
	omm->generations_size = PAGE_ALIGN(omm->max_regions * sizeof(u64));
	ring_bytes = ODP_MIRROR_RING_EVENTS_OFFSET +
		     (size_t)omm->ring_entries * sizeof(struct odp_mirror_event);
	omm->ring_size = PAGE_ALIGN(ring_bytes);

	/* Everything the state can ever hold, its full region table included. */
	omm->charge = sizeof(*omm) + BITS_TO_LONGS(omm->max_regions) * sizeof(long) +
		      omm->generations_size + omm->ring_size + PAGE_SIZE +
		      (unsigned long)omm->max_regions * sizeof(struct odp_region);
	user = odp_user_charge(current_uid(), omm->charge);
	if (IS_ERR(user)) {
		kfree(omm);
		return ERR_CAST(user);
	}
	omm->user = user;

	omm->slots = bitmap_zalloc(omm->max_regions, GFP_KERNEL_ACCOUNT);
	omm->generations = odp_area_alloc(omm->generations_size);
	omm->ring = odp_area_alloc(omm->ring_size);
	omm->consumer = odp_area_alloc(PAGE_SIZE);
	if (!omm->slots || !omm->generations || !omm->ring || !omm->consumer) {
		pr_warn_ratelimited("uid %u: no memory for a mirror's %zu-byte event ring and %zu-byte generation array (memory cgroup limit? lower the ring_entries and max_regions parameters)\n",
				    from_kuid(&init_user_ns, user->uid), omm->ring_size,
				    omm->generations_size);
		odp_user_uncharge(user, omm->charge);
		bitmap_free(omm->slots);
		vfree(omm->generations);
		vfree(omm->ring);
		vfree(omm->consumer);
		kfree(omm);
		return ERR_PTR(-ENOMEM);
	}
	omm->events = (void *)omm->ring + ODP_MIRROR_RING_EVENTS_OFFSET;
	omm->ring->entries = omm->ring_entries;

	mmgrab(mm);
	omm->mm = mm;
	atomic64_set(&omm->counters.c[ODP_C_MMS], 1);
	atomic64_inc(&odp_global.c[ODP_C_MMS]);
	return omm;
}

/* Runs when the last file and the last region are gone: no page tables. */
static void odp_mm_free(struct kref *kref)
{
	struct odp_mm *omm = container_of(kref, struct odp_mm, kref);

	mutex_lock(&odp_mms_lock);
	list_del(&omm->node);
	odp_user_uncharge(omm->user, omm->charge);
	mutex_unlock(&odp_mms_lock);

	WARN_ON(!xa_empty(&omm->regions));
	xa_destroy(&omm->regions);
	bitmap_free(omm->slots);
	vfree(omm->generations);
	vfree(omm->ring);
	vfree(omm->consumer);
	mmdrop(omm->mm);
	atomic64_dec(&odp_global.c[ODP_C_MMS]);
	kfree(omm);
}

static void odp_mm_put(struct odp_mm *omm)
{
	kref_put(&omm->kref, odp_mm_free);
}

/* The odp_mm of @mm with a new reference, created if none is alive. */
static struct odp_mm *odp_mm_get(struct mm_struct *mm)
{
	struct odp_mm *omm;

	mutex_lock(&odp_mms_lock);
	list_for_each_entry(omm, &odp_mms, node) {
		/* A zero count means odp_mm_free() is about to unlink it. */
		if (omm->mm == mm && kref_get_unless_zero(&omm->kref))
			goto out;
	}
	omm = odp_mm_create(mm);
	if (!IS_ERR(omm)) {
		omm->serial = ++odp_mm_serial;
		list_add(&omm->node, &odp_mms);
	}
out:
	mutex_unlock(&odp_mms_lock);
	return omm;
}

/* ---- events ------------------------------------------------------------ */

static u16 odp_reason(const struct mmu_notifier_range *range)
{
	/* Once the last user is gone every invalidation is part of exit. */
	if (!mmu_notifier_range_blockable(range) ||
	    atomic_read(&range->mm->mm_users) == 0)
		return ODP_MIRROR_REASON_TEARDOWN;
	switch (range->event) {
	case MMU_NOTIFY_UNMAP:
		return ODP_MIRROR_REASON_UNMAP;
	case MMU_NOTIFY_CLEAR:
		return ODP_MIRROR_REASON_CLEAR;
	case MMU_NOTIFY_PROTECTION_VMA:
	case MMU_NOTIFY_PROTECTION_PAGE:
		return ODP_MIRROR_REASON_PROTECTION;
	case MMU_NOTIFY_MIGRATE:
		return ODP_MIRROR_REASON_MIGRATION;
	case MMU_NOTIFY_RELEASE:
		return ODP_MIRROR_REASON_TEARDOWN;
	default:
		return ODP_MIRROR_REASON_OTHER;
	}
}

/* The inject_drop_hold test hook: a busy wait, the caller holds a spinlock. */
static void odp_hold_drop(void)
{
	unsigned int waited_ms = 0;

	atomic_inc(&odp_drops_held);
	while (READ_ONCE(odp_inject_drop_hold) && waited_ms++ < ODP_DROP_HOLD_MAX_MS)
		mdelay(1);
	atomic_dec(&odp_drops_held);
}

/* Queue @ev, or count it lost if the reader is entries behind.  Never blocks. */
static void odp_ring_push(struct odp_mm *omm, struct odp_mirror_event *ev)
{
	struct odp_mirror_ring_header *hdr = omm->ring;
	u64 head, tail;

	spin_lock(&omm->ring_lock);
	head = hdr->head;
	/* Pairs with the reader's release of tail: its reads of the slot are done. */
	tail = smp_load_acquire(&omm->consumer->tail);
	if (head - tail >= omm->ring_entries) {
		/* Full, or a bogus tail from userspace: drop, never wait. */
		if (READ_ONCE(odp_inject_drop_hold))
			odp_hold_drop();
		/* Pairs with the reader's acquire of lost. */
		smp_store_release(&hdr->lost, hdr->lost + 1);
		WRITE_ONCE(hdr->overflow, 1);
		odp_count(omm, ODP_C_EVENTS_LOST, 1);
	} else {
		ev->seq = head;
		omm->events[head & (omm->ring_entries - 1)] = *ev;
		WRITE_ONCE(hdr->overflow, 0);
		/* Publish: the reader's acquire of head sees the whole slot. */
		smp_store_release(&hdr->head, head + 1);
		odp_count(omm, ODP_C_EVENTS, 1);
	}
	spin_unlock(&omm->ring_lock);
	/*
	 * A drop wakes too: the reader may have caught up since we read its
	 * tail, and must learn of the loss (ODP_MIRROR_CONSUMER_POLL_LOST).
	 * wq_has_sleeper()'s full barrier pairs with the one in odp_poll().
	 */
	if (wq_has_sleeper(&omm->wq))
		wake_up_interruptible_poll(&omm->wq, EPOLLIN | EPOLLRDNORM);
}

/*
 * The mapping under the region changes.  Only marks it stale and queues an
 * event: takes spinlocks, never sleeps, never waits on userspace, so it is
 * the same code whether or not the range is blockable.
 */
static bool odp_region_invalidate(struct mmu_interval_notifier *mni,
				  const struct mmu_notifier_range *range,
				  unsigned long cur_seq)
{
	struct odp_region *region = container_of(mni, struct odp_region, notifier);
	struct odp_mm *omm = region->omm;
	bool blockable = mmu_notifier_range_blockable(range);
	struct odp_mirror_event ev = {};
	u64 generation;

	spin_lock(&region->lock);
	mmu_interval_set_seq(mni, cur_seq);
	if (!region->live) {
		spin_unlock(&region->lock);
		return true;
	}
	generation = omm->generations[region->slot] + 1;
	/* Pairs with the reader's acquire load of its slot (see the uapi header). */
	smp_store_release(&omm->generations[region->slot], generation);

	ev.reason = odp_reason(range);
	ev.flags = blockable ? 0 : ODP_MIRROR_EVENT_NONBLOCKING;
	ev.cookie = region->cookie;
	ev.start = max(range->start, region->start);
	ev.end = min(range->end, region->end);
	ev.generation = generation;
	ev.region_id = region->id;
	ev.slot = region->slot;
	/* Under region->lock so a region's events are queued in generation order. */
	odp_ring_push(omm, &ev);
	spin_unlock(&region->lock);

	odp_count(omm, ODP_C_INVALIDATIONS, 1);
	odp_count(omm, ODP_C_BY_REASON + ev.reason, 1);
	if (!blockable)
		odp_count(omm, ODP_C_INVALIDATIONS_NONBLOCKING, 1);
	return true;
}

static const struct mmu_interval_notifier_ops odp_region_ops = {
	.invalidate = odp_region_invalidate,
};

/* ---- regions ----------------------------------------------------------- */

static void odp_region_free(struct kref *kref)
{
	struct odp_region *region = container_of(kref, struct odp_region, kref);
	struct odp_mm *omm = region->omm;

	/* Waits for a callback still running on another CPU. */
	mmu_interval_notifier_remove(&region->notifier);
	kfree(region);
	odp_mm_put(omm);
}

static void odp_region_put(struct odp_region *region)
{
	kref_put(&region->kref, odp_region_free);
}

/* Look up @id with a reference for a FAULT/SNAPSHOT (ENOENT, EINTR). */
static struct odp_region *odp_region_get(struct odp_mm *omm, u32 id)
{
	struct odp_region *region;

	if (mutex_lock_killable(&omm->lock))
		return ERR_PTR(-EINTR);
	region = xa_load(&omm->regions, id);
	if (region)
		kref_get(&region->kref);
	mutex_unlock(&omm->lock);
	return region ?: ERR_PTR(-ENOENT);
}

/*
 * Take the region out of the id table (caller holds omm->lock and drops the
 * table's reference afterwards).  Its generation moves on so that cached
 * translations fail their check, and its slot becomes free.
 */
static void odp_region_kill(struct odp_mm *omm, struct odp_region *region)
{
	lockdep_assert_held(&omm->lock);
	xa_erase(&omm->regions, region->id);
	spin_lock(&region->lock);
	region->live = false;
	/* Pairs with the reader's acquire load of its slot. */
	smp_store_release(&omm->generations[region->slot],
			  omm->generations[region->slot] + 1);
	spin_unlock(&region->lock);
	clear_bit(region->slot, omm->slots);
	odp_count(omm, ODP_C_REGIONS, -1);
	odp_count(omm, ODP_C_UNREGISTRATIONS, 1);
}

/* Page aligned, non-empty, no wrap, inside the user address space. */
static int odp_check_range(struct mm_struct *mm, u64 start, u64 length, u64 *end)
{
	if (!length || !PAGE_ALIGNED(start) || !PAGE_ALIGNED(length))
		return -EINVAL;
	if (check_add_overflow(start, length, end))
		return -EOVERFLOW;
	if (*end > mm->task_size)
		return -ERANGE;
	return 0;
}

/* ---- argument copying -------------------------------------------------- */

/*
 * Copy an argument struct whose first field is its size: shorter than ABI
 * v1 is EINVAL, longer is accepted only if the extra bytes are zero (E2BIG).
 */
static int odp_copy_arg(void *karg, size_t ksize, const void __user *uarg,
			u32 *usize)
{
	if (get_user(*usize, (const u32 __user *)uarg))
		return -EFAULT;
	if (*usize < ksize)
		return -EINVAL;
	if (*usize > ODP_MAX_ARG_SIZE)
		return -E2BIG;
	return copy_struct_from_user(karg, ksize, uarg, *usize);
}

static int odp_return_arg(void __user *uarg, const void *karg, size_t ksize)
{
	return copy_to_user(uarg, karg, ksize) ? -EFAULT : 0;
}

#define odp_reserved_set(field) memchr_inv(field, 0, sizeof(field))

/* ---- ioctls ------------------------------------------------------------ */

static long odp_ioctl_query(struct odp_mm *omm, void __user *uarg)
{
	struct odp_mirror_query q;
	u32 usize;
	int ret = odp_copy_arg(&q, sizeof(q), uarg, &usize);

	if (ret)
		return ret;
	if (q.abi_version || q.features || q.page_size || q.max_regions ||
	    q.ring_entries || q.event_size || q.ring_mmap_size ||
	    q.consumer_mmap_size || q.generations_mmap_size ||
	    q.max_fault_bytes || q.address_limit || odp_reserved_set(q.reserved))
		return -EINVAL;
	q.abi_version = ODP_MIRROR_ABI_VERSION;
	q.features = ODP_MIRROR_FEATURE_EVENT_RING | ODP_MIRROR_FEATURE_GENERATIONS |
		     ODP_MIRROR_FEATURE_FAULT | ODP_MIRROR_FEATURE_SNAPSHOT |
		     ODP_MIRROR_FEATURE_STATS | ODP_MIRROR_FEATURE_POLL |
		     ODP_MIRROR_FEATURE_POLL_LOST;
	q.page_size = PAGE_SIZE;
	q.max_regions = omm->max_regions;
	q.ring_entries = omm->ring_entries;
	q.event_size = sizeof(struct odp_mirror_event);
	q.ring_mmap_size = omm->ring_size;
	q.consumer_mmap_size = PAGE_SIZE;
	q.generations_mmap_size = omm->generations_size;
	q.max_fault_bytes = ODP_MAX_FAULT_BYTES;
	q.address_limit = omm->mm->task_size;
	return odp_return_arg(uarg, &q, sizeof(q));
}

static long odp_ioctl_register(struct odp_mm *omm, struct file *file,
			       void __user *uarg)
{
	struct odp_mirror_register reg;
	struct odp_region *region;
	unsigned long slot;
	u64 end;
	u32 usize, id;
	int ret = odp_copy_arg(&reg, sizeof(reg), uarg, &usize);

	if (ret)
		return ret;
	if (reg.flags || reg.id || reg.slot || reg.generation ||
	    odp_reserved_set(reg.reserved))
		return -EINVAL;
	ret = odp_check_range(omm->mm, reg.start, reg.length, &end);
	if (ret)
		return ret;

	/* Claim a slot first: a process at its limit costs no notifier. */
	if (mutex_lock_killable(&omm->lock))
		return -EINTR;
	slot = find_first_zero_bit(omm->slots, omm->max_regions);
	if (slot < omm->max_regions)
		set_bit(slot, omm->slots);
	mutex_unlock(&omm->lock);
	if (slot >= omm->max_regions) {
		pr_debug("region limit %u reached (module parameter max_regions)\n",
			 omm->max_regions);
		return -ENOSPC;
	}

	region = kzalloc(sizeof(*region), GFP_KERNEL_ACCOUNT);
	if (!region) {
		clear_bit(slot, omm->slots);
		return -ENOMEM;
	}
	kref_init(&region->kref);
	spin_lock_init(&region->lock);
	region->start = reg.start;
	region->end = end;
	region->cookie = reg.cookie;
	region->owner = file;
	region->slot = slot;
	kref_get(&omm->kref);
	region->omm = omm;

	/*
	 * Insert before publishing: callbacks before that only advance the
	 * notifier sequence (live is false).  The caller's mm is current->mm,
	 * so it has users, as insertion requires.
	 */
	ret = mmu_interval_notifier_insert(&region->notifier, omm->mm,
					   region->start, end - region->start,
					   &odp_region_ops);
	if (ret) {
		clear_bit(slot, omm->slots);
		kfree(region);
		odp_mm_put(omm);
		return ret;
	}
	atomic64_inc(&odp_notifier_inserts);

	/* Never held across a user access, so a plain lock is short. */
	mutex_lock(&omm->lock);
	ret = xa_alloc_cyclic(&omm->regions, &id, region, XA_LIMIT(1, INT_MAX),
			      &omm->next_id, GFP_KERNEL_ACCOUNT);
	if (ret < 0) {
		mutex_unlock(&omm->lock);
		clear_bit(slot, omm->slots);
		odp_region_put(region);
		return ret;
	}
	spin_lock(&region->lock);
	region->id = id;
	region->live = true;
	reg.generation = omm->generations[slot];
	spin_unlock(&region->lock);
	odp_count(omm, ODP_C_REGIONS, 1);
	odp_count(omm, ODP_C_REGISTRATIONS, 1);
	mutex_unlock(&omm->lock);

	/*
	 * After unlocking: a result page that stalls (userfaultfd, FUSE) stalls
	 * this call only, never the other ioctls or the close of the process.
	 */
	reg.id = id;
	reg.slot = slot;
	ret = odp_return_arg(uarg, &reg, sizeof(reg));
	if (ret) {
		/* Nobody learnt the id (unless it was guessed and removed). */
		mutex_lock(&omm->lock);
		if (xa_load(&omm->regions, id) != region) {
			mutex_unlock(&omm->lock);
			return ret;
		}
		odp_region_kill(omm, region);
		mutex_unlock(&omm->lock);
		odp_region_put(region);
	}
	return ret;
}

static long odp_ioctl_unregister(struct odp_mm *omm, void __user *uarg)
{
	struct odp_mirror_unregister unreg;
	struct odp_region *region;
	u32 usize;
	int ret = odp_copy_arg(&unreg, sizeof(unreg), uarg, &usize);

	if (ret)
		return ret;
	if (odp_reserved_set(unreg.reserved))
		return -EINVAL;
	if (mutex_lock_killable(&omm->lock))
		return -EINTR;
	region = xa_load(&omm->regions, unreg.id);
	if (!region) {
		mutex_unlock(&omm->lock);
		return -ENOENT;
	}
	odp_region_kill(omm, region);
	mutex_unlock(&omm->lock);
	odp_region_put(region);
	return 0;
}

/* One FAULT or SNAPSHOT walk over part of a region. */
struct odp_walk {
	struct odp_region *region;
	unsigned long default_flags;	/* HMM_PFN_REQ_* */
	unsigned long *pfns;		/* ODP_BATCH_PAGES */
	u8 *map;			/* ODP_BATCH_PAGES, SNAPSHOT only */
	u8 __user *umap;		/* SNAPSHOT output, may be NULL */
	unsigned long base;		/* address of umap[0] */
	u64 present;
	u64 writable;
	u64 retries;
	unsigned long retry_jiffies;	/* spent on attempts thrown away */
	u64 generation;
	bool have_generation;
};

/*
 * hmm_range_fault() over [start, end) in the read_begin/retry loop.  The
 * result is committed under region->lock only if no invalidation ran since
 * read_begin; otherwise it is stale and the batch starts over.
 */
static int odp_walk_batch(struct odp_walk *w, unsigned long start,
			  unsigned long end)
{
	struct odp_region *region = w->region;
	struct odp_mm *omm = region->omm;
	unsigned long batch_start = jiffies, attempt = jiffies;
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	struct hmm_range range = {
		.notifier = &region->notifier,
		.start = start,
		.end = end,
		.hmm_pfns = w->pfns,
		.default_flags = w->default_flags,
		.pfn_flags_mask = 0,
	};
	unsigned long i;
	int ret;

	for (;;) {
		if (fatal_signal_pending(current))
			return -EINTR;
		range.notifier_seq = mmu_interval_read_begin(&region->notifier);
		if (mmap_read_lock_killable(omm->mm))
			return -EINTR;
		ret = hmm_range_fault(&range);
		mmap_read_unlock(omm->mm);
		if (ret == -EBUSY)
			goto retry;
		if (ret)
			return ret;

		spin_lock(&region->lock);
		if (!region->live) {
			spin_unlock(&region->lock);
			return -ENOENT;
		}
		if (mmu_interval_read_retry(&region->notifier, range.notifier_seq)) {
			spin_unlock(&region->lock);
			goto retry;
		}
		if (READ_ONCE(odp_inject_retry_ms) &&
		    time_before(jiffies, batch_start +
				msecs_to_jiffies(READ_ONCE(odp_inject_retry_ms)))) {
			spin_unlock(&region->lock);
			usleep_range(1000, 2000);
			goto retry;
		}
		/*
		 * Any later invalidation of what was walked so far moves the
		 * generation past this value.
		 */
		if (!w->have_generation) {
			w->generation = omm->generations[region->slot];
			w->have_generation = true;
		}
		for (i = 0; i < npages; i++) {
			unsigned long pfn = w->pfns[i];
			u8 bits = 0;

			if ((pfn & HMM_PFN_VALID) && !(pfn & HMM_PFN_ERROR)) {
				bits = ODP_MIRROR_PAGE_PRESENT;
				w->present++;
				if (pfn & HMM_PFN_WRITE) {
					bits |= ODP_MIRROR_PAGE_WRITABLE;
					w->writable++;
				}
			}
			if (w->map)
				w->map[i] = bits;
		}
		spin_unlock(&region->lock);
		break;
retry:
		/*
		 * One budget per call, not per batch: the time of every attempt
		 * thrown away adds up (consecutive, so it is the call's whole
		 * retrying time).  Only a retry is interruptible: progress is
		 * never undone by a signal.
		 */
		w->retries++;
		w->retry_jiffies += jiffies - attempt;
		attempt = jiffies;
		if (w->retry_jiffies > msecs_to_jiffies(READ_ONCE(odp_inject_retry_budget_ms) ?:
							ODP_FAULT_TIMEOUT_MS))
			return -EBUSY;
		if (signal_pending(current))
			return -EINTR;
		cond_resched();
	}
	if (w->umap && copy_to_user(w->umap + ((start - w->base) >> PAGE_SHIFT),
				    w->map, npages))
		return -EFAULT;
	return 0;
}

/*
 * Walk [start, start + length) of region @id in batches, with references on
 * the region (and through it the odp_mm) and on the address space's users.
 */
static int odp_walk(struct odp_mm *omm, u32 id, u64 start, u64 length,
		    struct odp_walk *w)
{
	struct odp_region *region;
	unsigned long addr, next, end;
	u64 end64;
	int ret;

	ret = odp_check_range(omm->mm, start, length, &end64);
	if (ret)
		return ret;
	if (length > ODP_MAX_FAULT_BYTES)
		return -EINVAL;
	region = odp_region_get(omm, id);
	if (IS_ERR(region))
		return PTR_ERR(region);
	if (start < region->start || end64 > region->end) {
		ret = -ERANGE;
		goto out_region;
	}
	end = end64;
	w->region = region;
	w->base = start;
	w->pfns = kmalloc_array(ODP_BATCH_PAGES, sizeof(*w->pfns), GFP_KERNEL);
	if (w->umap)
		w->map = kmalloc(ODP_BATCH_PAGES, GFP_KERNEL);
	if (!w->pfns || (w->umap && !w->map)) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (!mmget_not_zero(omm->mm)) {
		ret = -ESRCH;
		goto out_free;
	}
	odp_count(omm, ODP_C_FAULTS_IN_FLIGHT, 1);
	for (addr = start; addr < end; addr = next) {
		next = end - addr > ODP_BATCH_PAGES * PAGE_SIZE ?
		       addr + ODP_BATCH_PAGES * PAGE_SIZE : end;
		ret = odp_walk_batch(w, addr, next);
		if (ret)
			break;
		cond_resched();
	}
	odp_count(omm, ODP_C_FAULT_RETRIES, w->retries);
	odp_count(omm, ODP_C_FAULTS_IN_FLIGHT, -1);
	mmput(omm->mm);
out_free:
	kfree(w->map);
	kfree(w->pfns);
out_region:
	odp_region_put(region);
	return ret;
}

static long odp_ioctl_fault(struct odp_mm *omm, void __user *uarg)
{
	struct odp_mirror_fault f;
	struct odp_walk w = {};
	u32 usize;
	int ret = odp_copy_arg(&f, sizeof(f), uarg, &usize);

	if (ret)
		return ret;
	if ((f.flags & ~ODP_MIRROR_FAULT_WRITE) || f.reserved0 ||
	    f.pages_present || f.generation || odp_reserved_set(f.reserved))
		return -EINVAL;
	w.default_flags = HMM_PFN_REQ_FAULT;
	if (f.flags & ODP_MIRROR_FAULT_WRITE)
		w.default_flags |= HMM_PFN_REQ_WRITE;
	ret = odp_walk(omm, f.id, f.start, f.length, &w);
	if (ret)
		return ret;
	odp_count(omm, ODP_C_FAULTS, 1);
	odp_count(omm, ODP_C_PAGES_FAULTED, w.present);
	f.pages_present = w.present;
	f.generation = w.generation;
	return odp_return_arg(uarg, &f, sizeof(f));
}

static long odp_ioctl_snapshot(struct odp_mm *omm, void __user *uarg)
{
	struct odp_mirror_snapshot snap;
	struct odp_walk w = {};
	u32 usize;
	int ret = odp_copy_arg(&snap, sizeof(snap), uarg, &usize);

	if (ret)
		return ret;
	if (snap.present || snap.writable || snap.generation ||
	    odp_reserved_set(snap.reserved))
		return -EINVAL;
	w.umap = u64_to_user_ptr(snap.pages);
	ret = odp_walk(omm, snap.id, snap.start, snap.length, &w);
	if (ret)
		return ret;
	odp_count(omm, ODP_C_SNAPSHOTS, 1);
	snap.present = w.present;
	snap.writable = w.writable;
	snap.generation = w.generation;
	return odp_return_arg(uarg, &snap, sizeof(snap));
}

static void odp_fill_counters(struct odp_mirror_counters *out,
			      const struct odp_counters *in)
{
	u64 *slots = (u64 *)out;
	int i;

	BUILD_BUG_ON(offsetof(struct odp_mirror_counters, faults_in_flight) !=
		     ODP_C_FAULTS_IN_FLIGHT * sizeof(u64));
	BUILD_BUG_ON(offsetof(struct odp_mirror_counters, invalidations_by_reason) !=
		     ODP_C_BY_REASON * sizeof(u64));
	BUILD_BUG_ON(offsetof(struct odp_mirror_counters, events_lost) !=
		     ODP_C_EVENTS_LOST * sizeof(u64));
	BUILD_BUG_ON(offsetof(struct odp_mirror_counters, reserved) !=
		     ODP_C_COUNT * sizeof(u64));
	memset(out, 0, sizeof(*out));
	for (i = 0; i < ODP_C_COUNT; i++)
		slots[i] = atomic64_read(&in->c[i]);
}

static long odp_ioctl_stats(struct odp_mm *omm, void __user *uarg)
{
	struct odp_mirror_stats *stats;
	u32 usize;
	long ret;

	stats = kzalloc(sizeof(*stats), GFP_KERNEL);
	if (!stats)
		return -ENOMEM;
	ret = odp_copy_arg(stats, sizeof(*stats), uarg, &usize);
	if (ret)
		goto out;
	if (stats->flags ||
	    memchr_inv(&stats->process, 0, sizeof(stats->process)) ||
	    memchr_inv(&stats->module, 0, sizeof(stats->module))) {
		ret = -EINVAL;
		goto out;
	}
	odp_fill_counters(&stats->process, &omm->counters);
	odp_fill_counters(&stats->module, &odp_global);
	ret = odp_return_arg(uarg, stats, sizeof(*stats));
out:
	kfree(stats);
	return ret;
}

/* ---- file operations --------------------------------------------------- */

static int odp_open(struct inode *inode, struct file *file)
{
	struct odp_mm *omm;

	if (!current->mm)
		return -EINVAL;
	omm = odp_mm_get(current->mm);
	if (IS_ERR(omm))
		return PTR_ERR(omm);
	file->private_data = omm;
	odp_count(omm, ODP_C_OPEN_FILES, 1);
	return 0;
}

/* May run in any task (last fput): only drops references. */
static int odp_release(struct inode *inode, struct file *file)
{
	struct odp_mm *omm = file->private_data;
	struct odp_region *region, *tmp;
	unsigned long id;
	LIST_HEAD(dead);

	mutex_lock(&omm->lock);
	xa_for_each(&omm->regions, id, region) {
		if (region->owner != file)
			continue;
		odp_region_kill(omm, region);
		list_add(&region->kill_node, &dead);
	}
	mutex_unlock(&omm->lock);
	list_for_each_entry_safe(region, tmp, &dead, kill_node)
		odp_region_put(region);
	odp_count(omm, ODP_C_OPEN_FILES, -1);
	odp_mm_put(omm);
	return 0;
}

static long odp_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct odp_mm *omm = file->private_data;
	void __user *uarg = (void __user *)arg;

	if (_IOC_TYPE(cmd) != ODP_MIRROR_IOC_MAGIC)
		return -ENOTTY;
	/* Inherited over fork or passed over a socket: not this address space. */
	if (current->mm != omm->mm)
		return -EPERM;
	/* Dispatch on the number only: `size` inside the struct versions it. */
	switch (_IOC_NR(cmd)) {
	case _IOC_NR(ODP_MIRROR_IOC_QUERY):
		return odp_ioctl_query(omm, uarg);
	case _IOC_NR(ODP_MIRROR_IOC_REGISTER):
		return odp_ioctl_register(omm, file, uarg);
	case _IOC_NR(ODP_MIRROR_IOC_UNREGISTER):
		return odp_ioctl_unregister(omm, uarg);
	case _IOC_NR(ODP_MIRROR_IOC_FAULT):
		return odp_ioctl_fault(omm, uarg);
	case _IOC_NR(ODP_MIRROR_IOC_SNAPSHOT):
		return odp_ioctl_snapshot(omm, uarg);
	case _IOC_NR(ODP_MIRROR_IOC_STATS):
		return odp_ioctl_stats(omm, uarg);
	default:
		return -ENOTTY;
	}
}

static int odp_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct odp_mm *omm = file->private_data;
	unsigned long size = vma->vm_end - vma->vm_start;
	u64 offset = (u64)vma->vm_pgoff << PAGE_SHIFT;
	bool writable = false;
	unsigned long addr;
	size_t area_size;
	void *area;
	int ret;

	if (vma->vm_mm != omm->mm)
		return -EPERM;
	switch (offset) {
	case ODP_MIRROR_MMAP_RING:
		area = omm->ring;
		area_size = omm->ring_size;
		break;
	case ODP_MIRROR_MMAP_CONSUMER:
		area = omm->consumer;
		area_size = PAGE_SIZE;
		writable = true;
		break;
	case ODP_MIRROR_MMAP_GENERATIONS:
		area = omm->generations;
		area_size = omm->generations_size;
		break;
	default:
		return -EINVAL;
	}
	/* MAP_SHARED of a file opened read-only has VM_MAYSHARE only. */
	if (size > area_size || !(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (!writable) {
		if (vma->vm_flags & VM_WRITE)
			return -EACCES;
		/* No later mprotect(PROT_WRITE) either. */
		odp_vma_flags_mod(vma, 0, VM_MAYWRITE);
	}
	/*
	 * A fork child is another address space: it gets no copy, and VM_IO
	 * keeps madvise(MADV_DOFORK) from clearing VM_DONTCOPY (it also keeps
	 * get_user_pages() and hmm_range_fault() off these pages).
	 */
	odp_vma_flags_mod(vma, VM_IO | VM_DONTCOPY | VM_DONTEXPAND | VM_DONTDUMP, 0);
	for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE) {
		ret = vm_insert_page(vma, addr, vmalloc_to_page(area));
		if (ret)
			return ret;
		area += PAGE_SIZE;
	}
	return 0;
}

static __poll_t odp_poll(struct file *file, poll_table *wait)
{
	struct odp_mm *omm = file->private_data;

	if (current->mm != omm->mm)
		return EPOLLERR;
	poll_wait(file, &omm->wq, wait);
	/*
	 * Being on the wait queue must be visible before head and lost are
	 * read: pairs with wq_has_sleeper() in odp_ring_push(), so either the
	 * producer wakes us or we see what it stored.
	 */
	smp_mb();
	if (READ_ONCE(omm->ring->head) != READ_ONCE(omm->consumer->tail))
		return EPOLLIN | EPOLLRDNORM;
	if ((READ_ONCE(omm->consumer->flags) & ODP_MIRROR_CONSUMER_POLL_LOST) &&
	    READ_ONCE(omm->ring->lost) != READ_ONCE(omm->consumer->lost_seen))
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

static const struct file_operations odp_fops = {
	.owner = THIS_MODULE,
	.open = odp_open,
	.release = odp_release,
	.unlocked_ioctl = odp_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = odp_mmap,
	.poll = odp_poll,
	.llseek = noop_llseek,
};

static struct miscdevice odp_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = ODP_MIRROR_DEVICE_NAME,
	.fops = &odp_fops,
	.mode = 0666,
};

/* ---- debugfs ----------------------------------------------------------- */

static void odp_show_counters(struct seq_file *m, const char *prefix,
			      const struct odp_counters *c)
{
	int i;

	for (i = 0; i < ODP_C_COUNT; i++)
		seq_printf(m, "%s%s %lld\n", prefix, odp_counter_names[i],
			   (long long)atomic64_read(&c->c[i]));
}

static int odp_stats_show(struct seq_file *m, void *unused)
{
	struct odp_user *user;
	struct odp_mm *omm;
	char prefix[32];

	odp_show_counters(m, "module.", &odp_global);
	seq_printf(m, "module.notifier_inserts %lld\n",
		   (long long)atomic64_read(&odp_notifier_inserts));
	mutex_lock(&odp_mms_lock);
	list_for_each_entry(omm, &odp_mms, node) {
		snprintf(prefix, sizeof(prefix), "mm%llu.",
			 (unsigned long long)omm->serial);
		odp_show_counters(m, prefix, &omm->counters);
	}
	list_for_each_entry(user, &odp_users, node) {
		uid_t uid = from_kuid(&init_user_ns, user->uid);

		seq_printf(m, "user%u.bytes %lu\nuser%u.mms %u\n", uid,
			   user->bytes, uid, user->mms);
	}
	mutex_unlock(&odp_mms_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(odp_stats);

/* ---- module ------------------------------------------------------------ */

static int __init odp_init(void)
{
	int ret;

	BUILD_BUG_ON(sizeof(struct odp_mirror_event) != 64);
	BUILD_BUG_ON(sizeof(struct odp_mirror_ring_header) != 64);
	BUILD_BUG_ON(sizeof(struct odp_mirror_ring_header) > ODP_MIRROR_RING_EVENTS_OFFSET);
	BUILD_BUG_ON(sizeof(struct odp_mirror_ring_consumer) > PAGE_SIZE);
	BUILD_BUG_ON(ODP_MIRROR_RING_EVENTS_OFFSET % sizeof(struct odp_mirror_event));
	BUILD_BUG_ON(ODP_MIRROR_MMAP_CONSUMER % PAGE_SIZE ||
		     ODP_MIRROR_MMAP_GENERATIONS % PAGE_SIZE);

	ret = misc_register(&odp_misc);
	if (ret) {
		pr_err("cannot register /dev/%s: %d\n", ODP_MIRROR_DEVICE_NAME, ret);
		return ret;
	}
	/* Statistics stay available through the ioctl if debugfs is absent. */
	odp_debugfs_dir = debugfs_create_dir(KBUILD_MODNAME, NULL);
	debugfs_create_file("stats", 0444, odp_debugfs_dir, NULL, &odp_stats_fops);
	debugfs_create_u32("inject_drop_hold", 0600, odp_debugfs_dir,
			   &odp_inject_drop_hold);
	debugfs_create_atomic_t("drops_held", 0400, odp_debugfs_dir,
				&odp_drops_held);
	debugfs_create_u32("inject_retry_ms", 0600, odp_debugfs_dir,
			   &odp_inject_retry_ms);
	debugfs_create_u32("inject_retry_budget_ms", 0600, odp_debugfs_dir,
			   &odp_inject_retry_budget_ms);
	return 0;
}

static void __exit odp_exit(void)
{
	int i;

	debugfs_remove_recursive(odp_debugfs_dir);
	misc_deregister(&odp_misc);
	/* Every file is closed (they hold the module): gauges must be zero. */
	for (i = 0; i < ODP_C_GAUGES; i++) {
		s64 left = atomic64_read(&odp_global.c[i]);

		if (left)
			pr_err("leak: %lld %s left at unload\n", (long long)left,
			       odp_counter_names[i]);
	}
}

module_init(odp_init);
module_exit(odp_exit);

MODULE_DESCRIPTION("Per-process HMM mirror with invalidation events for on-demand paging emulation");
MODULE_AUTHOR("odp-layer");
MODULE_LICENSE("GPL");
