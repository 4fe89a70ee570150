#pragma once
/// The model registry: every shipped architecture by name (mlp, cnn-small, resnet18, resnet20,
/// wrn-22-8, vgg16), one file per family in this folder.

#include <string>
#include <vector>

#include "trainer/models/net.h"

namespace autorep::trainer::models {

/// Builds a model; the factory is called once per activation site, in forward order.
Net build_model(const ModelSpec& spec, const layers::ActivationFactory& factory);
/// The model names build_model knows.
std::vector<std::string> model_names();
/// Whether the model takes ModelSpec::width and stem_stride (resnet18, resnet20, wrn-22-8).
bool model_reshapes(const std::string& name);
}  // namespace autorep::trainer::models
