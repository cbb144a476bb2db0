#!/bin/sh
# vm.cm: RDMA CM connection setup through odp::verbs (cm_test) on every RDMA
# device of the guest (rxe0 and siw0), each against its own address.
#   run-cm.sh <odp_cm_vm_tests>
set -u
tests=$1
# siw of Linux 5.10 and 6.1 counts its registrations against RLIMIT_MEMLOCK
# even for root (64 KiB here; 6.12 on use ib_umem): the buffers need more.
ulimit -l unlimited
status=0
for device in $ODP_VM_DEVICES; do
    case $device in
    rxe0) address=$ODP_VM_RXE_ADDR ;;
    siw0) address=$ODP_VM_SIW_ADDR ;;
    *) echo "run-cm: unknown device $device" && exit 1 ;;
    esac
    other=
    for candidate in $ODP_VM_DEVICES; do
        [ "$candidate" = "$device" ] || other=$candidate
    done
    echo "== cm_test on $device ($address)"
    ODP_CM_DEVICE=$device ODP_CM_ADDR=$address ODP_CM_OTHER_DEVICE=$other \
        "$tests" --gtest_brief=1 || status=1
done
exit $status
