# Guest kernels: scripts/setup unpacks each one into
# ${ODP_CACHE_DIR}/kernels/<kernel>/ and writes its `uname -r` into a file
# named "release" there.  For every kernel this sets
#   ODP_KERNEL_RELEASE_<id>  e.g. 6.1.0-56-amd64   (id: 5_10, 6_1, 6_12, 7_3, 6_12_debug)
#   ODP_KERNEL_BUILD_<id>    the kbuild tree for out-of-tree modules, if its
#                            headers are there: installed on this machine
#                            (6.1, 6.12), unpacked next to the kernel (5.10),
#                            in a Debian build root (7.3), or the debug
#                            kernel's own build tree (scripts/debug-kernel)
#   ODP_KERNEL_CHROOT_<id>   that build root (ODP_KERNEL_BUILD_<id> is a path
#                            inside it), empty when kbuild runs on this machine
set(ODP_CACHE_DIR "$ENV{ODP_CACHE_DIR}")
if(NOT ODP_CACHE_DIR)
  set(ODP_CACHE_DIR /var/cache/odp-layer)
endif()

foreach(kernel IN LISTS ODP_VM_KERNELS)
  string(REGEX REPLACE "[.-]" "_" id ${kernel})
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
    elseif(EXISTS ${ODP_CACHE_DIR}/kernels/${kernel}/build/Makefile)
      set(ODP_KERNEL_BUILD_${id} ${ODP_CACHE_DIR}/kernels/${kernel}/build)
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

# siw (soft-iWARP) is in no Debian guest kernel's configuration; scripts/setup
# extracts its source from the kernel's own linux-source package into
# ${ODP_CACHE_DIR}/kernels/<kernel>/siw.  ODP_KERNEL_SIW_SOURCE_<id> is that
# folder, empty when it is not there.
foreach(kernel IN LISTS ODP_VM_KERNELS)
  string(REGEX REPLACE "[.-]" "_" id ${kernel})
  set(ODP_KERNEL_SIW_SOURCE_${id} "")
  if(EXISTS ${ODP_CACHE_DIR}/kernels/${kernel}/siw/source-version)
    set(ODP_KERNEL_SIW_SOURCE_${id} ${ODP_CACHE_DIR}/kernels/${kernel}/siw)
  endif()
endforeach()

find_program(ODP_KBUILD_MAKE make)

# odp_add_kernel_module(<module> KERNEL <kernel> SOURCE_DIR <dir> SOURCES <file>...
#                       [MAKE_ARGS <arg>...] RESULT <var>)
#   Builds <module>.ko out of tree against <kernel>'s headers, into
#   ${CMAKE_CURRENT_BINARY_DIR}/<kernel>/<module>.ko (target <module>_ko_<id>,
#   part of `all`), inside the kernel's build root when its headers need one.
#   Sets <var> to TRUE, or to FALSE after saying why it cannot be built here.
function(odp_add_kernel_module module)
  cmake_parse_arguments(ARG "" "KERNEL;SOURCE_DIR;RESULT" "SOURCES;MAKE_ARGS" ${ARGN})
  set(${ARG_RESULT} FALSE PARENT_SCOPE)
  string(REGEX REPLACE "[.-]" "_" id ${ARG_KERNEL})
  set(kdir "${ODP_KERNEL_BUILD_${id}}")
  set(build_root "${ODP_KERNEL_CHROOT_${id}}")
  if(NOT ODP_KBUILD_MAKE)
    message(STATUS "${module}.ko: not built, `make` is missing (apt-get install make)")
    return()
  endif()
  if(NOT kdir)
    message(STATUS "${module}.ko for Linux ${ARG_KERNEL}: skipped, its kernel headers are not "
                   "there (release '${ODP_KERNEL_RELEASE_${id}}'; scripts/setup fetches them)")
    return()
  endif()
  # 7.3's headers run only in their Debian 13 build root (scripts/setup),
  # entered with chroot, which takes root.
  set(where "")
  if(build_root)
    execute_process(COMMAND id -u OUTPUT_VARIABLE uid OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT uid STREQUAL "0")
      message(STATUS "${module}.ko for Linux ${ARG_KERNEL}: skipped, building in ${build_root} "
                     "takes chroot (configure as root)")
      return()
    endif()
    set(where " in the build root ${build_root}")
  endif()
  set(dir ${CMAKE_CURRENT_BINARY_DIR}/${ARG_KERNEL})
  list(TRANSFORM ARG_SOURCES PREPEND ${ARG_SOURCE_DIR}/ OUTPUT_VARIABLE inputs)
  list(JOIN ARG_SOURCES ":" sources)
  list(JOIN ARG_MAKE_ARGS ":" make_args)
  add_custom_command(
    OUTPUT ${dir}/${module}.ko
    COMMAND ${CMAKE_COMMAND} -DMODULE=${module} -DSOURCE_DIR=${ARG_SOURCE_DIR} -DSOURCES=${sources}
            -DBUILD_DIR=${dir} -DKERNEL_DIR=${kdir} -DCHROOT=${build_root} -DMAKE_ARGS=${make_args}
            -DMAKE=${ODP_KBUILD_MAKE} -DWERROR=${ODP_WERROR} -P ${PROJECT_SOURCE_DIR}/cmake/kbuild.cmake
    DEPENDS ${inputs} ${PROJECT_SOURCE_DIR}/cmake/kbuild.cmake
    COMMENT "Building ${module}.ko for Linux ${ARG_KERNEL} (${ODP_KERNEL_RELEASE_${id}})${where}"
    VERBATIM)
  add_custom_target(${module}_ko_${id} ALL DEPENDS ${dir}/${module}.ko)
  set(${ARG_RESULT} TRUE PARENT_SCOPE)
endfunction()
