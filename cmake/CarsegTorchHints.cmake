# Hints for find_package(Torch) against the Python environment's torch wheel.
#
# The CUDA torch wheel's TorchConfig needs the CUDA toolkit (headers, for CUDA::cudart) and
# libnvrtc, which the wheel ships under site-packages/nvidia/<cu>/lib. On a machine without a
# GPU nothing tells CMake where those are, so find_package(Torch) fails; we point at them here.
# Sets Torch_DIR (unless given), CUDA hints and CARSEG_SITE_PACKAGES; does not call find_package.
include_guard(GLOBAL)

# carseg_first_glob(VAR DOC GLOB... [EXCLUDE REGEX]): unless VAR is already set, the first file
# the globs find, tried in the order given (without the names matching REGEX), cached as a
# FILEPATH with DOC. Nothing found leaves VAR unset.
function(carseg_first_glob var doc)
  cmake_parse_arguments(PARSE_ARGV 2 _arg "" "EXCLUDE" "")
  if(${var})
    return()
  endif()
  foreach(_glob IN LISTS _arg_UNPARSED_ARGUMENTS)
    file(GLOB _found "${_glob}")
    if(_arg_EXCLUDE)
      list(FILTER _found EXCLUDE REGEX "${_arg_EXCLUDE}")
    endif()
    if(_found)
      list(GET _found 0 _first)
      set(${var} "${_first}" CACHE FILEPATH "${doc}")
      return()
    endif()
  endforeach()
endfunction()

if(NOT CARSEG_PYTHON_EXECUTABLE AND NOT Torch_DIR)
  if(DEFINED Python_EXECUTABLE AND EXISTS "${Python_EXECUTABLE}")
    set(_carseg_py "${Python_EXECUTABLE}")
  elseif(DEFINED Python3_EXECUTABLE AND EXISTS "${Python3_EXECUTABLE}")
    set(_carseg_py "${Python3_EXECUTABLE}")
  elseif(EXISTS "${CMAKE_SOURCE_DIR}/.venv/bin/python")
    set(_carseg_py "${CMAKE_SOURCE_DIR}/.venv/bin/python")
  elseif(DEFINED ENV{VIRTUAL_ENV} AND EXISTS "$ENV{VIRTUAL_ENV}/bin/python")
    set(_carseg_py "$ENV{VIRTUAL_ENV}/bin/python")
  else()
    find_package(Python3 COMPONENTS Interpreter)
    set(_carseg_py "${Python3_EXECUTABLE}")
  endif()
  set(CARSEG_PYTHON_EXECUTABLE "${_carseg_py}" CACHE FILEPATH "Python with torch installed")
endif()

if(NOT Torch_DIR)
  execute_process(
    COMMAND "${CARSEG_PYTHON_EXECUTABLE}" -c
            "import os, torch; print(torch.utils.cmake_prefix_path); print(os.path.dirname(os.path.dirname(torch.__file__)))"
    OUTPUT_VARIABLE _carseg_out RESULT_VARIABLE _carseg_rc ERROR_VARIABLE _carseg_err
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _carseg_rc EQUAL 0)
    message(FATAL_ERROR "carseg: cannot import torch with ${CARSEG_PYTHON_EXECUTABLE}: ${_carseg_err}"
                        "Set CARSEG_PYTHON_EXECUTABLE or Torch_DIR.")
  endif()
  string(REPLACE "\n" ";" _carseg_out "${_carseg_out}")
  list(GET _carseg_out 0 _carseg_torch_prefix)
  list(GET _carseg_out 1 _carseg_site)
  set(Torch_DIR "${_carseg_torch_prefix}/Torch" CACHE PATH "TorchConfig.cmake folder")
  set(CARSEG_SITE_PACKAGES "${_carseg_site}" CACHE PATH "site-packages holding torch")
endif()
if(NOT CARSEG_SITE_PACKAGES)
  get_filename_component(CARSEG_SITE_PACKAGES "${Torch_DIR}/../../../.." ABSOLUTE)
endif()

# CUDA wheels: torch was built with CUDA if its Caffe2 config mentions CUDA.
if(EXISTS "${Torch_DIR}/../Caffe2/public/cuda.cmake")
  if(NOT CUDAToolkit_ROOT AND NOT DEFINED ENV{CUDAToolkit_ROOT})
    foreach(_c "$ENV{CUDA_HOME}" "$ENV{CUDA_PATH}" /usr/local/cuda /opt/cuda)
      if(_c AND EXISTS "${_c}/include/cuda_runtime_api.h")
        set(CUDAToolkit_ROOT "${_c}" CACHE PATH "CUDA toolkit for torch's CUDA headers")
        break()
      endif()
    endforeach()
  endif()
  # torch's cuda.cmake still calls the old FindCUDA, which reads CUDA_TOOLKIT_ROOT_DIR, then
  # enables the CUDA language, which needs nvcc.
  if(CUDAToolkit_ROOT AND NOT CUDA_TOOLKIT_ROOT_DIR)
    set(CUDA_TOOLKIT_ROOT_DIR "${CUDAToolkit_ROOT}" CACHE PATH "CUDA toolkit (FindCUDA)")
  endif()
  if(CUDAToolkit_ROOT AND NOT CMAKE_CUDA_COMPILER AND EXISTS "${CUDAToolkit_ROOT}/bin/nvcc")
    set(CMAKE_CUDA_COMPILER "${CUDAToolkit_ROOT}/bin/nvcc" CACHE FILEPATH "nvcc")
  endif()
  carseg_first_glob(CUDA_nvrtc_LIBRARY "libnvrtc from the torch wheel"
                    "${CARSEG_SITE_PACKAGES}/nvidia/cu*/lib/libnvrtc.so.*"
                    "${CARSEG_SITE_PACKAGES}/nvidia/cuda_nvrtc/lib/libnvrtc.so.*"
                    EXCLUDE "builtins|alt")
endif()

