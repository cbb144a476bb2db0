/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel APIs odp_mirror.c uses that differ between the kernels it
 * supports (5.10 to 7.3).  Each difference names the release that changed
 * it; features are detected from the headers by Kbuild, not guessed from
 * LINUX_VERSION_CODE, so that distribution backports are honoured.
 */
#ifndef ODP_COMPAT_H
#define ODP_COMPAT_H

#include <linux/mm.h>

/*
 * 6.3 made vma->vm_flags read-only behind vm_flags_mod(), which also takes
 * care of the per-VMA lock; before it the flags are modified directly under
 * the mmap write lock.  Kbuild defines ODP_HAVE_VM_FLAGS_MOD.
 */
static inline void odp_vma_flags_mod(struct vm_area_struct *vma,
				     vm_flags_t set, vm_flags_t clear)
{
#ifdef ODP_HAVE_VM_FLAGS_MOD
	vm_flags_mod(vma, set, clear);
#else
	vma->vm_flags = (vma->vm_flags | set) & ~clear;
#endif
}

#endif /* ODP_COMPAT_H */
