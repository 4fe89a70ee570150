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
};

// Every model autorep builds, by name: adding a family is one file and one line here.
const std::vector<ModelEntry>& registry() {
  static const std::vector<ModelEntry> entries = {
      {"mlp", make_mlp},           {"cnn-small", make_cnn_small}, {"resnet18", make_resnet18},
      {"resnet20", make_resnet20}, {"wrn-22-8", make_wrn_22_8},   {"vgg16", make_vgg16},
  };
  return entries;
}

}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.push_back(e.name);
  return names;
}

Net build_model(const ModelSpec& spec, const ActivationFactory& factory) {
  if (spec.input_shape.size() != 3 || spec.input_shape[0] <= 0 || spec.input_shape[1] <= 0 ||
      spec.input_shape[2] <= 0)
    throw std::runtime_error("model " + spec.name + ": input shape must be C x H x W with positive sizes");
  if (spec.classes < 2) throw std::runtime_error("model " + spec.name + ": needs at least 2 classes");
  for (const auto& e : registry())
    if (e.name == spec.name) return e.build(spec, factory);
  throw std::runtime_error("unknown model \"" + spec.name + "\" (known: " + util::join(model_names()) + ")");
}

}  // namespace autorep::trainer::models
