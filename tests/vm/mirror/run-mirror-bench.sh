#!/bin/bash
# Runs inside an odp-vm guest as root:
#   run-mirror-bench.sh <kernel-glue build dir> <odp_mirror_bench binary>
# Loads the odp_mirror.ko built for $ODP_VM_KERNEL, runs the benchmark, unloads.
set -u
kglue=$1
bench=$2
ko=$kglue/$ODP_VM_KERNEL/odp_mirror.ko
insmod "$ko" || { echo "run-mirror-bench: insmod $ko failed" >&2 && exit 1; }
for _ in $(seq 50); do [ -c /dev/odp_mirror ] && break; sleep 0.1; done
"$bench"
status=$?
rmmod odp_mirror || status=1
exit $status
