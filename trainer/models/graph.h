#pragma once
/// A model's forward, written op by op for exporters (the ONNX graph of trainer/deploy): every
/// model describes itself once more through these calls, in the order of its forward, so an
/// exporter needs no tracer. Values are tensor names. Activation sites are taken in forward
/// order (NetImpl::sites()), so a model names no site here.

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <cstdint>
#include <string>

namespace autorep::trainer::models {

class GraphSink {
 public:
  using Value = std::string;
  virtual ~GraphSink() = default;
  /// The convolution `name`, then the batch norm `bn_name` when `bn` is given (an exporter may
  /// fold it into the convolution).
  virtual Value conv(const Value& x, const std::string& name, const torch::nn::Conv2dImpl& conv,
                     const std::string& bn_name = "", const torch::nn::BatchNorm2dImpl* bn = nullptr) = 0;
  /// A batch norm that follows no convolution (pre-activation blocks).
  virtual Value batchnorm(const Value& x, const std::string& name, const torch::nn::BatchNorm2dImpl& bn) = 0;
  /// y = x W^T + b over N x F.
  virtual Value linear(const Value& x, const std::string& name, const torch::nn::LinearImpl& fc) = 0;
  /// The model's next activation site.
  virtual Value activation(const Value& x) = 0;
  virtual Value add(const Value& a, const Value& b, const std::string& name) = 0;
  /// kernel x kernel max pool with stride kernel.
  virtual Value max_pool(const Value& x, int64_t kernel, const std::string& name) = 0;
  /// N x C x H x W -> N x C (the mean over H, W).
  virtual Value global_average_pool(const Value& x, const std::string& name) = 0;
  /// N x ... -> N x (product).
  virtual Value flatten(const Value& x, const std::string& name) = 0;
};

}  // namespace autorep::trainer::models
