#!/bin/bash
# Runs inside an odp-vm guest of the debug kernel (scripts/debug-kernel):
#   debug-kernel-suites.sh <output folder shared with the host> [build folder]
# vm.mirror (the module's cases and 60 s of odp_mirror_fuzz), vm.stress and
# vm.coherence one after the other in one boot, then two kmemleak scans; the
# output folder gets kmemleak.txt and dmesg.txt.  Fails if a suite failed,
# kmemleak reports anything, or the kernel log shows a KASAN, lockdep or
# other kernel report.  The result goes in docs/results/soak.md.
set -u
out=$1
build=${2:-build}
kglue=$build/kernel-glue
failed=0
suite() {
    local name=$1
    shift
    "$@"
    local status=$?
    echo "debug-kernel-suites: $name exit $status"
    [ "$status" -eq 0 ] || failed=1
}
[ -w /sys/kernel/debug/kmemleak ] || {
    echo "debug-kernel-suites: no kmemleak: run me on the debug kernel (odp-vm --kernel 6.12-debug)" >&2
    exit 2
}
suite vm.mirror tests/vm/mirror/run-mirror-tests.sh "$kglue" \
    "$build/tests/vm/mirror/odp_mirror_vm_tests" "$build/tests/vm/mirror/odp_mirror_fuzz"
# run-mirror-tests.sh leaves zram0 sized; run-stress.sh sizes it again.
echo 1 >/sys/block/zram0/reset 2>/dev/null
suite vm.stress tests/vm/stress/run-stress.sh "$kglue" "$build/tests/vm/stress/odp-stress" \
    --seconds 75 --control-seconds 15
suite vm.coherence tests/vm/coherence/run-coherence.sh "$kglue" \
    "$build/tests/vm/coherence/odp_coherence_tests" "$build/tests/unit/odp/odp_unit_tests"
# kmemleak reports objects at least 5 s old; a second scan settles the first.
sleep 6
echo scan >/sys/kernel/debug/kmemleak && echo scan >/sys/kernel/debug/kmemleak
cat /sys/kernel/debug/kmemleak >"$out/kmemleak.txt"
leaks=$(grep -c '^unreferenced object' "$out/kmemleak.txt")
echo "debug-kernel-suites: kmemleak: $leaks unreferenced objects ($out/kmemleak.txt)"
[ "$leaks" -eq 0 ] || failed=1
dmesg >"$out/dmesg.txt"
# The reports' own headlines (boot messages name kmemleak and lockdep too).
if grep -E 'BUG:|WARNING:|Oops|KASAN:|UBSAN:|possible (circular|recursive) locking|inconsistent lock state|suspicious RCU usage|new suspected memory leaks|blocked for more than|soft lockup|rcu.*stall|general protection|list_(add|del) corruption' \
    "$out/dmesg.txt"; then
    echo "debug-kernel-suites: the kernel log shows the reports above ($out/dmesg.txt)"
    failed=1
else
    echo "debug-kernel-suites: kernel log clean (no KASAN, lockdep, BUG, WARNING, hung task)"
fi
exit $failed
