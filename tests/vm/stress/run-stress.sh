#!/bin/bash
# Runs inside an odp-vm guest as root:
#   run-stress.sh <kernel-glue build dir> <odp-stress> [--sources LIST]
#                 [--seconds S | --transfers N] [--control-seconds S] [-- odp-stress options...]
# Sets the guest up for every kind of mapping change (zram swap for
# MADV_PAGEOUT, a 4 KiB path MTU), loads odp_mirror.ko where it is built for
# this kernel, then runs odp-stress once per source: emulated regions with
# the module source, with the userfaultfd source (on 5.10 it must refuse:
# docs/sources.md), and pinned regions as the control (for --control-seconds,
# default 15). Before each emulated run,
# odp-zap-window (next to odp-stress) tries the widened fault-during-zap
# window 10 times with that source. Emulated runs fault ahead and prefetch
# asynchronously too (background faults racing the changes). Every run prints its summary
# and a "ROW |...|" line (scripts/soak collects them). Afterwards unloads the
# module and fails on a BUG/WARNING/Oops in the kernel log, or if any run
# failed.
#   --sources LIST   comma-separated: module, userfaultfd, pinned
#                    (default all three; module only where odp_mirror.ko exists)
set -u
kglue=${1:?usage: run-stress.sh <kernel-glue dir> <odp-stress> [options]}
stress=${2:?usage: run-stress.sh <kernel-glue dir> <odp-stress> [options]}
shift 2
sources=module,userfaultfd,pinned
limit=(--seconds 60)
control_seconds=15
while [ $# -gt 0 ]; do
    case $1 in
    --sources) sources=$2 && shift 2 ;;
    --seconds | --transfers) limit=("$1" "$2") && shift 2 ;;
    --control-seconds) control_seconds=$2 && shift 2 ;;
    --) shift && break ;;
    *) echo "run-stress: unknown option $1" >&2 && exit 2 ;;
    esac
done
fail() {
    echo "run-stress: FAIL: $*" >&2
    exit 1
}
[ -n "${ODP_VM_KERNEL:-}" ] || fail "ODP_VM_KERNEL is not set: run me through scripts/odp-vm"
[ -x "$stress" ] || fail "$stress is missing: build target odp-stress"

log_start=$(dmesg | wc -l)
ko=$kglue/$ODP_VM_KERNEL/odp_mirror.ko
module=0
if [ -f "$ko" ]; then
    insmod "$ko" || fail "insmod $ko"
    for _ in $(seq 50); do [ -c /dev/odp_mirror ] && break; sleep 0.1; done
    [ -c /dev/odp_mirror ] || fail "/dev/odp_mirror did not appear after insmod"
    module=1
else
    case $ODP_VM_KERNEL in
    6.1 | 6.12) fail "$ko is missing: build target odp_mirror_ko_${ODP_VM_KERNEL/./_}" ;;
    esac
    echo "run-stress: no odp_mirror.ko for kernel $ODP_VM_KERNEL: the module source is not run"
fi
# Pinned chunks and pinned MRs count against RLIMIT_MEMLOCK.
ulimit -l unlimited
# A 4 KiB path MTU: fewer packets per transfer under emulation (and rxe's
# native ODP on 7.3 misplaces sub-page packets at 1 KiB; see run-coherence.sh).
"$(dirname "$(readlink -f "$0")")/../../../userspace/vm/rxe-mtu" 9000 >/dev/null ||
    fail "rxe0 did not take a 4 KiB path MTU"

# Swap on zram, so that MADV_PAGEOUT really moves anonymous pages out.
zram_swap=0
if modprobe zram num_devices=1 2>/dev/null && [ -e /sys/block/zram0/disksize ] &&
    echo 256M >/sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null &&
    swapon /dev/zram0; then
    zram_swap=1
    echo "run-stress: swap on zram0 (256 MiB) for MADV_PAGEOUT"
else
    echo "run-stress: no zram swap on kernel $ODP_VM_KERNEL (modprobe zram, mkswap or swapon failed): the pageout changes are skipped"
fi

# A crash leaves a core in the scratch directory; run() prints its
# backtrace (gdb is in the guest's root when the host has it).
ulimit -c unlimited
cores=${ODP_VM_SCRATCH:-/tmp}/stress-cores
mkdir -p "$cores" && echo "$cores/core.%e.%p" >/proc/sys/kernel/core_pattern ||
    echo "run-stress: could not send cores to $cores: a crash will have no backtrace"
status=0
zap_window=$(dirname "$stress")/odp-zap-window
[ -x "$zap_window" ] || fail "$zap_window is missing: build target odp-zap-window"
run() {
    echo "== $(basename "$1") ${*:2}"
    "$@"
    local rc=$?
    [ "$rc" -eq 0 ] || {
        echo "run-stress: $(basename "$1") ${*:2} exited $rc" >&2
        status=1
        local core
        for core in "$cores"/core.*; do
            [ -e "$core" ] || continue
            if command -v gdb >/dev/null; then
                echo "run-stress: backtrace of $core:" >&2
                gdb -batch -ex 'info threads' -ex 'thread apply all bt' "$1" "$core" 2>&1 |
                    grep -v '^\[New LWP' >&2
            else
                echo "run-stress: $core left, no gdb in the guest for its backtrace" >&2
            fi
            rm -f "$core"
        done
    }
}
# A run that must end at setup with the copy-on-write refusal (exit 3).
refused() {
    echo "== $(basename "$1") ${*:2} (must be refused on kernel $ODP_VM_KERNEL)"
    local output rc
    output=$("$@" 2>&1)
    rc=$?
    echo "$output"
    if [ "$rc" -ne 3 ] || ! grep -q "copy" <<<"$output"; then
        echo "run-stress: $(basename "$1") ${*:2} exited $rc, expected the copy-on-write refusal (exit 3)" >&2
        status=1
    fi
}
# Emulated runs also fault in the background: chunks faulted ahead and
# prefetched asynchronously, registered by the device's thread while the
# changes run (options after -- override these).
background=(--fault-ahead 2 --prefetch-percent 10)
for source in ${sources//,/ }; do
    case $source in
    module)
        if [ "$module" = 1 ]; then
            run "$zap_window" --source module
            run "$stress" --mode emulated --source module "${limit[@]}" "${background[@]}" "$@"
        else
            echo "run-stress: skipped the module source: no odp_mirror.ko for kernel $ODP_VM_KERNEL"
        fi
        ;;
    userfaultfd)
        if [ "$ODP_VM_KERNEL" = 5.10 ]; then
            # Before Linux 5.19 a CPU write can give the process a copy of a
            # pinned page without a userfaultfd event: the source refuses.
            refused "$stress" --mode emulated --source userfaultfd "${limit[@]}" "$@"
        else
            run "$zap_window" --source userfaultfd
            run "$stress" --mode emulated --source userfaultfd "${limit[@]}" "${background[@]}" "$@"
        fi
        ;;
    pinned) run "$stress" --mode pinned --seconds "$control_seconds" "$@" ;;
    *) fail "unknown source '$source' (module, userfaultfd, pinned)" ;;
    esac
done

if [ "$zram_swap" = 1 ]; then
    swapoff /dev/zram0 || fail "swapoff /dev/zram0"
    echo 1 >/sys/block/zram0/reset
fi
if [ "$module" = 1 ]; then
    rmmod odp_mirror || fail "rmmod odp_mirror (a reference leaked?)"
fi
if dmesg | tail -n +"$((log_start + 1))" | grep -E 'BUG|WARNING|Oops|general protection|refcount_t' >&2; then
    fail "the kernel log shows the problems above"
fi
[ "$status" -eq 0 ] || fail "a stress run failed (see above; $SECONDS s)"
echo "run-stress: kernel $ODP_VM_KERNEL: no silent error, control saw stale data, kernel log clean ($SECONDS s)"
