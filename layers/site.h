#pragma once
/// Activation call sites: what every model exposes so that gates can be placed, counted,
/// searched and exported without knowing the architecture.

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace autorep::layers {

/// Implemented by every module that sits at an activation site (plain ReLU, gate, SNL slope).
/// Counts are per sample, in ReLU elements (a kept channel counts H*W).
class ActivationSite {
 public:
  virtual ~ActivationSite() = default;
  /// ReLU elements this site evaluates for one sample.
  virtual int64_t kept_relus() const = 0;
  /// ReLU elements of the site when every ReLU is kept (product of the per-sample shape).
  virtual int64_t total_relus() const = 0;
};

/// One activation call site of a model, in forward order.
struct Site {
  std::string name;              ///< module path, e.g. "layer1.0.act1"
  std::vector<int64_t> shape;    ///< per-sample input shape: {C,H,W} (conv) or {F} (linear)
  std::shared_ptr<torch::nn::Module> module;  ///< the activation module registered there
  /// "conv" for {C,H,W} inputs, "linear" for {F}.
  std::string kind() const { return shape.size() == 3 ? "conv" : "linear"; }
  int64_t channels() const { return shape.empty() ? 0 : shape[0]; }
  int64_t elements() const;
  /// The site's module as an ActivationSite (throws if it is not one).
  const ActivationSite& activation() const;
};

/// Builds the activation module for one site: (site name, per-sample shape) -> module.
using ActivationFactory =
    std::function<torch::nn::AnyModule(const std::string& name, const std::vector<int64_t>& shape)>;

/// A plain ReLU that knows its site shape (every ReLU kept).
class ReluSiteImpl : public torch::nn::Module, public ActivationSite {
 public:
  explicit ReluSiteImpl(std::vector<int64_t> shape);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t kept_relus() const override;
  int64_t total_relus() const override;
  const std::vector<int64_t>& shape() const { return shape_; }

 private:
  std::vector<int64_t> shape_;
};
TORCH_MODULE(ReluSite);

/// Factory placing a plain ReLU at every site.
ActivationFactory relu_factory();

/// Sum of kept ReLUs over sites (per sample).
int64_t kept_relus(const std::vector<Site>& sites);
/// Sum of all ReLU elements over sites (per sample).
int64_t total_relus(const std::vector<Site>& sites);

}  // namespace autorep::layers
