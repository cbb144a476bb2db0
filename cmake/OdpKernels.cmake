# Guest kernels: scripts/setup unpacks each one into
# ${ODP_CACHE_DIR}/kernels/<kernel>/ and writes its `uname -r` into a file
# named "release" there.  For every kernel this sets
#   ODP_KERNEL_RELEASE_<id>  e.g. 6.1.0-56-amd64   (id: 5_10, 6_1, 6_12, 7_3)
#   ODP_KERNEL_BUILD_<id>    the kbuild tree for out-of-tree modules, if its
#                            headers are there: installed on this machine
#                            (6.1, 6.12), unpacked next to the kernel (5.10),
#                            or in a Debian build root (7.3)
#   ODP_KERNEL_CHROOT_<id>   that build root (ODP_KERNEL_BUILD_<id> is a path
#                            inside it), empty when kbuild runs on this machine
set(ODP_CACHE_DIR "$ENV{ODP_CACHE_DIR}")
if(NOT ODP_CACHE_DIR)
  set(ODP_CACHE_DIR /var/cache/odp-layer)
endif()

foreach(kernel IN LISTS ODP_VM_KERNELS)
  string(REPLACE "." "_" id ${kernel})
  set(release_file ${ODP_CACHE_DIR}/kernels/${kernel}/release)
  set(ODP_KERNEL_RELEASE_${id} "")
  set(ODP_KERNEL_BUILD_${id} "")
  set(ODP_KERNEL_CHROOT_${id} "")
  if(EXISTS ${release_file})
    file(STRINGS ${release_file} release LIMIT_COUNT 1)
    set(ODP_KERNEL_RELEASE_${id} ${release})
    set(headers /usr/src/linux-headers-${release})
    file(GLOB build_roots LIST_DIRECTORIES true ${ODP_CACHE_DIR}/roots/*)
    if(EXISTS ${headers}/Makefile)
      set(ODP_KERNEL_BUILD_${id} ${headers})
    elseif(EXISTS ${ODP_CACHE_DIR}/kernels/${kernel}/headers${headers}/Makefile)
      set(ODP_KERNEL_BUILD_${id} ${ODP_CACHE_DIR}/kernels/${kernel}/headers${headers})
    else()
      foreach(build_root IN LISTS build_roots)
        if(EXISTS ${build_root}${headers}/Makefile)
          set(ODP_KERNEL_BUILD_${id} ${headers})
          set(ODP_KERNEL_CHROOT_${id} ${build_root})
        endif()
      endforeach()
    endif()
  endif()
endforeach()
