# Builds an out-of-tree module MODULE.ko in BUILD_DIR: kbuild writes its
# objects next to the sources, so SOURCES (paths relative to SOURCE_DIR,
# separated by ':') are copied there first.  MAKE_ARGS (':'-separated) go to
# make, e.g. CONFIG_RDMA_SIW=m for a kernel driver's own Makefile.  With
# CHROOT (a Debian build root from scripts/setup, for headers that need its
# toolchain) kbuild runs inside it, in a folder of its /tmp named after
# BUILD_DIR, and the module is copied back.  objtool reads /proc, so the root
# gets its own /proc in a private mount namespace (gone when make exits).
#   cmake -DMODULE= -DSOURCE_DIR= -DSOURCES= -DBUILD_DIR= -DKERNEL_DIR= [-DCHROOT=]
#         [-DMAKE_ARGS=] -DMAKE= -DWERROR=ON|OFF -P kbuild.cmake
string(REPLACE ":" ";" sources "${SOURCES}")
string(REPLACE ":" ";" make_args "${MAKE_ARGS}")
set(make_dir ${BUILD_DIR})
set(make_cmd ${MAKE})
if(CHROOT)
  string(SHA1 key ${BUILD_DIR})
  string(SUBSTRING ${key} 0 16 key)
  set(make_dir /tmp/odp-kbuild-${key})
  set(make_cmd unshare --mount --fork --mount-proc=/proc --root=${CHROOT} make)
endif()
foreach(f IN LISTS sources)
  get_filename_component(subdir ${f} DIRECTORY)
  file(MAKE_DIRECTORY ${CHROOT}${make_dir}/${subdir})
  file(COPY_FILE ${SOURCE_DIR}/${f} ${CHROOT}${make_dir}/${f} ONLY_IF_DIFFERENT)
endforeach()
execute_process(
  COMMAND ${make_cmd} -C ${KERNEL_DIR} M=${make_dir} ${make_args} modules
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out)
message("${out}")
set(where ${KERNEL_DIR})
if(CHROOT)
  set(where "${KERNEL_DIR} in ${CHROOT}")
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${MODULE}.ko: kbuild against ${where} failed (exit ${rc}), see above")
endif()
if(WERROR AND out MATCHES "[Ww]arning")
  file(REMOVE ${BUILD_DIR}/${MODULE}.ko ${CHROOT}${make_dir}/${MODULE}.ko)
  message(FATAL_ERROR "${MODULE}.ko: kbuild against ${where} printed warnings and ODP_WERROR is ON")
endif()
if(CHROOT)
  file(MAKE_DIRECTORY ${BUILD_DIR})
  file(COPY_FILE ${CHROOT}${make_dir}/${MODULE}.ko ${BUILD_DIR}/${MODULE}.ko)
endif()
