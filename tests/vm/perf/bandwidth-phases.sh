#!/bin/bash
# Run in a guest (docs/compare.md, "Why a row's bandwidth swings"): 8 blocks
# of 64 KiB WRITE over rxe0's loopback, each odp-perf unpinned, on CPU 0, on
# CPU 1, then ib_write_bw, back to back. Prints one bandwidth (MB/s) a line.
#   scripts/odp-vm --kernel 6.12 --mem 10240 --numa 1 --device rxe -- bash tests/vm/perf/bandwidth-phases.sh
here=$(cd "$(dirname "$0")" && pwd)
perf=${ODP_BUILD_DIR:-$here/../../../build}/userspace/odp-perf/odp-perf
dev=rxe0; addr=$ODP_VM_RXE_ADDR
port=20000
bw() { # label, client prefix...
  local label=$1; shift
  local p=$((port++))
  chrt --idle 0 $perf server --port $p --device $dev >/dev/null 2>&1 &
  local s=$!
  sleep 0.5
  timeout 60 "$@" $perf client $addr --port $p --device $dev --test write --size 64K --iters 1500 --depth 32 --mode pinned --peer-mode pinned > /tmp/bw.log 2>&1
  kill $s 2>/dev/null; wait $s 2>/dev/null
  echo "$label $(awk '$1 == 65536 { print $4 }' /tmp/bw.log)"
}
pbw() {
  local p=$((port++))
  timeout 60 chrt --idle 0 ib_write_bw -d $dev -x $ODP_VM_GID_INDEX -F -p $p -s 65536 -n 1500 >/dev/null 2>&1 &
  local s=$!
  sleep 0.5
  timeout 60 ib_write_bw -d $dev -x $ODP_VM_GID_INDEX -F -p $p -s 65536 -n 1500 $addr > /tmp/pbw.log 2>&1
  wait $s
  echo "perftest $(awk '$1 == 65536 { print $4 }' /tmp/pbw.log)"
}
for i in $(seq 8); do
  bw free
  bw cpu0 taskset -c 0
  bw cpu1 taskset -c 1
  pbw
done
grep -E "rxe|NET_RX|TASKLET" /proc/softirqs /proc/interrupts | head
