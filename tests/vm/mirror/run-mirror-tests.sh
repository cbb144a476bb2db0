#!/bin/bash
# Runs inside an odp-vm guest as root:
#   run-mirror-tests.sh <kernel-glue build dir> <gtest binary> <fuzzer> [gtest args...]
#   run-mirror-tests.sh --dkms <kernel-glue source dir> <gtest binary> <fuzzer> [gtest args...]
# Loads the odp_mirror.ko built for $ODP_VM_KERNEL (with --dkms: installs it
# through DKMS first, dkms-install.sh, and loads the installed copy with
# modprobe), runs the tests, then the hostile-use fuzzer for
# $ODP_MIRROR_FUZZ_SECONDS (default 60, 0 skips it; $ODP_MIRROR_FUZZ_SEED
# replays a run), checks that every module gauge is back to zero, unloads the
# module, and fails if the kernel log shows a BUG, WARNING, Oops, lockdep or
# KASAN report or a leak since the module was loaded.
set -u
dkms=0
if [ "$1" = --dkms ]; then
    dkms=1
    shift
fi
kglue=$1
tests=$2
fuzzer=$3
shift 3
fail() {
    echo "run-mirror-tests: FAIL: $*" >&2
    exit 1
}
[ -n "${ODP_VM_KERNEL:-}" ] || fail "ODP_VM_KERNEL is not set: run me through scripts/odp-vm"
[ -x "$tests" ] || fail "$tests is missing: build it first"
[ -x "$fuzzer" ] || fail "$fuzzer is missing: build it first"

log_start=$(dmesg | wc -l)
if [ "$dkms" = 1 ]; then
    "$(dirname "$(readlink -f "$0")")/dkms-install.sh" "$kglue" || fail "installing the module through DKMS"
    log_start=$(dmesg | wc -l)
    modprobe odp_mirror || fail "modprobe odp_mirror (installed by dkms)"
else
    ko=$kglue/$ODP_VM_KERNEL/odp_mirror.ko
    [ -f "$ko" ] || fail "$ko is missing: build target odp_mirror_ko_${ODP_VM_KERNEL/./_}"
    insmod "$ko" || fail "insmod $ko"
fi
for _ in $(seq 50); do [ -c /dev/odp_mirror ] && break; sleep 0.1; done
[ -c /dev/odp_mirror ] || fail "/dev/odp_mirror did not appear"
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
[ -r /sys/kernel/debug/odp_mirror/stats ] || fail "debugfs stats missing"
# cgroup v2 with the memory controller, for the accounting test.
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup ||
    fail "cannot mount cgroup2 on /sys/fs/cgroup"

# Swap on zram so that MADV_PAGEOUT can push anonymous pages out (optional:
# the pageout test skips with a reason without it).
if modprobe zram num_devices=1 2>/dev/null && [ -e /sys/block/zram0/disksize ]; then
    echo 64M >/sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null &&
        swapon /dev/zram0 || echo "run-mirror-tests: no zram swap, the pageout test will skip" >&2
fi

"$tests" "$@"
status=$?

fuzz_seconds=${ODP_MIRROR_FUZZ_SECONDS:-60}
fuzz_status=0
if [ "$fuzz_seconds" -gt 0 ]; then
    "$fuzzer" --seed "${ODP_MIRROR_FUZZ_SEED:-$(date +%s)}" --duration "$fuzz_seconds"
    fuzz_status=$?
fi

swapoff /dev/zram0 2>/dev/null
gauges=$(grep -E '^module\.(open_files|mms|regions|faults_in_flight) ' /sys/kernel/debug/odp_mirror/stats)
echo "$gauges" | awk '$2 != 0 { bad = 1 } END { exit bad }' ||
    { echo "$gauges" >&2 && fail "module gauges not zero after the tests"; }
if grep '^user' /sys/kernel/debug/odp_mirror/stats >&2; then
    fail "memory still charged to users after the tests"
fi
# With kmemleak (scripts/debug-kernel): no object allocated by the module may
# be unreferenced (objects must be 5 s old to be reported; scan while the
# module is loaded so that its functions have names in the backtraces).
if [ -w /sys/kernel/debug/kmemleak ]; then
    sleep 6
    echo scan >/sys/kernel/debug/kmemleak && echo scan >/sys/kernel/debug/kmemleak
    if grep -q odp_ /sys/kernel/debug/kmemleak; then
        cat /sys/kernel/debug/kmemleak >&2
        fail "kmemleak reports objects allocated by odp_mirror"
    fi
fi
rmmod odp_mirror || fail "rmmod odp_mirror"
if dmesg | tail -n +"$((log_start + 1))" |
    grep -E 'BUG|WARNING|Oops|leak|general protection|refcount_t|odp_mirror.*error|possible .*(deadlock|recursive locking)|lockdep|KASAN|kmemleak|UBSAN|hung_task|soft lockup|rcu.*stall' >&2; then
    # The lines alone name no culprit: the log after the first one carries
    # the report's stack and registers.
    echo "run-mirror-tests: the kernel log from the first problem on:" >&2
    dmesg | tail -n +"$((log_start + 1))" |
        grep -E -A 60 -m 1 'BUG|WARNING|Oops|general protection|refcount_t|lockdep|KASAN|UBSAN|hung_task|soft lockup|rcu.*stall' >&2
    fail "the kernel log shows the problems above"
fi
[ "$status" -eq 0 ] || fail "the tests failed (exit $status)"
[ "$fuzz_status" -eq 0 ] || fail "the fuzzer found unexpected results (exit $fuzz_status, seed above)"
from=built
[ "$dkms" = 1 ] && from="installed by dkms"
echo "run-mirror-tests: kernel $ODP_VM_KERNEL, module $from: tests and ${fuzz_seconds} s of fuzzing passed, counters zero, rmmod clean, kernel log clean"
