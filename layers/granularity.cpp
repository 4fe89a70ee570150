#include "layers/granularity.h"

#include <torch/torch.h>

#include <stdexcept>

namespace autorep::layers {

std::string granularity_name(Granularity g) { return granularity_names().at(static_cast<size_t>(g)); }

const std::vector<std::string>& granularity_names() {
  static const std::vector<std::string> names{"pixel", "channel", "layer"};
  return names;
}

Granularity parse_granularity(const std::string& name, const std::string& what) {
  const auto& names = granularity_names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<Granularity>(i);
  throw std::runtime_error(what + ": expected one of pixel, channel, layer, got \"" + name + "\"");
}

std::vector<int64_t> mask_shape(Granularity g, const std::vector<int64_t>& shape) {
  switch (g) {
    case Granularity::Pixel: return shape;
    case Granularity::Channel: return {shape.empty() ? 0 : shape[0]};
    case Granularity::Layer: return {1};
  }
  TORCH_INTERNAL_ASSERT(false, "unknown granularity");
}

int64_t elements_per_entry(Granularity g, const std::vector<int64_t>& shape) {
  int64_t total = 1;
  for (auto d : shape) total *= d;
  int64_t entries = 1;
  for (auto d : mask_shape(g, shape)) entries *= d;
  return entries > 0 ? total / entries : 0;
}

torch::Tensor reduce_to_mask_shape(const torch::Tensor& per_element, Granularity g) {
  switch (g) {
    case Granularity::Pixel: return per_element;
    case Granularity::Channel: return per_element.reshape({per_element.size(0), -1}).mean(1);
    case Granularity::Layer: return per_element.mean().reshape({1});
  }
  TORCH_INTERNAL_ASSERT(false, "unknown granularity");
}

}  // namespace autorep::layers
