#!/bin/bash
# Runs inside an odp-vm guest as root:
#   run-coherence.sh <kernel-glue build dir> <odp_coherence_tests> <odp_unit_tests> [gtest args...]
# Wherever odp_mirror.ko is built for the guest's kernel (5.10, 6.1, 6.12 and
# 7.3 once scripts/setup has their headers) loads it so that the
# emulated+module mode runs (and must work), runs every coherence case in
# this one guest on every RDMA device of it ($ODP_VM_DEVICES: rxe0, siw0),
# unloads the module and fails on a BUG/WARNING/Oops in the kernel log. Also runs the host unit tests of the mappings reader here, where
# the kernel decides its path (6.1: the text of /proc/self/maps; 6.12 and
# 7.3: the PROCMAP_QUERY ioctl).
set -u
kglue=$1
tests=$2
unit_tests=$3
shift 3
fail() {
    echo "run-coherence: FAIL: $*" >&2
    exit 1
}
[ -n "${ODP_VM_KERNEL:-}" ] || fail "ODP_VM_KERNEL is not set: run me through scripts/odp-vm"
[ -x "$tests" ] || fail "$tests is missing: build target odp_coherence_tests"

log_start=$(dmesg | wc -l)
ko=$kglue/$ODP_VM_KERNEL/odp_mirror.ko
export ODP_COHERENCE_MODULE=0
if [ -f "$ko" ]; then
    insmod "$ko" || fail "insmod $ko"
    for _ in $(seq 50); do [ -c /dev/odp_mirror ] && break; sleep 0.1; done
    [ -c /dev/odp_mirror ] || fail "/dev/odp_mirror did not appear after insmod"
    export ODP_COHERENCE_MODULE=1
else
    echo "run-coherence: no $ko (target odp_mirror_ko_${ODP_VM_KERNEL/./_} is not built: its headers are missing, see scripts/setup): emulated mode runs with userfaultfd only"
fi
# Pinned chunks and pinned MRs count against RLIMIT_MEMLOCK.
ulimit -l unlimited

# A 4 KiB path MTU (jumbo veth). rxe's native ODP on Linux 7.3 writes every
# packet that starts inside a page at the start of that page (all but the
# first packet of each page at the 1 KiB path MTU of a 1500-byte veth; the
# cases here use page-aligned buffers, whole at 4 KiB): data loss in the device
# itself, without any mapping change (NativeOdpDevice.* shows it with plain
# verbs at the default MTU; docs/compare.md, docs/sources.md). Coherence is
# about mapping changes, so the suite runs where the device moves bytes right.
# ODP_COHERENCE_MTU=default keeps the netdev's MTU (and shows the bug on 7.3).
if [ "${ODP_COHERENCE_MTU:-jumbo}" = jumbo ]; then
    "$(dirname "$(readlink -f "$0")")/../../../userspace/vm/rxe-mtu" 9000 ||
        fail "rxe0 did not take a 4 KiB path MTU"
fi

# The whole binary on the first device; on every other one (siw0) the cases
# that move data over it (the source cases do not touch a device).
status=0
first=1
for device in ${ODP_VM_DEVICES:-rxe0}; do
    echo "== coherence on $device"
    if [ "$first" = 1 ]; then
        ODP_COHERENCE_DEVICE=$device "$tests" "$@" || status=1
    else
        ODP_COHERENCE_DEVICE=$device "$tests" \
            --gtest_filter='Modes/Coherence.*:NativeOdpDevice.*:Emulated/ExposureChange.*' "$@" ||
            status=1
    fi
    first=0
done
[ -x "$unit_tests" ] || fail "$unit_tests is missing: build target odp_unit_tests"
"$unit_tests" --gtest_filter='*MemoryMap*' --gtest_brief=1 || status=1

if [ "$ODP_COHERENCE_MODULE" = 1 ]; then
    rmmod odp_mirror || fail "rmmod odp_mirror (a reference leaked?)"
fi
if dmesg | tail -n +"$((log_start + 1))" | grep -E 'BUG|WARNING|Oops|general protection|refcount_t' >&2; then
    fail "the kernel log shows the problems above"
fi
[ "$status" -eq 0 ] || fail "the tests failed (output above)"
echo "run-coherence: kernel $ODP_VM_KERNEL: all cases passed, kernel log clean"
