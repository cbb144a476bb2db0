#!/bin/bash
# Guest smoke suite: rxe0 (RoCE v2) and siw0 (iWARP) are up, RC traffic
# flows on both (ibv_rc_pingpong on rxe0, rping through RDMA CM on each), and
# the ODP capability each device reports matches what registration does on
# this kernel.
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

device_active() { # device, transport
    local info
    info=$(ibv_devinfo -d "$1" 2>&1)
    echo "$info" | grep -E 'hca_id|transport|state|link_layer' | sed 's/^/  /'
    grep -q "hca_id:.*$1" <<<"$info" && grep -q "transport:.*$2" <<<"$info" &&
        grep -q 'state:.*PORT_ACTIVE' <<<"$info" && grep -q 'link_layer:.*Ethernet' <<<"$info"
}

# rping through RDMA CM to the device's own address: the listener must be
# bound to that device (rdma resource show), the client must end well and
# both sides must have seen every one of the pings (-V: each side checks the
# data that each RDMA READ and WRITE moved).  rping's server exits non-zero
# when the client disconnects after the last ping, so its status is not used.
rping_moves_data() { # device, address
    local count=50 server client listeners
    server=$(mktemp) client=$(mktemp)
    rping -s -a "$2" -C $count -S 1024 -V -v >"$server" 2>&1 &
    local pid=$!
    sleep 1
    listeners=$(rdma resource show cm_id 2>&1)
    timeout 60 rping -c -a "$2" -C $count -S 1024 -V -v >"$client" 2>&1
    local rc=$?
    timeout 30 tail --pid=$pid -f /dev/null
    wait $pid
    local client_pings server_pings
    client_pings=$(grep -o '^ping data: rdma-ping-[0-9]*:' "$client" | sort -u | wc -l)
    server_pings=$(grep -o '^server ping data: rdma-ping-[0-9]*:' "$server" | sort -u | wc -l)
    echo "$listeners" | grep LISTEN | sed 's/^/  cm_id: /'
    echo "  client: exit $rc, $client_pings pings; server: $server_pings pings"
    grep -v 'ping data' "$client" | sed 's/^/  client: /'
    grep -v 'ping data' "$server" | sed 's/^/  server: /'
    [[ $rc -eq 0 && $client_pings -eq $count && $server_pings -eq $count ]] &&
        grep -q "link $1/[0-9]* .*LISTEN.*src-addr $2:" <<<"$listeners"
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

odp_matches_kernel() { # device
    local out
    out=$("$probe" "$1" 2>&1)
    local rc=$?
    echo "$out" | sed 's/^/  /'
    [[ $rc -eq 0 ]] && grep -qx 'consistent: yes' <<<"$out" || return 1
    # siw has no ODP on any kernel.
    if [[ $1 == siw0 ]]; then
        grep -qx 'odp_caps.general: none' <<<"$out" && ! grep -qx 'reg_mr(ON_DEMAND): ok' <<<"$out"
        return
    fi
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
# siw.ko is built for every supported kernel: without siw0 CMake found no
# siw source (scripts/setup fetches it) and half the suite would not run.
case $ODP_VM_KERNEL in
5.10 | 6.1 | 6.12 | 7.3) check siw0_is_up grep -qw siw0 <<<"$ODP_VM_DEVICES" ;;
esac
for device in $ODP_VM_DEVICES; do
    case $device in
    rxe0)
        check rxe0_active device_active rxe0 'InfiniBand'
        check rxe0_rc_pingpong rc_pingpong
        check rxe0_rping rping_moves_data rxe0 "$ODP_VM_RXE_ADDR"
        ;;
    siw0)
        check siw0_active device_active siw0 'iWARP'
        check siw0_rping rping_moves_data siw0 "$ODP_VM_SIW_ADDR"
        ;;
    esac
    check "${device}_odp_capability_matches_kernel_$ODP_VM_KERNEL" odp_matches_kernel "$device"
done
echo "smoke: $passes passed, $failures failed"
[[ $failures -eq 0 ]]
