#pragma once
/// An ONNX graph run by a runtime that is not LibTorch (OpenCV's DNN module), and the check
/// that it computes what the checkpoint computes (`autorep verify --onnx`).

#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace autorep::trainer::deploy {

/// An ONNX file loaded by OpenCV DNN (CPU, float32).
class OpenCvNet {
 public:
  /// Throws "<path>: OpenCV DNN cannot load it (<reason>)".
  explicit OpenCvNet(const std::string& path);
  ~OpenCvNet();
  OpenCvNet(const OpenCvNet&) = delete;
  OpenCvNet& operator=(const OpenCvNet&) = delete;
  /// `images`: float N x C x H x W in [0, 1] (what the graph's input takes); returns N x classes.
  torch::Tensor forward(const torch::Tensor& images);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct OnnxVerifyOptions {
  int64_t batch = 256;       ///< first N test images for the logit comparison
  bool eval = false;         ///< also both accuracies over the whole test split
  double tolerance = 1e-4;   ///< of the relative logit difference, max|a - b| / max|a|
  std::string data_path;     ///< "" = the checkpoint config's data.path
};

struct OnnxVerifyResult {
  bool ok = false;
  std::vector<std::string> problems;
  int64_t samples = 0;
  double max_abs_diff = -1, max_rel_diff = -1;
  /// With eval: over the whole test split.
  std::optional<double> accuracy_libtorch, accuracy_onnx;
  int64_t eval_samples = 0, prediction_mismatches = 0;
  double ms_per_image_libtorch = 0, ms_per_image_onnx = 0;  ///< batch 100, this process's threads
};

/// Runs `onnx_path` under OpenCV DNN and the checkpoint's model under LibTorch on the same test
/// images and compares their logits (and, with eval, accuracy and predictions).
OnnxVerifyResult verify_onnx(const std::string& onnx_path, const std::string& checkpoint, const OnnxVerifyOptions& options);

}  // namespace autorep::trainer::deploy
