#pragma once
// What the ONNX writer and the graph evaluator compute alike (not part of the deploy interface):
// a batch norm as a per-channel affine map, folded into the convolution before it.

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/types.h>

#include <array>
#include <stdexcept>
#include <string>
#include <utility>

namespace autorep::trainer::deploy::detail {

/// (scale, shift), float64: bn(x) = scale * x + shift per channel, in eval mode.
inline std::pair<torch::Tensor, torch::Tensor> bn_affine(const torch::nn::BatchNorm2dImpl& bn) {
  const int64_t c = bn.options.num_features();
  if (!bn.options.track_running_stats())
    throw std::runtime_error("onnx export: a batch norm without running statistics cannot be exported");
  const auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kDouble); };
  const torch::Tensor gamma = bn.options.affine() ? f64(bn.weight) : torch::ones({c}, torch::kDouble);
  const torch::Tensor beta = bn.options.affine() ? f64(bn.bias) : torch::zeros({c}, torch::kDouble);
  const torch::Tensor scale = gamma / (f64(bn.running_var) + bn.options.eps()).sqrt();
  return {scale, beta - f64(bn.running_mean) * scale};
}

// LibTorch's conv options hold c10::variant (1.13) or std::variant (2.x): both spelled here.
template <typename T, typename V>
const T* alternative(const V& v) {
  using namespace c10;
  using namespace std;
  return get_if<T>(&v);
}

/// A convolution's geometry as ONNX and at::conv2d take it.
struct ConvGeometry {
  std::array<int64_t, 2> kernel{}, stride{}, padding{}, dilation{};
  int64_t groups = 1;
};

inline ConvGeometry geometry(const torch::nn::Conv2dImpl& conv, const std::string& name) {
  const auto& o = conv.options;
  if (alternative<torch::enumtype::kZeros>(o.padding_mode()) == nullptr)
    throw std::runtime_error("onnx export: " + name + ": only zero padding is supported");
  const auto* pad = alternative<torch::ExpandingArray<2>>(o.padding());
  if (pad == nullptr) throw std::runtime_error("onnx export: " + name + ": 'same'/'valid' padding is not supported");
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
                                                           const torch::nn::BatchNorm2dImpl* bn) {
  torch::Tensor w = conv.weight.detach().to(torch::kCPU, torch::kDouble);
  torch::Tensor b = conv.options.bias() ? conv.bias.detach().to(torch::kCPU, torch::kDouble)
                                        : torch::zeros({w.size(0)}, torch::kDouble);
  if (bn != nullptr) {
    const auto [scale, shift] = bn_affine(*bn);
    w = w * scale.view({-1, 1, 1, 1});
    b = b * scale + shift;
  }
  return {w, b};
}

/// Whether any channel of a site's polynomial has a quadratic term (else the graph needs no x*x).
template <typename Site>
bool has_quadratic(const Site& s) {
  for (double v : s.c2)
    if (v != 0.0) return true;
  return false;
}

/// Whether a site's polynomial is exactly the identity (0 + 1*x + 0*x^2 in every channel).
template <typename Site>
bool is_identity(const Site& s) {
  for (size_t k = 0; k < s.c0.size(); ++k)
    if (s.c0[k] != 0.0 || s.c1[k] != 1.0 || s.c2[k] != 0.0) return false;
  return true;
}

}  // namespace autorep::trainer::deploy::detail
