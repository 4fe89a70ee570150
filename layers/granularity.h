#pragma once
/// Mask granularity of a gate: which ReLUs one mask entry stands for. The one place that knows
/// the rule: pixel masks have the site's per-sample shape, channel masks [C], layer masks [1].

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace autorep::layers {

enum class Granularity {
  Pixel,    ///< one entry per ReLU element
  Channel,  ///< one entry per channel (H*W elements of a conv site, 1 of a linear site)
  Layer,    ///< one entry for the whole site
};

/// "pixel", "channel", "layer".
std::string granularity_name(Granularity g);
/// Every granularity name, in enum order.
const std::vector<std::string>& granularity_names();
/// Parses a name; throws std::runtime_error "<what>: expected one of pixel, channel, layer, got ...".
Granularity parse_granularity(const std::string& name, const std::string& what = "granularity");

/// Mask shape of a site with per-sample `shape` ({C,H,W} or {F}): shape, {C} or {1}.
std::vector<int64_t> mask_shape(Granularity g, const std::vector<int64_t>& shape);
/// ReLU elements one mask entry stands for: 1, the positions per channel, or all elements.
int64_t elements_per_entry(Granularity g, const std::vector<int64_t>& shape);
/// Reduces a per-element score of a site (the site's shape) to the mask shape by averaging
/// over what one entry stands for.
torch::Tensor reduce_to_mask_shape(const torch::Tensor& per_element, Granularity g);

}  // namespace autorep::layers
