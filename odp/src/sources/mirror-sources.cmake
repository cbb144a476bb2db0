# The odp::Mirror sources (mirror engineer). odp/CMakeLists.txt can take them
# with include(src/sources/mirror-sources.cmake) + ${ODP_MIRROR_SOURCES}; they
# need odp::mirror_uapi and Boost::headers.
#
# odp_link_mirror(<target>): links <target> with the Mirror: through odp::odp
# once libodp compiles src/mirror.cpp, else through a standalone static
# library built from the same sources.
set(ODP_MIRROR_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/../mirror.cpp
  ${CMAKE_CURRENT_LIST_DIR}/common.cpp
  ${CMAKE_CURRENT_LIST_DIR}/fake_source.cpp
  ${CMAKE_CURRENT_LIST_DIR}/none_source.cpp
  ${CMAKE_CURRENT_LIST_DIR}/page_copy_probe.cpp
  ${CMAKE_CURRENT_LIST_DIR}/userfaultfd_source.cpp
  ${CMAKE_CURRENT_LIST_DIR}/module_source.cpp)

function(odp_link_mirror target)
  get_target_property(odp_sources odp SOURCES)
  set(odp_has_mirror FALSE)
  foreach(source IN LISTS odp_sources)
    if(source MATCHES "(^|/)mirror\\.cpp$")
      set(odp_has_mirror TRUE)
    endif()
  endforeach()
  if(odp_has_mirror)
    target_link_libraries(${target} PRIVATE odp::odp)
    return()
  endif()
  if(NOT TARGET odp_mirror_standalone)
    add_library(odp_mirror_standalone STATIC ${ODP_MIRROR_SOURCES})
    target_link_libraries(odp_mirror_standalone
      PUBLIC odp::odp odp::mirror_uapi Boost::headers Threads::Threads
      PRIVATE odp_warnings)
  endif()
  target_link_libraries(${target} PRIVATE odp_mirror_standalone)
endfunction()
