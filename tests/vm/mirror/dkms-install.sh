#!/bin/bash
# Runs inside an odp-vm guest as root (the host's / under a writable overlay):
#   dkms-install.sh <kernel-glue source folder>
# Installs odp_mirror.ko for the running kernel the way a user does
# (docs/kernel-module.md): the source in /usr/src/odp-mirror-<version>, then
# `dkms add`, `dkms build`, `dkms install`, so that `modprobe odp_mirror`
# finds it.  The guest kernels are only unpacked (scripts/setup), so their
# headers are linked in from the cache first: 6.1 and 6.12 use the host's
# installed headers and dkms, 5.10 its headers unpacked in the cache; 7.3's
# headers need Debian 13's toolchain, so dkms runs in the Debian 13 build root
# with this kernel's module folder bound into it (as on a Debian 13 machine).
set -eu
src=$(readlink -f "$1")
fail() {
    echo "dkms-install: FAIL: $*" >&2
    exit 1
}
[ -f "$src/dkms.conf" ] || fail "$src/dkms.conf is missing"
release=$(uname -r)
cache=${ODP_CACHE_DIR:-/var/cache/odp-layer}
version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' "$src/dkms.conf")
[ -n "$version" ] || fail "no PACKAGE_VERSION in $src/dkms.conf"
headers=/usr/src/linux-headers-$release
modules=$(readlink -f "/lib/modules/$release")

# False when PROGRAM cannot even start here (a shared library missing: 127);
# run without arguments it only prints its usage.
runs_here() {
    local status=0
    "$1" >/dev/null 2>&1 || status=$?
    [ "$status" != 127 ]
}

root=
if [ ! -f "$headers/Makefile" ]; then
    unpacked=$cache/kernels/${ODP_VM_KERNEL:-}/headers$headers
    if [ -f "$unpacked/Makefile" ]; then
        ln -s "$unpacked" "$headers"
        # Unpacked headers of another release (5.10: Debian 11) bring a
        # sign-file linked against that release's libcrypto, which this
        # system may lack (exit 127). DKMS then signs with this system's own,
        # as a machine running that release would with its own.
        if ! runs_here "$headers/scripts/sign-file"; then
            for sign_file in /usr/lib/linux-kbuild-*/scripts/sign-file; do
                runs_here "$sign_file" || continue
                mkdir -p /etc/dkms/framework.conf.d
                echo "sign_file=$sign_file" >/etc/dkms/framework.conf.d/odp-vm-sign-file.conf
                echo "dkms-install: $headers/scripts/sign-file cannot run here: DKMS signs with $sign_file"
                break
            done
        fi
    else
        for candidate in "$cache"/roots/*; do
            [ -f "$candidate$headers/Makefile" ] && root=$candidate
        done
        [ -n "$root" ] || fail "no headers for $release on the host, in the cache or in a build root: run scripts/setup"
    fi
fi
ln -sfn "$headers" "$modules/build"

in_root() { "$@"; }
if [ -n "$root" ]; then
    echo "dkms-install: $release's headers are in the build root $root: dkms runs there"
    mkdir -p "$root/lib/modules/$release"
    mount --bind "$modules" "$root/lib/modules/$release"
    mount -t proc proc "$root/proc"
    mount --bind /sys "$root/sys"
    mount --bind /dev "$root/dev"
    in_root() { chroot "$root" "$@"; }
fi
in_root test -x /usr/sbin/dkms || fail "dkms is not installed (scripts/setup installs it)"

# Each step says how long it took: under emulation they are slow.
timed() {
    local what=$1 start=$SECONDS
    shift
    "$@" || return
    echo "dkms-install: $what took $((SECONDS - start)) s"
}

rm -rf "$root/usr/src/odp-mirror-$version"
cp -r "$src" "$root/usr/src/odp-mirror-$version"
timed "dkms add" in_root dkms add -m odp-mirror -v "$version" || fail "dkms add"
timed "dkms build" in_root dkms build -m odp-mirror -v "$version" -k "$release" || {
    cat "$root/var/lib/dkms/odp-mirror/$version/build/make.log" >&2 2>/dev/null
    fail "dkms build"
}
timed "dkms install" in_root dkms install -m odp-mirror -v "$version" -k "$release" || fail "dkms install"
in_root dkms status -m odp-mirror
if [ -n "$root" ]; then
    umount "$root/dev" "$root/sys" "$root/proc" "$root/lib/modules/$release"
fi
installed=$(modinfo -n odp_mirror) || fail "modinfo cannot find odp_mirror after dkms install"
case $installed in
"$modules"/updates/* | /lib/modules/"$release"/updates/*) ;;
*) fail "modinfo finds odp_mirror at $installed, not in updates/ where dkms installs" ;;
esac
# DKMS signs what it builds (its own machine owner key, docs/kernel-module.md).
signer=$(modinfo -F signer "$installed")
[ -n "$signer" ] || fail "dkms installed $installed unsigned (see the build output above)"
echo "dkms-install: odp-mirror $version installed for $release: $installed, signed by '$signer'"
