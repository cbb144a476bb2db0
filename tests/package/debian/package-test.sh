#!/bin/bash
# The Debian packages, built and installed as a user would:
#  1. dpkg-buildpackage -b from a copy of the checkout (debian/): libodp0,
#     libodp-dev, odp-perf, odp-mirror-dkms;
#  2. lintian on them: no error;
#  3. dpkg -i of all four into a fresh Debian 12 root (the cached debootstrap
#     root of scripts/setup, under an overlay, so it stays clean), then in
#     that root: odp.pc answers, the C example that libodp-dev ships builds
#     with -Wall -Wextra -pedantic -Werror against the installed files, loads
#     libodp0's /usr/lib/<triplet>/libodp.so.0, prints its usage, refuses bad options,
#     and reports that there is no RDMA device through libodp's error (a root
#     has no rxe: nothing moves data here, the guest suites do that);
#     odp-perf starts; DKMS knows odp-mirror/<version>.
#  0. First of all, one version everywhere: CMakeLists.txt's project(), the
#     top of debian/changelog, kernel-glue/dkms.conf and the DKMS source
#     folder in debian/odp-mirror-dkms.install.
#   package-test.sh SOURCE_DIR WORK_DIR
set -uo pipefail

src=$1 work=$2
root_cache=${ODP_CACHE_DIR:-/var/cache/odp-layer}/roots/bookworm
say() { echo "package-test: $*"; }
die() {
    echo "package-test: FAILED: $*" >&2
    exit 1
}

((EUID == 0)) || {
    say "skipped: needs root (dpkg-buildpackage is fine, but mount and chroot are not)"
    exit 77
}
# One version: the project's, in every place that names it.
version=$(sed -n 's/^project(odp-layer VERSION \([0-9.]*\) .*/\1/p' "$src/CMakeLists.txt")
[[ -n $version ]] || die "no version in $src/CMakeLists.txt's project()"
changelog=$(sed -n '1s/^odp-layer (\([^)]*\)).*/\1/p' "$src/debian/changelog")
dkms=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' "$src/kernel-glue/dkms.conf")
[[ $changelog == "$version" ]] ||
    die "debian/changelog's top entry is $changelog, the project is $version: add a changelog entry"
[[ $dkms == "$version" ]] || die "kernel-glue/dkms.conf says $dkms, the project is $version"
while read -r _ folder; do
    [[ $folder == "usr/src/odp-mirror-$version/" ]] ||
        die "debian/odp-mirror-dkms.install installs into $folder, not usr/src/odp-mirror-$version/"
done <"$src/debian/odp-mirror-dkms.install"
say "ok: version $version in CMakeLists.txt, debian/changelog, dkms.conf and the DKMS install"

[[ -f $root_cache/etc/odp-package-root ]] ||
    die "no Debian 12 package root in $root_cache: run scripts/setup (as root) once"

root=$work/root
cleanup() {
    umount "$root/proc" 2>/dev/null
    umount "$root" 2>/dev/null
}
trap cleanup EXIT
cleanup
! mountpoint -q "$root" || die "$root is still mounted (a process of an earlier run inside?)"
rm -rf "$work"
mkdir -p "$work/src"

# 1. Build from the files git knows (tracked or new), nothing of build trees.
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$src" ls-files -z --cached --others --exclude-standard |
        (cd "$src" && tar --null -T - -cf -) | tar -xf - -C "$work/src"
else
    tar -C "$src" --exclude='./build*' -cf - . | tar -xf - -C "$work/src"
fi
started=$SECONDS
(cd "$work/src" && DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" \
    dpkg-buildpackage -b -uc -us >"$work/build.log" 2>&1) ||
    die "dpkg-buildpackage failed; the end of $work/build.log: $(tail -30 "$work/build.log")"
say "built in $((SECONDS - started)) s: $(cd "$work" && echo ./*.deb)"
debs=()
for package in libodp0 libodp-dev odp-perf odp-mirror-dkms; do
    deb=$(echo "$work/${package}_"*.deb)
    [[ -f $deb ]] || die "no $package package built"
    debs+=("$deb")
done

# 2. lintian: errors fail, warnings are shown.
started=$SECONDS
lintian --fail-on error --tag-display-limit 0 "$work"/*.changes >"$work/lintian.log" 2>&1
lintian_status=$?
sed 's/^/    /' "$work/lintian.log"
[[ $lintian_status == 0 ]] || die "lintian reports errors (above)"
say "lintian: no error ($((SECONDS - started)) s)"

# 3. A fresh root: the cached one under an overlay.
mkdir -p "$root" "$work/upper" "$work/overlay-work"
mount -t overlay overlay -o "lowerdir=$root_cache,upperdir=$work/upper,workdir=$work/overlay-work" "$root" ||
    die "cannot mount an overlay over $root_cache"
mount -t proc proc "$root/proc" || die "cannot mount /proc in the root"
mkdir -p "$root/tmp/debs"
cp "${debs[@]}" "$root/tmp/debs/"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
in_root sh -c 'dpkg -i /tmp/debs/*.deb' >"$work/dpkg.log" 2>&1 ||
    die "dpkg -i in the Debian 12 root failed: $(cat "$work/dpkg.log")"
say "installed into a fresh Debian 12 root: $(in_root dpkg-query -W -f '${Package} ${Version}, ' libodp0 libodp-dev odp-perf odp-mirror-dkms)"

# run_expect STATUS PATTERN COMMAND...: in the root, exits STATUS, prints PATTERN.
run_expect() {
    local expected=$1 pattern=$2 output status
    shift 2
    output=$(in_root "$@" 2>&1)
    status=$?
    [[ $status == "$expected" ]] || die "$* exited $status, expected $expected: $output"
    [[ $output == *"$pattern"* ]] || die "$* did not print '$pattern': $output"
    say "ok: $* (exit $status): $(head -1 <<<"$output" | cut -c1-120)"
}

run_expect 0 "$version" pkg-config --modversion odp
example=/usr/share/doc/libodp-dev/examples/odp_rc_pingpong.c
if [[ -f $root$example.gz ]]; then
    in_root sh -c "zcat $example.gz >/tmp/odp_rc_pingpong.c"
else
    cp "$root$example" "$root/tmp/odp_rc_pingpong.c"
fi
run_expect 0 "" sh -c 'cc -std=c11 -Wall -Wextra -pedantic -Werror -o /tmp/pingpong /tmp/odp_rc_pingpong.c $(pkg-config --cflags --libs odp libibverbs)'
# (merged /usr: ld.so may name it /lib/...)
run_expect 0 "lib/x86_64-linux-gnu/libodp.so.0 (" ldd /tmp/pingpong
run_expect 0 "libodp0:amd64: /usr/lib/x86_64-linux-gnu/libodp.so.0" dpkg -S /usr/lib/x86_64-linux-gnu/libodp.so.0
run_expect 0 "usage: odp_rc_pingpong" /tmp/pingpong --help
run_expect 2 "unknown mode 'fast'" /tmp/pingpong -m fast
run_expect 1 "odp_rc_pingpong: odp_device_open: " /tmp/pingpong
run_expect 0 "usage:" odp-perf --help
run_expect 0 "odp-mirror/$version" dkms status
say "the packages install and work in a clean Debian 12 root"
