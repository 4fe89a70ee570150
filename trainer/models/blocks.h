#pragma once
// Building blocks shared by the model families (not part of the models' interface).

#include <torch/nn/modules/conv.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/models/net.h"

namespace autorep::trainer::models {

namespace nn = torch::nn;
using layers::ActivationFactory;
using Shape = std::vector<int64_t>;

inline nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
}
inline nn::Conv2d conv1x1(int64_t in, int64_t out, int64_t stride = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false));
}
inline int64_t strided(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }
/// A channel count times the model's width multiplier (at least 1).
inline int64_t scaled_width(int64_t channels, double width) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::llround(static_cast<double>(channels) * width)));
}
inline std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }

// One builder per family file; the registry (registry.cpp) lists them by name.
Net make_mlp(const ModelSpec& spec, const ActivationFactory& factory);
Net make_cnn_small(const ModelSpec& spec, const ActivationFactory& factory);
Net make_resnet18(const ModelSpec& spec, const ActivationFactory& factory);
Net make_resnet20(const ModelSpec& spec, const ActivationFactory& factory);
Net make_wrn_22_8(const ModelSpec& spec, const ActivationFactory& factory);
Net make_vgg16(const ModelSpec& spec, const ActivationFactory& factory);

}  // namespace autorep::trainer::models
