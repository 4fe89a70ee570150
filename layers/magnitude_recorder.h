#pragma once
/// Per-element activation magnitudes at every site (mean |x| over the samples seen), recorded
/// by an activation that behaves as a ReLU: what the `uniform` baseline ranks ReLUs by.

#include <torch/nn/module.h>
#include <torch/types.h>

#include "layers/site.h"

namespace autorep::layers {

/// A ReLU that accumulates sum |x| per element of its per-sample shape.
class MagnitudeRecorderImpl : public torch::nn::Module, public ActivationSite {
 public:
  explicit MagnitudeRecorderImpl(std::vector<int64_t> shape);
  torch::Tensor forward(const torch::Tensor& x);
  /// Mean |x| per element over every sample seen so far (shape: the site's shape).
  torch::Tensor mean_magnitude() const;
  int64_t kept_relus() const override;
  int64_t total_relus() const override;

 private:
  std::vector<int64_t> shape_;
  torch::Tensor sum_abs_;
  int64_t samples_ = 0;
};
TORCH_MODULE(MagnitudeRecorder);

/// Factory placing a MagnitudeRecorder at every site.
ActivationFactory magnitude_recorder_factory();

}  // namespace autorep::layers
