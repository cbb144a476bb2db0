# Test helpers shared by every folder.
#
# odp_add_unit_test(<target> SOURCES ... [LIBS ...])
#   A GoogleTest binary for the host (no RDMA device); every case gets the
#   ctest label "unit".
#
# odp_add_vm_test(<suite> KERNELS <k>... COMMAND <cmd>... [TIMEOUT s] [VM_ARGS ...])
#   One ctest entry per kernel, named vm.<suite>.<kernel>, label "vm": boots one
#   guest with scripts/odp-vm (rxe0, and siw0 where this build tree has
#   siw.ko, unless VM_ARGS says --device) and runs COMMAND in it (from the
#   build tree, as root).  One guest per suite, never per case: guests are slow.

set(ODP_VM_KERNELS 5.10 6.1 6.12 7.3 CACHE STRING "Guest kernels the vm tests run on")

function(odp_add_unit_test target)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${target} ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gmock GTest::gtest_main odp_warnings)
  gtest_discover_tests(${target} PROPERTIES LABELS unit TIMEOUT 120 DISCOVERY_TIMEOUT 60)
  set_property(GLOBAL APPEND PROPERTY ODP_UNIT_TEST_TARGETS ${target})
endfunction()

# `ninja unit-tests` builds every host test binary and nothing else (the
# sanitizer runs in scripts/test use it).
function(odp_add_unit_tests_target)
  get_property(targets GLOBAL PROPERTY ODP_UNIT_TEST_TARGETS)
  add_custom_target(unit-tests DEPENDS ${targets})
endfunction()

function(odp_add_vm_test suite)
  cmake_parse_arguments(ARG "" "TIMEOUT;DEVICES" "KERNELS;COMMAND;VM_ARGS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 900)
  endif()
  math(EXPR ctest_timeout "${ARG_TIMEOUT} + 120")
  foreach(kernel IN LISTS ARG_KERNELS)
    if(NOT kernel IN_LIST ODP_VM_KERNELS)
      continue()
    endif()
    # Only suites that test siw0 (DEVICES both) load siw.ko: a 6.12 guest of
    # vm.perf_two_hosts with siw.ko loaded but unused oopsed once in the slab
    # allocator under rxe's send path, cause not found yet.  A kernel siw.ko
    # is not built for gets rxe0 only; vm.smoke fails on the four supported
    # kernels without siw0.
    set(devices --device rxe)
    if(ARG_DEVICES STREQUAL "both")
      if(kernel IN_LIST ODP_SIW_KO_KERNELS)
        set(devices "")
      else()
        message(STATUS "vm.${suite}.${kernel}: rxe0 only, siw.ko is not built for Linux ${kernel}")
      endif()
    endif()
    add_test(NAME vm.${suite}.${kernel}
      COMMAND ${PROJECT_SOURCE_DIR}/scripts/odp-vm --kernel ${kernel}
              --siw-dir ${PROJECT_BINARY_DIR}/kernel-glue/siw ${devices}
              --timeout ${ARG_TIMEOUT} ${ARG_VM_ARGS} -- ${ARG_COMMAND}
      WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
    # Guests use both cores: never run two at once.
    set_tests_properties(vm.${suite}.${kernel} PROPERTIES
      LABELS "vm;vm-${kernel}" TIMEOUT ${ctest_timeout} RESOURCE_LOCK odp-vm)
  endforeach()
endfunction()
