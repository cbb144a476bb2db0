# Builds odp_mirror.ko out of tree in BUILD_DIR: kbuild writes its objects
# next to the sources, so the sources are copied there first.  With CHROOT
# (a Debian build root from scripts/setup, for headers that need its
# toolchain) kbuild runs inside it, in a folder of its /tmp named after
# BUILD_DIR, and the module is copied back.  objtool reads /proc, so the root
# gets its own /proc in a private mount namespace (gone when make exits).
#   cmake -DSOURCE_DIR= -DBUILD_DIR= -DKERNEL_DIR= [-DCHROOT=] -DMAKE= -DWERROR=ON|OFF -P kbuild.cmake
set(sources odp_mirror.c odp_compat.h Kbuild include/uapi/odp_mirror.h)
set(make_dir ${BUILD_DIR})
set(make_cmd ${MAKE})
if(CHROOT)
  string(SHA1 key ${BUILD_DIR})
  string(SUBSTRING ${key} 0 16 key)
  set(make_dir /tmp/odp-kbuild-${key})
  set(make_cmd unshare --mount --fork --mount-proc=/proc --root=${CHROOT} make)
endif()
file(MAKE_DIRECTORY ${CHROOT}${make_dir}/include/uapi)
foreach(f IN LISTS sources)
  file(COPY_FILE ${SOURCE_DIR}/${f} ${CHROOT}${make_dir}/${f} ONLY_IF_DIFFERENT)
endforeach()
execute_process(
  COMMAND ${make_cmd} -C ${KERNEL_DIR} M=${make_dir} modules
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out)
message("${out}")
set(where ${KERNEL_DIR})
if(CHROOT)
  set(where "${KERNEL_DIR} in ${CHROOT}")
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "odp_mirror.ko: kbuild against ${where} failed (exit ${rc}), see above")
endif()
if(WERROR AND out MATCHES "[Ww]arning")
  file(REMOVE ${BUILD_DIR}/odp_mirror.ko ${CHROOT}${make_dir}/odp_mirror.ko)
  message(FATAL_ERROR "odp_mirror.ko: kbuild against ${where} printed warnings and ODP_WERROR is ON")
endif()
if(CHROOT)
  file(MAKE_DIRECTORY ${BUILD_DIR})
  file(COPY_FILE ${CHROOT}${make_dir}/odp_mirror.ko ${BUILD_DIR}/odp_mirror.ko)
endif()
