#!/bin/bash
# Guest smoke suite: rxe0 is up, RC traffic flows, and the ODP capability the
# device reports matches what registration does on this kernel.
# Usage (inside odp-vm): smoke.sh <path to odp_probe>
set -u
probe=$1
failures=0
passes=0
check() { # name, then a command whose success means pass
    local name=$1
    shift
    if "$@"; then
        echo "PASS $name"
        passes=$((passes + 1))
    else
        echo "FAIL $name"
        failures=$((failures + 1))
    fi
}

rxe0_active() {
    local info
    info=$(ibv_devinfo -d rxe0 2>&1)
    echo "$info" | grep -E 'hca_id|state|link_layer' | sed 's/^/  /'
    grep -q 'hca_id:.*rxe0' <<<"$info" && grep -q 'state:.*PORT_ACTIVE' <<<"$info" &&
        grep -q 'link_layer:.*Ethernet' <<<"$info"
}

rc_pingpong() {
    local iters=500 server client
    server=$(mktemp) client=$(mktemp)
    ibv_rc_pingpong -d rxe0 -g "$ODP_VM_GID_INDEX" -n $iters >"$server" 2>&1 &
    local pid=$!
    # The client connects once the server listens on its TCP port (18515),
    # however long that takes under emulation (60 s bounds a hang).
    for _ in $(seq 600); do
        ss -ltn 2>/dev/null | grep -q ':18515 ' && break
        sleep 0.1
    done
    timeout 60 ibv_rc_pingpong -d rxe0 -g "$ODP_VM_GID_INDEX" -n $iters "$ODP_VM_ADDR" >"$client" 2>&1
    local rc=$?
    timeout 30 tail --pid=$pid -f /dev/null
    wait $pid
    local server_rc=$?
    sed 's/^/  client: /' "$client"
    sed 's/^/  server: /' "$server"
    # Both sides must report every iteration completed.
    [[ $rc -eq 0 && $server_rc -eq 0 ]] && grep -q "^[0-9]* bytes in .* = .*" "$client" &&
        grep -q "^$iters iters in " "$client" && grep -q "^$iters iters in " "$server"
}

odp_matches_kernel() {
    local out
    out=$("$probe" rxe0 2>&1)
    local rc=$?
    echo "$out" | sed 's/^/  /'
    [[ $rc -eq 0 ]] && grep -qx 'consistent: yes' <<<"$out" || return 1
    case $ODP_VM_KERNEL in
    # rxe gained ODP in 6.15: older kernels must refuse ON_DEMAND and say so in their caps.
    5.10 | 6.1 | 6.12)
        grep -qx 'odp_caps.general: none' <<<"$out" &&
            grep -q '^reg_mr(ON_DEMAND): ' <<<"$out" && ! grep -qx 'reg_mr(ON_DEMAND): ok' <<<"$out"
        ;;
    *)
        grep -qx 'odp_caps.general: ODP_SUPPORT' <<<"$out" && grep -qx 'reg_mr(ON_DEMAND): ok' <<<"$out" &&
            grep -qx 'odp_caps.rc: send=1 recv=1 write=1 read=1 atomic=.' <<<"$out"
        ;;
    esac
}

# Timed tools (odp-perf, perftest) need a clock that is cheap to read and
# agrees across vCPUs: the TSC, which odp-vm vouches for (tsc=reliable).
guest_clock_is_tsc() {
    local clock
    clock=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
    echo "  clocksource: $clock"
    [[ $clock == tsc ]]
}

check guest_clock_is_tsc guest_clock_is_tsc
check rxe0_active rxe0_active
check rc_pingpong rc_pingpong
check odp_capability_matches_kernel_$ODP_VM_KERNEL odp_matches_kernel
echo "smoke: $passes passed, $failures failed"
[[ $failures -eq 0 ]]
