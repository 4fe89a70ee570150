# Finds every system package autorep builds against. Each one comes from a Debian 12 package;
# when one is missing, configuration stops with the name of the package to install
# (scripts/setup.sh installs them all).

function(autorep_require found what debian_package)
  if(NOT ${found})
    message(FATAL_ERROR
      "autorep: ${what} not found. Install it with:\n"
      "    sudo apt-get install ${debian_package}\n"
      "(or run scripts/setup.sh, which installs every dependency). "
      "For a LibTorch outside the system paths pass -DCMAKE_PREFIX_PATH=<its cmake prefix>.")
  endif()
endfunction()

# LibTorch: Debian's libtorch-dev (1.13, CPU) or any newer one found through CMAKE_PREFIX_PATH.
find_package(Torch QUIET)
autorep_require(Torch_FOUND "LibTorch (TorchConfig.cmake)" "libtorch-dev")
# Torch's imported targets carry its ABI flags; TORCH_CXX_FLAGS must reach our sources too.
set(AUTOREP_TORCH_CXX_FLAGS "${TORCH_CXX_FLAGS}")
if(NOT DEFINED Torch_VERSION OR Torch_VERSION STREQUAL "")
  set(Torch_VERSION "${PACKAGE_VERSION}")
endif()

# CUDA kernels are compiled when the LibTorch found was built with CUDA and a CUDA compiler
# (nvcc) is there. A CUDA LibTorch without nvcc still trains on the GPU: the gate then runs its
# ATen composite there (slower; gate_function.cpp).
set(AUTOREP_TORCH_CUDA OFF)
set(AUTOREP_WITH_CUDA OFF)
if(TARGET torch_cuda OR CAFFE2_USE_CUDA OR TORCH_CUDA_LIBRARIES)
  set(AUTOREP_TORCH_CUDA ON)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(AUTOREP_WITH_CUDA ON)
  else()
    message(WARNING "autorep: LibTorch has CUDA but no CUDA compiler (nvcc) was found: the gate's CUDA "
                    "kernels are left out and it runs its ATen composite on the GPU (slower). Put nvcc on "
                    "PATH or pass -DCMAKE_CUDA_COMPILER=<nvcc> to build them.")
  endif()
endif()

find_package(nlohmann_json 3 QUIET)
autorep_require(nlohmann_json_FOUND "nlohmann/json" "nlohmann-json3-dev")

find_package(CLI11 QUIET)
if(NOT CLI11_FOUND)
  find_path(AUTOREP_CLI11_INCLUDE CLI/CLI.hpp)
  autorep_require(AUTOREP_CLI11_INCLUDE "CLI11" "libcli11-dev")
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  set_target_properties(CLI11::CLI11 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${AUTOREP_CLI11_INCLUDE})
endif()

find_package(ZLIB QUIET)
autorep_require(ZLIB_FOUND "zlib" "zlib1g-dev")

find_package(JPEG QUIET)
autorep_require(JPEG_FOUND "libjpeg (libjpeg-turbo)" "libjpeg-dev")

find_package(Threads REQUIRED)

# Debian's LibTorch runs at::parallel_for as an inline `#pragma omp parallel`: every source that
# uses it must be compiled with OpenMP, or it silently runs on one thread.
find_package(OpenMP COMPONENTS CXX)

if(AUTOREP_BUILD_TESTS)
  find_package(Catch2 2 QUIET)
  if(NOT Catch2_FOUND)
    find_path(AUTOREP_CATCH2_INCLUDE catch2/catch.hpp)
    autorep_require(AUTOREP_CATCH2_INCLUDE "Catch2 v2" "catch2")
    add_library(Catch2::Catch2 INTERFACE IMPORTED)
    set_target_properties(Catch2::Catch2 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${AUTOREP_CATCH2_INCLUDE})
  endif()
endif()

# Gloo headers are included by LibTorch's c10d headers (multi-process training).
find_path(AUTOREP_GLOO_INCLUDE gloo/algorithm.h)
set(AUTOREP_WITH_DIST OFF)
set(AUTOREP_WITH_NCCL OFF)
if(AUTOREP_GLOO_INCLUDE AND EXISTS "${TORCH_INSTALL_PREFIX}/include/torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
  set(AUTOREP_WITH_DIST ON)
  # A CUDA LibTorch ships c10d's NCCL process group (its header is guarded by USE_C10D_NCCL).
  if(AUTOREP_TORCH_CUDA AND EXISTS "${TORCH_INSTALL_PREFIX}/include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp")
    set(AUTOREP_WITH_NCCL ON)
  endif()
elseif(NOT AUTOREP_GLOO_INCLUDE)
  message(STATUS "autorep: no Gloo headers (Debian package libgloo-dev): multi-process training is left out")
endif()

# The ONNX export (trainer/deploy): ONNX's protobuf classes, protobuf, and OpenCV DNN to check
# the files. -DAUTOREP_ONNX=OFF leaves them out (the GPU check builds without Debian's packages).
if(AUTOREP_ONNX)
  find_path(AUTOREP_ONNX_INCLUDE onnx/onnx-ml.pb.h)
  find_library(AUTOREP_ONNX_PROTO_LIBRARY onnx_proto)
  autorep_require(AUTOREP_ONNX_INCLUDE "ONNX protobuf headers (onnx/onnx-ml.pb.h)" "libonnx-dev")
  autorep_require(AUTOREP_ONNX_PROTO_LIBRARY "ONNX protobuf library (libonnx_proto)" "libonnx-dev")
  find_package(Protobuf QUIET)
  autorep_require(Protobuf_FOUND "protobuf" "libprotobuf-dev")
  find_path(AUTOREP_OPENCV_INCLUDE opencv2/dnn.hpp PATH_SUFFIXES opencv4)
  find_library(AUTOREP_OPENCV_DNN_LIBRARY opencv_dnn)
  find_library(AUTOREP_OPENCV_CORE_LIBRARY opencv_core)
  autorep_require(AUTOREP_OPENCV_INCLUDE "OpenCV DNN headers (opencv2/dnn.hpp)" "libopencv-dnn-dev")
  autorep_require(AUTOREP_OPENCV_DNN_LIBRARY "OpenCV DNN library (libopencv_dnn)" "libopencv-dnn-dev")
  autorep_require(AUTOREP_OPENCV_CORE_LIBRARY "OpenCV core library (libopencv_core)" "libopencv-dnn-dev")
endif()

# A helper that every autorep library target uses for its common settings:
#   autorep_library(NAME SOURCES... [KERNELS SOURCES...])
# In Release the SOURCES compile at -O1: they are the glue around LibTorch's operators (models,
# training loop, methods, file formats, commands), whose time goes to the operators, and -O1
# compiles them in about three quarters of -O3's time. The KERNELS, the loops over tensor
# elements (layers/kernels/), compile at -O3 (Release's own flags), each on its own: they include
# no LibTorch header beyond <ATen/Parallel.h>, so they need neither the precompiled header nor
# the unity file, and a fresh build compiles them on one core while the other makes the
# precompiled header.
function(autorep_library name)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "" "KERNELS")
  add_library(${name} STATIC ${ARG_UNPARSED_ARGUMENTS} ${ARG_KERNELS})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${TORCH_LIBRARIES} nlohmann_json::nlohmann_json Threads::Threads)
  if(OpenMP_CXX_FOUND)
    target_link_libraries(${name} PUBLIC OpenMP::OpenMP_CXX)
  endif()
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
  target_compile_options(${name} PRIVATE $<$<AND:$<CONFIG:Release>,$<COMPILE_LANGUAGE:CXX>>:-O1>)
  if(AUTOREP_UNITY_BUILD)
    set_target_properties(${name} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 0)
  endif()
  # A source's own options come after the target's on the command line: -O3 wins over -O1.
  set_source_files_properties(${ARG_KERNELS} PROPERTIES
    COMPILE_OPTIONS "$<$<CONFIG:Release>:-O3>" SKIP_PRECOMPILE_HEADERS ON SKIP_UNITY_BUILD_INCLUSION ON)
  # Every other source includes LibTorch: the first library compiles <torch/torch.h> once as a
  # precompiled header and every later one reuses it (they share flags and definitions; a
  # precompiled header must be used with the flags it was made with).
  get_property(_pch_owner GLOBAL PROPERTY AUTOREP_PCH_OWNER)
  if(_pch_owner)
    target_precompile_headers(${name} REUSE_FROM ${_pch_owner})
  else()
    target_precompile_headers(${name} PRIVATE "$<$<COMPILE_LANGUAGE:CXX>:<torch/torch.h>>")
    set_property(GLOBAL PROPERTY AUTOREP_PCH_OWNER ${name})
  endif()
  if(AUTOREP_TORCH_CXX_FLAGS)
    separate_arguments(_flags UNIX_COMMAND "${AUTOREP_TORCH_CXX_FLAGS}")
    target_compile_options(${name} PUBLIC $<$<COMPILE_LANGUAGE:CXX>:${_flags}>)
  endif()
endfunction()
