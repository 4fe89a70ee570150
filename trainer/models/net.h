#pragma once
/// The network type every model is: built through an activation factory: every activation call site is a separately
/// named module, created by the factory with its per-sample shape, so gates (or any other
/// activation) are placed by construction. Sites are listed in forward order.

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "layers/site.h"

namespace autorep::trainer::models {

/// What a model is built from: architecture, input and classes (from the data), options.
struct ModelSpec {
  std::string name = "cnn-small";          ///< cnn-small | resnet18 | resnet20 | wrn-22-8 | vgg16
  std::vector<int64_t> input_shape{1, 28, 28};  ///< C, H, W
  int64_t classes = 10;
  bool stem_relu = true;  ///< resnet18 only
};

/// Base of every model: a forward and the list of activation sites.
class NetImpl : public torch::nn::Module {
 public:
  explicit NetImpl(ModelSpec spec) : spec_(std::move(spec)) {}
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  const std::vector<layers::Site>& sites() const { return sites_; }
  const ModelSpec& spec() const { return spec_; }

  /// Creates the activation module of a site through the factory, registers it in `parent`
  /// under `local_name` and records it as site `path` (full dotted module path).
  torch::nn::AnyModule add_site(torch::nn::Module& parent, const std::string& local_name,
                                const std::string& path, const std::vector<int64_t>& shape,
                                const layers::ActivationFactory& factory);

 protected:
  ModelSpec spec_;
  std::vector<layers::Site> sites_;
};

using Net = std::shared_ptr<NetImpl>;

/// The model spec as stored in checkpoints: {"arch", "input_shape", "classes", "stem_relu"}.
nlohmann::json spec_to_json(const ModelSpec& spec);
ModelSpec spec_from_json(const nlohmann::json& j);
/// Parses "CxHxW" (e.g. "3x32x32"); throws with the text on a malformed shape.
std::vector<int64_t> parse_shape(const std::string& text);

}  // namespace autorep::trainer::models
