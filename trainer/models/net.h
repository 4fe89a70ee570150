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
#include "trainer/models/graph.h"

namespace autorep::trainer::models {

/// What a model is built from: architecture, input and classes (from the data), options.
struct ModelSpec {
  std::string name = "cnn-small";          ///< cnn-small | resnet18 | resnet20 | wrn-22-8 | vgg16
  std::vector<int64_t> input_shape{1, 28, 28};  ///< C, H, W
  int64_t classes = 10;
  bool stem_relu = true;  ///< resnet18 only
  double width = 1.0;     ///< ResNet/WRN: channel multiplier (DeepReDuce's reshaping uses 0.5, 0.25)
  int64_t stem_stride = 1;  ///< ResNet/WRN: stride of the stem convolution (2 halves every feature map)
};

/// What DeepReDuce's ReLU thinning does to a site when its stage is thinned: drop every other
/// ReLU layer of the stage (`alternate`: the stage's 2nd, 4th, ... site), or as the model says
/// (ResNet basic blocks keep the ReLU after the first convolution and drop the one after the
/// residual addition).
enum class Thinning { alternate, keep, drop };

/// A stage: consecutive activation sites that DeepReDuce culls (or thins) together. ResNet: the
/// stem's site with the first stage, then one per resolution stage; WRN: one per group; VGG: one
/// per block and the classifier; cnn-small and mlp: one per layer.
struct Stage {
  std::string name;
  std::vector<size_t> sites;     ///< indices into NetImpl::sites(), in forward order
  std::vector<bool> thinned;     ///< per entry of `sites`: dropped when the stage is thinned
};

/// Base of every model: a forward and the list of activation sites, grouped into stages.
class NetImpl : public torch::nn::Module {
 public:
  explicit NetImpl(ModelSpec spec) : spec_(std::move(spec)) {}
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  /// The forward once more, op by op, into `g` (for exporters): the same ops in the same order,
  /// the activation sites in the order of sites(). Returns the logits' value.
  virtual GraphSink::Value describe(GraphSink& g, const GraphSink::Value& input) = 0;
  const std::vector<layers::Site>& sites() const { return sites_; }
  const std::vector<Stage>& stages() const { return stages_; }
  const ModelSpec& spec() const { return spec_; }

  /// Creates the activation module of a site through the factory, registers it in `parent`
  /// under `local_name` and records it as site `path` (full dotted module path) of the stage
  /// begun last (begin_stage; a model that begins none gets one stage per site).
  torch::nn::AnyModule add_site(torch::nn::Module& parent, const std::string& local_name,
                                const std::string& path, const std::vector<int64_t>& shape,
                                const layers::ActivationFactory& factory, Thinning thinning = Thinning::alternate);

 protected:
  /// Starts a stage: the sites added from now on belong to it.
  void begin_stage(const std::string& name);

  ModelSpec spec_;
  std::vector<layers::Site> sites_;
  std::vector<Stage> stages_;
  bool explicit_stages_ = false;  ///< the model calls begin_stage
};

using Net = std::shared_ptr<NetImpl>;

/// The model spec as stored in checkpoints: {"arch", "input_shape", "classes", "stem_relu"}, and
/// "width" / "stem_stride" when they differ from 1 (older checkpoints have neither).
nlohmann::json spec_to_json(const ModelSpec& spec);
ModelSpec spec_from_json(const nlohmann::json& j);
/// Parses "CxHxW" (e.g. "3x32x32"); throws with the text on a malformed shape.
std::vector<int64_t> parse_shape(const std::string& text);

}  // namespace autorep::trainer::models
