#!/bin/sh
# The installed libodp as an application outside the tree sees it.
#   install-test.sh install BUILD_DIR PREFIX       cmake --install into PREFIX, check the files
#   install-test.sh find_package PREFIX WORK SRC   build the examples with find_package(odp)
#   install-test.sh pkg_config PREFIX WORK SRC     ... with pkg-config (shared and static)
# The programs built must start, find libodp where it was installed (or not
# need it: static), and report a missing device through libodp's own error:
# the guide example catches odp::Error thrown inside libodp.so (exit 2), the
# C example prints odp_last_error() (exit 1).
set -eu

say() { echo "install-test: $*"; }
die() {
    echo "install-test: FAILED: $*" >&2
    exit 1
}

# run_expect STATUS PATTERN PROGRAM ARGS...: the program exits STATUS and its
# output contains PATTERN.
run_expect() {
    expected=$1 pattern=$2
    shift 2
    set +e
    output=$("$@" 2>&1)
    status=$?
    set -e
    [ "$status" = "$expected" ] || die "$* exited $status, expected $expected: $output"
    case $output in
    *"$pattern"*) say "ok: $* (exit $status)" ;;
    *) die "$* did not print '$pattern': $output" ;;
    esac
}

# The programs are checked without any RDMA device: this name never exists.
check_programs() { # check_programs GUIDE C_EXAMPLE
    run_expect 2 "odp-guide-example: " "$1" odp-no-such-device
    run_expect 0 "usage: " "$2" --help
    run_expect 2 "bad size" "$2" -s 0
    run_expect 1 "odp_device_open: " "$2" -d odp-no-such-device
}

uses_libodp() { # uses_libodp PROGRAM PREFIX: linked to PREFIX's libodp.so.0
    ldd "$1" | grep -q "libodp.so.0 => $2/" || die "$1 does not load libodp.so.0 from $2: $(ldd "$1")"
}

mode=$1
shift
case $mode in
install)
    build=$1 prefix=$2
    rm -rf "$prefix"
    cmake --install "$build" --prefix "$prefix" >/dev/null
    for file in include/odp/odp.h include/odp/export.h include/odp/device.hpp bin/odp-perf; do
        [ -f "$prefix/$file" ] || die "$file not installed"
    done
    for pattern in libodp.so.0.* libodp.a pkgconfig/odp.pc cmake/odp/odpConfig.cmake; do
        [ -n "$(find "$prefix" -path "*/$pattern")" ] || die "no $pattern installed"
    done
    [ -z "$(find "$prefix/include" -name '*core*' -o -name 'c_api.hpp')" ] || die "internal headers installed"
    lib=$(dirname "$(find "$prefix" -name 'libodp.so.0')")
    [ "$(readlink "$lib/libodp.so")" = libodp.so.0 ] || die "libodp.so is no link to libodp.so.0"
    LD_LIBRARY_PATH=$lib run_expect 0 "usage" "$prefix/bin/odp-perf" --help
    say "installed into $prefix"
    ;;
find_package)
    prefix=$1 work=$2 src=$3
    rm -rf "$work"
    cmake -S "$src/tests/unit/install/consumer" -B "$work" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$prefix" -DGUIDE_EXAMPLE="$src/tests/vm/guide/guide_example.cpp" \
        -DC_EXAMPLE="$src/examples/c-pingpong/odp_rc_pingpong.c" >"$work.log" 2>&1 ||
        die "configuring against $prefix: $(cat "$work.log")"
    cmake --build "$work" >"$work.log" 2>&1 || die "building: $(cat "$work.log")"
    uses_libodp "$work/guide_example" "$prefix"
    uses_libodp "$work/c_pingpong" "$prefix"
    ! ldd "$work/c_pingpong_static" | grep -q libodp || die "c_pingpong_static loads libodp.so"
    check_programs "$work/guide_example" "$work/c_pingpong"
    check_programs "$work/guide_example" "$work/c_pingpong_static"
    ;;
pkg_config)
    prefix=$1 work=$2 src=$3
    rm -rf "$work"
    mkdir -p "$work"
    PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name odp.pc)")
    export PKG_CONFIG_PATH
    lib=$(pkg-config --variable=libdir odp)
    [ "$lib" = "$(dirname "$(find "$prefix" -name 'libodp.so.0')")" ] || die "odp.pc's libdir is $lib"
    c_example=$src/examples/c-pingpong/odp_rc_pingpong.c
    # shellcheck disable=SC2046 # pkg-config prints several words on purpose
    c++ -std=c++20 -o "$work/guide_example" "$src/tests/vm/guide/guide_example.cpp" \
        $(pkg-config --cflags --libs odp) -Wl,-rpath,"$lib"
    # shellcheck disable=SC2046
    cc -std=c11 -Wall -Wextra -pedantic -Werror -o "$work/c_pingpong" "$c_example" \
        $(pkg-config --cflags --libs odp libibverbs) -Wl,-rpath,"$lib"
    # Static: libodp.a plus what odp.pc's Libs.private and Requires.private add.
    # shellcheck disable=SC2046
    cc -std=c11 -o "$work/c_pingpong_static" "$c_example" $(pkg-config --cflags odp) \
        $(pkg-config --static --libs odp | sed 's/-lodp/-Wl,-Bstatic -lodp -Wl,-Bdynamic/')
    uses_libodp "$work/guide_example" "$prefix"
    uses_libodp "$work/c_pingpong" "$prefix"
    ! ldd "$work/c_pingpong_static" | grep -q libodp || die "c_pingpong_static loads libodp.so"
    check_programs "$work/guide_example" "$work/c_pingpong"
    check_programs "$work/guide_example" "$work/c_pingpong_static"
    ;;
*)
    die "unknown mode '$mode'"
    ;;
esac
