#!/bin/sh
# The ABI guard of libodp.so: its exported symbols against the list kept in
# the tree (odp/libodp.symbols: the SONAME, then one symbol per line, C names
# and demangled C++ names, sorted).
#   check-symbols.sh LIBODP_SO LIST            fails when they differ, saying what to do
#   check-symbols.sh LIBODP_SO LIST --update   rewrites LIST from the library
set -eu
lib=$1 list=$2
update_command="ninja -C <build> update-abi-list (then commit odp/libodp.symbols)"

soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
current=$(mktemp)
listed=$(mktemp)
trap 'rm -f "$current" "$listed"' EXIT
# Defined dynamic symbols without their version (ODP_0), demangled, minus
# the version node itself (type A).
nm -D --defined-only "$lib" | awk '$2 != "A" { print $3 }' | sed 's/@.*//' | c++filt |
    LC_ALL=C sort -u >"$current"

if [ "${3:-}" = --update ]; then
    {
        echo "# The symbols libodp.so exports (C, and C++ demangled), checked by the unit"
        echo "# test abi.symbols (tests/unit/abi). A symbol may only disappear with a new"
        echo "# SONAME (ODP_SOVERSION in odp/CMakeLists.txt). Regenerate with"
        echo "# $update_command."
        echo "SONAME $soname"
        cat "$current"
    } >"$list"
    echo "abi: wrote $(wc -l <"$current") symbols of $soname to $list"
    exit 0
fi

listed_soname=$(sed -n 's/^SONAME //p' "$list")
grep -v '^#' "$list" | grep -v '^SONAME ' | LC_ALL=C sort -u >"$listed"
gone=$(LC_ALL=C comm -23 "$listed" "$current")
added=$(LC_ALL=C comm -13 "$listed" "$current")
status=0
if [ "$soname" != "$listed_soname" ]; then
    echo "abi: libodp.so's SONAME is $soname, the list was made for $listed_soname:"
    echo "  after a SONAME change, regenerate the list: $update_command"
    status=1
elif [ -n "$gone" ]; then
    echo "abi: symbols of $soname are gone (programs linked against it would no longer load):"
    echo "$gone" | sed 's/^/  - /'
    echo "  Bring them back, or, if the break is meant, bump ODP_SOVERSION in odp/CMakeLists.txt"
    echo "  (a new SONAME) and regenerate the list: $update_command"
    status=1
fi
if [ -n "$added" ] && [ "$status" = 0 ]; then
    echo "abi: libodp.so exports symbols that odp/libodp.symbols does not list:"
    echo "$added" | sed 's/^/  + /'
    echo "  If they are meant to be public API, add them: $update_command."
    echo "  If not, they need no ODP_API (odp/export.h) or belong in odp::detail."
    status=1
fi
[ "$status" = 0 ] && echo "abi: $(wc -l <"$current") symbols of $soname as listed"
exit $status
