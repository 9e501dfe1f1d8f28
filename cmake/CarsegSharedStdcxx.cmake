# libstdc++ linked as the shared library, never as a static copy.
#
# A shared object with its own static copy of libstdc++, loaded into a process that already has
# the shared libstdc++ (Python with torch), crashes at its first use of a locale: the two
# copies' facet registries disagree. The second GPU run (H200 image, torch 2.11) crashed so in
# both of its Python processes that loaded a library built there: carseg's bindings
# (std::ostream inserting a number) and AOTInductor's wrapper.so (std::regex). Both had
# libstdc++'s own functions (std::ostream::_M_insert<long>) in their dynamic symbol tables.
# A compiler links libstdc++ statically when asked (-static-libstdc++ in the flags, LDFLAGS or
# a wrapper script) or when it finds libstdc++.a but no libstdc++.so link. So, with GCC on
# Linux, the shared library the compiler would use (libstdc++.so.6) is named on the link line
# ahead of the compiler's own -lstdc++: every reference binds to it, and nothing is taken from
# an archive. Where libstdc++ would be linked as usual this changes nothing.
# Sets CARSEG_SHARED_STDCXX (a path, or empty: not GCC on Linux, or not found).
include_guard(GLOBAL)

set(CARSEG_SHARED_STDCXX "")
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libstdc++.so.6
                  OUTPUT_VARIABLE _carseg_stdcxx_so OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libstdc++.so
                  OUTPUT_VARIABLE _carseg_stdcxx_link OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(_carseg_stdcxx_why "")
  if(NOT IS_ABSOLUTE "${_carseg_stdcxx_link}" OR NOT EXISTS "${_carseg_stdcxx_link}")
    set(_carseg_stdcxx_why "${CMAKE_CXX_COMPILER} finds no libstdc++.so link")
  endif()
  foreach(_flags IN ITEMS "${CMAKE_SHARED_LINKER_FLAGS}" "${CMAKE_MODULE_LINKER_FLAGS}"
                          "${CMAKE_EXE_LINKER_FLAGS}" "$ENV{LDFLAGS}" "${CMAKE_CXX_FLAGS}")
    if(_flags MATCHES "-static-libstdc\\+\\+")
      set(_carseg_stdcxx_why "the link flags ask for -static-libstdc++")
    endif()
  endforeach()
  if(IS_ABSOLUTE "${_carseg_stdcxx_so}" AND EXISTS "${_carseg_stdcxx_so}")
    get_filename_component(CARSEG_SHARED_STDCXX "${_carseg_stdcxx_so}" REALPATH)
    if(_carseg_stdcxx_why)
      message(STATUS "carseg: ${_carseg_stdcxx_why}; linking the shared ${CARSEG_SHARED_STDCXX} "
                     "ahead of it (a static copy crashes in Python beside torch's)")
    endif()
  elseif(_carseg_stdcxx_why)
    message(WARNING "carseg: ${_carseg_stdcxx_why}, and libstdc++.so.6 was not found either: "
                    "the bindings may link a static libstdc++ and crash when Python loads them")
  endif()
endif()
