# Finds libtorch from the Python environment's torch wheel, with no flags from the user.
# Sets CARSEG_TORCH_HAS_CUDA, CARSEG_TORCH_LIB_DIR and CARSEG_CUDA_EXTRA_INCLUDE_DIRS.
include_guard(GLOBAL)
include(${CMAKE_CURRENT_LIST_DIR}/CarsegTorchHints.cmake)
find_package(Torch REQUIRED)
get_filename_component(CARSEG_TORCH_LIB_DIR "${TORCH_LIBRARY}" DIRECTORY)
if(TORCH_CUDA_LIBRARIES OR TARGET torch_cuda)
  set(CARSEG_TORCH_HAS_CUDA ON)
else()
  set(CARSEG_TORCH_HAS_CUDA OFF)
endif()

# ATen/cuda/CUDAContext.h includes cusparse.h, cublas_v2.h and cusolverDn.h, which a bare CUDA
# toolkit may lack; the torch wheel's nvidia packages ship them.
set(CARSEG_CUDA_EXTRA_INCLUDE_DIRS "")
if(CARSEG_TORCH_HAS_CUDA)
  file(GLOB _carseg_cuda_inc "${CARSEG_SITE_PACKAGES}/nvidia/cu*/include"
       "${CARSEG_SITE_PACKAGES}/nvidia/cusparse/include" "${CARSEG_SITE_PACKAGES}/nvidia/cublas/include"
       "${CARSEG_SITE_PACKAGES}/nvidia/cusolver/include")
  foreach(_d IN LISTS _carseg_cuda_inc)
    if(EXISTS "${_d}/cusparse.h" OR EXISTS "${_d}/cublas_v2.h" OR EXISTS "${_d}/cusolverDn.h")
      list(APPEND CARSEG_CUDA_EXTRA_INCLUDE_DIRS "${_d}")
    endif()
  endforeach()
endif()
