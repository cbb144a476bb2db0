#!/bin/sh
# vm.guide: the user guide's example (docs/guide.md) on every RDMA device of
# the guest ($ODP_VM_DEVICES: rxe0 and siw0) in every mode the kernel offers
# it, and the clear refusal of the modes it does not.
#   run-guide.sh <odp-guide-example>
set -u
example=$1
status=0
# siw of Linux 5.10 and 6.1 counts its registrations against RLIMIT_MEMLOCK
# even for root (docs/guide.md): pinned mode pins 6 MiB.
ulimit -l unlimited

run() {  # run <device> <mode> <expected exit status>
    echo "== odp-guide-example $1 $2"
    "$example" "$1" "$2"
    code=$?
    if [ "$code" -ne "$3" ]; then
        echo "FAILED: $1 mode $2 exited $code, expected $3"
        status=1
    fi
}

# The emulated mode without odp_mirror.ko where the userfaultfd source cannot
# be coherent (5.10: a CPU write can copy a pinned page without an event):
# refused (exit 2), the error naming the cause and the module.
refused() {  # refused <device> <mode>
    echo "== odp-guide-example $1 $2 (no odp_mirror.ko on ${ODP_VM_KERNEL:-}: must be refused)"
    output=$("$example" "$1" "$2" 2>&1)
    code=$?
    echo "$output"
    if [ "$code" -ne 2 ] || ! echo "$output" | grep -q "copy" ||
        ! echo "$output" | grep -q "odp_mirror.ko"; then
        echo "FAILED: $1 mode $2 exited $code, expected 2 with an error naming the copy and odp_mirror.ko"
        status=1
    fi
}

for device in ${ODP_VM_DEVICES:-rxe0}; do
    case "$device:${ODP_VM_KERNEL:-}" in
    *:5.10)
        refused "$device" auto
        refused "$device" emulated
        run "$device" pinned 0
        run "$device" native 2
        ;;
    rxe0:7.3)
        run rxe0 emulated 0
        run rxe0 pinned 0
        # Native ODP exists here (and Auto picks it), but Linux 7.3.4's rxe
        # copies ODP data at the start of each page, ignoring the offset in
        # the page (__rxe_odp_mr_copy in drivers/infiniband/sw/rxe/rxe_odp.c):
        # sub-page packets land in the wrong place and the example's data
        # check catches it (exit 1). Reported, not failed: the bug is the
        # kernel's (docs/guide.md, Known limits). Any other failure fails.
        for mode in native auto; do
            echo "== odp-guide-example rxe0 $mode"
            "$example" rxe0 "$mode"
            code=$?
            if [ "$code" -eq 1 ]; then
                echo "KNOWN KERNEL BUG: rxe native ODP moved wrong bytes on 7.3 (mode $mode)"
            elif [ "$code" -ne 0 ]; then
                echo "FAILED: rxe0 mode $mode exited $code"
                status=1
            fi
        done
        ;;
    *)
        # No native ODP: rxe before 6.15, siw on every kernel.
        run "$device" auto 0  # emulated
        run "$device" emulated 0
        run "$device" pinned 0
        run "$device" native 2  # refused with a clear error
        ;;
    esac
done
exit $status
