#include "trainer/models/registry.h"

#include <torch/torch.h>

#include <stdexcept>

#include "layers/util/json_check.h"
#include "trainer/models/blocks.h"

namespace autorep::trainer::models {

namespace {

struct ModelEntry {
  std::string name;
  Net (*build)(const ModelSpec&, const ActivationFactory&);
  bool reshapes = false;  ///< takes width and stem_stride
};

// Every model autorep builds, by name: adding a family is one file and one line here.
const std::vector<ModelEntry>& registry() {
  static const std::vector<ModelEntry> entries = {
      {"mlp", make_mlp},
      {"cnn-small", make_cnn_small},
      {"resnet18", make_resnet18, true},
      {"resnet20", make_resnet20, true},
      {"wrn-22-8", make_wrn_22_8, true},
      {"vgg16", make_vgg16},
  };
  return entries;
}

}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.push_back(e.name);
  return names;
}

bool model_reshapes(const std::string& name) {
  for (const auto& e : registry())
    if (e.name == name) return e.reshapes;
  return false;
}

Net build_model(const ModelSpec& spec, const ActivationFactory& factory) {
  if (spec.input_shape.size() != 3 || spec.input_shape[0] <= 0 || spec.input_shape[1] <= 0 ||
      spec.input_shape[2] <= 0)
    throw std::runtime_error("model " + spec.name + ": input shape must be C x H x W with positive sizes");
  if (spec.classes < 2) throw std::runtime_error("model " + spec.name + ": needs at least 2 classes");
  if (!(spec.width > 0.0 && spec.width <= 16.0))
    throw std::runtime_error("model " + spec.name + ": width must be in (0, 16], got " + std::to_string(spec.width));
  if (spec.stem_stride < 1 || spec.stem_stride > 8)
    throw std::runtime_error("model " + spec.name + ": stem_stride must be 1 to 8, got " +
                             std::to_string(spec.stem_stride));
  for (const auto& e : registry()) {
    if (e.name != spec.name) continue;
    if (!e.reshapes && (spec.width != 1.0 || spec.stem_stride != 1))
      throw std::runtime_error("model " + spec.name +
                               ": width and stem_stride apply to resnet18, resnet20 and wrn-22-8 only");
    return e.build(spec, factory);
  }
  throw std::runtime_error("unknown model \"" + spec.name + "\" (known: " + util::join(model_names()) + ")");
}

}  // namespace autorep::trainer::models
