#pragma once
/// A batch norm as a per-channel affine map and its folding into the convolution before it, in
/// eval mode: what the frozen teacher (folded.h), the ONNX writer and the graph evaluator of
/// trainer/deploy compute alike.

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/types.h>

#include <array>
#include <stdexcept>
#include <string>
#include <utility>

#include "layers/util/variant.h"

namespace autorep::trainer::models {

/// (scale, shift), float64: bn(x) = scale * x + shift per channel, in eval mode. Throws, naming
/// `context`, for a batch norm without running statistics.
inline std::pair<torch::Tensor, torch::Tensor> bn_affine(const torch::nn::BatchNorm2dImpl& bn,
                                                         const std::string& context = "folding") {
  const int64_t c = bn.options.num_features();
  if (!bn.options.track_running_stats())
    throw std::runtime_error(context + ": a batch norm without running statistics cannot be folded");
  const auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kDouble); };
  const torch::Tensor gamma = bn.options.affine() ? f64(bn.weight) : torch::ones({c}, torch::kDouble);
  const torch::Tensor beta = bn.options.affine() ? f64(bn.bias) : torch::zeros({c}, torch::kDouble);
  const torch::Tensor scale = gamma / (f64(bn.running_var) + bn.options.eps()).sqrt();
  return {scale, beta - f64(bn.running_mean) * scale};
}

using util::alternative;

/// A convolution's geometry as ONNX and at::conv2d take it.
struct ConvGeometry {
  std::array<int64_t, 2> kernel{}, stride{}, padding{}, dilation{};
  int64_t groups = 1;
};

/// Throws, naming `context` and the convolution, for padding other than explicit zeros.
inline ConvGeometry geometry(const torch::nn::Conv2dImpl& conv, const std::string& name,
                             const std::string& context = "folding") {
  const auto& o = conv.options;
  if (alternative<torch::enumtype::kZeros>(o.padding_mode()) == nullptr)
    throw std::runtime_error(context + ": " + name + ": only zero padding is supported");
  const auto* pad = alternative<torch::ExpandingArray<2>>(o.padding());
  if (pad == nullptr) throw std::runtime_error(context + ": " + name + ": 'same'/'valid' padding is not supported");
  ConvGeometry g;
  for (int k = 0; k < 2; ++k) {
    g.kernel[k] = (*o.kernel_size())[k];
    g.stride[k] = (*o.stride())[k];
    g.padding[k] = (**pad)[k];
    g.dilation[k] = (*o.dilation())[k];
  }
  g.groups = o.groups();
  return g;
}

/// The convolution's (weight, bias) in float64, with `bn` folded in when given.
inline std::pair<torch::Tensor, torch::Tensor> folded_conv(const torch::nn::Conv2dImpl& conv,
                                                           const torch::nn::BatchNorm2dImpl* bn,
                                                           const std::string& context = "folding") {
  torch::Tensor w = conv.weight.detach().to(torch::kCPU, torch::kDouble);
  torch::Tensor b = conv.options.bias() ? conv.bias.detach().to(torch::kCPU, torch::kDouble)
                                        : torch::zeros({w.size(0)}, torch::kDouble);
  if (bn != nullptr) {
    const auto [scale, shift] = bn_affine(*bn, context);
    w = w * scale.view({-1, 1, 1, 1});
    b = b * scale + shift;
  }
  return {w, b};
}

}  // namespace autorep::trainer::models
