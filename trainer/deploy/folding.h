#pragma once
// What the ONNX writer and the graph evaluator compute alike (not part of the deploy interface):
// a batch norm folded into the convolution before it, and two questions about a site's polynomial.

#include <string>
#include <utility>

#include "trainer/models/folding.h"

namespace autorep::trainer::deploy::detail {

// The folding itself lives with the models (the frozen teacher folds too); the exporters' error
// messages name the ONNX export.
inline std::pair<torch::Tensor, torch::Tensor> bn_affine(const torch::nn::BatchNorm2dImpl& bn) {
  return models::bn_affine(bn, "onnx export");
}
using models::ConvGeometry;
inline ConvGeometry geometry(const torch::nn::Conv2dImpl& conv, const std::string& name) {
  return models::geometry(conv, name, "onnx export");
}
inline std::pair<torch::Tensor, torch::Tensor> folded_conv(const torch::nn::Conv2dImpl& conv,
                                                           const torch::nn::BatchNorm2dImpl* bn) {
  return models::folded_conv(conv, bn, "onnx export");
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
