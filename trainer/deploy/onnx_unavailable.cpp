// A build without ONNX support (-DAUTOREP_ONNX=OFF): the ONNX functions say how to get it.
#include <torch/torch.h>

#include <stdexcept>

#include "trainer/deploy/onnx_export.h"
#include "trainer/deploy/onnx_runtime.h"

namespace autorep::trainer::deploy {
namespace {

[[noreturn]] void unavailable() {
  throw std::runtime_error(
      "this autorep was built without the ONNX export: install libonnx-dev libprotobuf-dev libopencv-dnn-dev "
      "(scripts/setup.sh does) and configure with -DAUTOREP_ONNX=ON");
}

}  // namespace

bool onnx_available() { return false; }

std::string onnx_bytes(models::NetImpl&, const exports::MaskExport&, const Normalisation&, const OnnxOptions&,
                       OnnxSummary&) {
  unavailable();
}

OnnxSummary write_onnx(models::NetImpl&, const exports::MaskExport&, const Normalisation&, const std::string&,
                       const OnnxOptions&) {
  unavailable();
}

struct OpenCvNet::Impl {};
OpenCvNet::OpenCvNet(const std::string&) { unavailable(); }
OpenCvNet::~OpenCvNet() = default;
torch::Tensor OpenCvNet::forward(const torch::Tensor&) { unavailable(); }

OnnxVerifyResult verify_onnx(const std::string&, const std::string&, const OnnxVerifyOptions&) { unavailable(); }

}  // namespace autorep::trainer::deploy
