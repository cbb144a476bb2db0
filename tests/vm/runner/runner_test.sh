#!/bin/bash
# Checks scripts/odp-vm itself: argument and environment errors on the host
# (no guest), then one guest for exit status, output streams, --share, and
# the timeout path; and that nothing is left behind.
set -u
odp_vm=$1
passes=0
failures=0
expect() { # name expected-status actual-status [condition]
    if [[ $2 == "$3" ]] && { [[ $# -lt 4 ]] || eval "$4"; }; then
        echo "PASS $1"
        passes=$((passes + 1))
    else
        echo "FAIL $1 (exit $3, expected $2)"
        failures=$((failures + 1))
    fi
}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The runner's own run folders go here, so leftovers can be counted exactly.
mkdir -p "$out/tmp"
export TMPDIR=$out/tmp

ODP_VM_QEMU=/nonexistent/qemu-system-x86_64 "$odp_vm" --kernel 6.1 -- true 2>"$out/err"
expect missing_qemu_names_package 125 $? \
    '[[ $(wc -l <"$out/err") -eq 1 ]] && grep -q "install the Debian package qemu-system-x86" "$out/err"'

ODP_CACHE_DIR=/nonexistent "$odp_vm" --kernel 6.12 -- true 2>"$out/err"
expect missing_kernel_says_run_setup 125 $? 'grep -q "guest kernel 6.12 .*run scripts/setup" "$out/err"'

"$odp_vm" --kernel 5.4 -- true 2>"$out/err"
expect unknown_kernel_refused 125 $? 'grep -q "unknown kernel .5.4." "$out/err"'

"$odp_vm" --kernel 6.1 2>"$out/err"
expect missing_command_refused 125 $? 'grep -q "no command given" "$out/err"'

"$odp_vm" --kernel 6.1 --device roce -- true 2>"$out/err"
expect unknown_device_refused 125 $? 'grep -q "device takes rxe, siw or both, got .roce." "$out/err"'

"$odp_vm" --kernel 6.1 --siw-dir "$out/no-siw" -- true 2>"$out/err"
expect missing_siw_module_names_its_target 125 $? \
    'grep -q "no siw.ko for kernel 6.1 in $out/no-siw/6.1: build it (ninja siw_ko_6_1" "$out/err"'

# A guest that dies before its command starts is booted once more, saying so;
# twice is an error.  The stand-in QEMU fails its first start only.
mkdir -p "$out/share"
real_qemu=$(command -v qemu-system-x86_64)
printf '#!/bin/bash\n[[ -e %q ]] && exec %q "$@"\ntouch %q\nexit 1\n' \
    "$out/qemu-died" "$real_qemu" "$out/qemu-died" >"$out/qemu-dies-once"
printf '#!/bin/sh\nexit 1\n' >"$out/qemu-dies"
chmod +x "$out/qemu-dies-once" "$out/qemu-dies"
ODP_VM_QEMU=$out/qemu-dies-once "$odp_vm" --kernel 6.1 --share "$out/share" -- \
    bash -c "echo ran >>$out/share/runs; exit 5" 2>"$out/err"
expect boot_death_retried_once 5 $? \
    'grep -q "stopped while booting, before the command started" "$out/err" &&
     grep -q "booting it once more" "$out/err" && [[ $(cat "$out/share/runs") == ran ]]'
ODP_VM_QEMU=$out/qemu-dies "$odp_vm" --kernel 6.1 -- true 2>"$out/err"
expect boot_death_twice_is_an_error 125 $? \
    '[[ $(grep -c "booting it once more" "$out/err") == 1 ]] &&
     grep -q "stopped without reporting a status" "$out/err"'
# A guest whose kernel dies once the command has started is never booted
# again: the command must not run twice.
"$odp_vm" --kernel 6.1 --share "$out/share" -- \
    bash -c "echo ran >>$out/share/crash-runs; echo c >/proc/sysrq-trigger; sleep 60" 2>"$out/err"
expect crash_after_start_not_retried 125 $? \
    '! grep -q "booting it once more" "$out/err" && grep -q "stopped without reporting a status" "$out/err" &&
     [[ $(cat "$out/share/crash-runs") == ran ]]'

"$odp_vm" --kernel 6.1 --timeout 3 -- sleep 600 >"$out/stdout" 2>"$out/err"
expect timeout_exits_124 124 $? 'grep -q "did not finish within 3 s" "$out/err"'

"$odp_vm" --kernel 6.1 --share "$out/share" -- bash -c \
    'echo to-stdout; echo to-stderr >&2; echo "$ODP_VM_KERNEL $PWD" >'"$out"'/share/seen; exit 7' \
    >"$out/stdout" 2>"$out/err"
status=$?
expect exit_status_carried 7 $status
expect stdout_carried 7 $status '[[ $(cat "$out/stdout") == to-stdout ]]'
expect stderr_carried 7 $status 'grep -qx to-stderr "$out/err"'
expect share_written_back 7 $status '[[ $(cat "$out/share/seen" 2>/dev/null) == "6.1 $PWD" ]]'

# Two guests on a virtual wire: RC traffic crosses it, both outputs come back.
"$odp_vm" --kernel 6.1 --hosts 2 --timeout 400 -- bash -c '
    if [[ $ODP_VM_HOST == 0 ]]; then
        timeout 200 ibv_rc_pingpong -d rxe0 -g "$ODP_VM_GID_INDEX" -n 50
    else
        # Until the server on the other guest listens (a probe would be its
        # one connection): retried while refused, 200 s bounds a hang.
        for _ in $(seq 200); do
            client=$(timeout 200 ibv_rc_pingpong -d rxe0 -g "$ODP_VM_GID_INDEX" -n 50 "$ODP_VM_PEER_ADDR" 2>&1)
            status=$?
            grep -q "Couldn.t connect" <<<"$client" || break
            sleep 1
        done
        echo "$client"
        exit $status
    fi' >"$out/stdout" 2>"$out/err"
status=$?
cat "$out/stdout"
expect two_hosts_rc_over_wire 0 $status \
    'grep -q "^\[host0\] 50 iters in" "$out/stdout" && grep -q "^\[host1\] 50 iters in" "$out/stdout" &&
     grep -q "^\[host1\]   remote address: .* GID ::ffff:192.0.2.1" "$out/stdout"'

expect no_run_folder_left 0 0 '[[ -z $(ls -A "$out/tmp") ]]'
expect no_qemu_left 0 0 '! pgrep -f "$out/share" >/dev/null'

echo "runner: $passes passed, $failures failed"
[[ $failures -eq 0 ]]
