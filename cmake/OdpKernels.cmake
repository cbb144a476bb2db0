# Guest kernels: scripts/setup unpacks each one into
# ${ODP_CACHE_DIR}/kernels/<kernel>/ and writes its `uname -r` into a file
# named "release" there.  For every kernel this sets
#   ODP_KERNEL_RELEASE_<id>  e.g. 6.1.0-56-amd64   (id: 6_1, 6_12, 7_3, 6_12_debug)
#   ODP_KERNEL_BUILD_<id>    the kbuild tree for out-of-tree modules, if its
#                            headers are installed on this machine (a debug
#                            kernel built by scripts/debug-kernel keeps its
#                            own next to it, in build/)
set(ODP_CACHE_DIR "$ENV{ODP_CACHE_DIR}")
if(NOT ODP_CACHE_DIR)
  set(ODP_CACHE_DIR /var/cache/odp-layer)
endif()

foreach(kernel IN LISTS ODP_VM_KERNELS)
  string(REGEX REPLACE "[.-]" "_" id ${kernel})
  set(release_file ${ODP_CACHE_DIR}/kernels/${kernel}/release)
  set(ODP_KERNEL_RELEASE_${id} "")
  set(ODP_KERNEL_BUILD_${id} "")
  if(EXISTS ${release_file})
    file(STRINGS ${release_file} release LIMIT_COUNT 1)
    set(ODP_KERNEL_RELEASE_${id} ${release})
    if(EXISTS /usr/src/linux-headers-${release}/Makefile)
      set(ODP_KERNEL_BUILD_${id} /usr/src/linux-headers-${release})
    elseif(EXISTS ${ODP_CACHE_DIR}/kernels/${kernel}/build/Makefile)
      set(ODP_KERNEL_BUILD_${id} ${ODP_CACHE_DIR}/kernels/${kernel}/build)
    endif()
  endif()
endforeach()
