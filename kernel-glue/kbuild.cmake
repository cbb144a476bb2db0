# Builds odp_mirror.ko out of tree in BUILD_DIR: kbuild writes its objects
# next to the sources, so the sources are copied there first.
#   cmake -DSOURCE_DIR= -DBUILD_DIR= -DKERNEL_DIR= -DMAKE= -DWERROR=ON|OFF -P kbuild.cmake
file(MAKE_DIRECTORY ${BUILD_DIR}/include/uapi)
foreach(f odp_mirror.c Kbuild include/uapi/odp_mirror.h)
  file(COPY_FILE ${SOURCE_DIR}/${f} ${BUILD_DIR}/${f} ONLY_IF_DIFFERENT)
endforeach()
execute_process(
  COMMAND ${MAKE} -C ${KERNEL_DIR} M=${BUILD_DIR} modules
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out)
message("${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "odp_mirror.ko: kbuild against ${KERNEL_DIR} failed (exit ${rc}), see above")
endif()
if(WERROR AND out MATCHES "[Ww]arning")
  file(REMOVE ${BUILD_DIR}/odp_mirror.ko)
  message(FATAL_ERROR "odp_mirror.ko: kbuild against ${KERNEL_DIR} printed warnings and ODP_WERROR is ON")
endif()
