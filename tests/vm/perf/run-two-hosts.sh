#!/bin/bash
# Two guests joined by a QEMU socket network (scripts/odp-vm --hosts 2): the
# odp-perf server runs in host 0, the client in host 1, so the out-of-band
# exchange and the RDMA traffic cross a real (virtual) wire between two rxe
# devices. Every test and mode pairing moves data that is verified byte by byte.
# usage: run-two-hosts.sh PATH/TO/odp-perf
set -uo pipefail

perf=$1
host=${ODP_VM_HOST:?run this in scripts/odp-vm --hosts 2}
kernel=${ODP_VM_KERNEL:-?}
port=18515
# Pairings (client:server). Native is left out: 7.3's rxe moves wrong bytes
# with native ODP by itself (odp-perf compare's native data check shows it).
pairs="pinned:pinned emulated:emulated pinned:emulated emulated:pinned"
tests="write read send"
sessions=$(( $(wc -w <<<"$pairs") * $(wc -w <<<"$tests") ))

if [ "$host" = 0 ]; then
    # The server exits after serving every session; non-zero if one failed.
    exec timeout 600 "$perf" server --port "$port" --exit-after "$sessions"
fi

peer=${ODP_VM_PEER_ADDR:?no peer address}
failed=0
first=1
for pair in $pairs; do
    for test in $tests; do
        # The first client waits for the server to listen (no probe connection:
        # the server counts every session, and a probe would be a failed one).
        for _ in $(seq $((first ? 60 : 1))); do
            out=$("$perf" client "$peer" --port "$port" --test "$test" --size 64K --iters 200 \
                --depth 16 --mode "${pair%:*}" --peer-mode "${pair#*:}" --lat --lat-iters 50 2>&1)
            status=$?
            grep -q "Connection refused" <<<"$out" || break
            sleep 1
        done
        first=0
        line=$(awk '$1 == 65536' <<<"$out")
        echo "two-hosts $test client ${pair%:*} server ${pair#*:}: ${line:-no result}"
        if [ "$status" != 0 ] || ! grep -q ', ok$' <<<"$line"; then
            echo "$out"
            echo "FAIL: $test ${pair}"
            failed=1
        fi
    done
done
[ "$failed" = 0 ] && echo "vm.perf_two_hosts: all pairings verified on $kernel"
exit "$failed"
