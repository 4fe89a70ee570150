#pragma once
/// A frozen all-ReLU model's inference forward with every batch norm folded into the convolution
/// before it: what the knowledge-distillation teacher of a search runs at every step. Compared
/// with the model's own eval-mode forward it makes no batch-norm passes and applies its ReLUs and
/// residual additions in place, so it reads and writes each activation map fewer times;
/// the logits agree to float rounding. Built once from the model's description
/// (NetImpl::describe), with its own copy of the weights: later changes to the model do not
/// reach it.

#include <torch/types.h>

#include <memory>
#include <vector>

#include "trainer/models/net.h"

namespace autorep::trainer::models {

class FoldedNet {
 public:
  /// Folds `net` (eval-mode batch norms, every activation site a ReLU) into weights of `dtype` on
  /// `device`; with `channels_last` the convolutions run in channels_last memory (weights and
  /// input). Throws naming the site when a site is not a ReLU, or the layer when one cannot be
  /// folded.
  FoldedNet(NetImpl& net, torch::Dtype dtype, const torch::Device& device, bool channels_last = false);
  ~FoldedNet();
  FoldedNet(FoldedNet&&) noexcept;
  FoldedNet& operator=(FoldedNet&&) noexcept;

  /// The logits of `x` (cast to dtype()) without autograd, in dtype().
  torch::Tensor forward(const torch::Tensor& x) const;
  torch::Dtype dtype() const { return dtype_; }
  /// The number of operations it runs per forward (a folded batch norm is none).
  size_t size() const;

  struct Op;

 private:
  std::vector<Op> ops_;
  int slots_ = 1;   ///< values held during a forward; slot 0 is the input
  int output_ = 0;  ///< the slot of the logits
  torch::Dtype dtype_;
  bool channels_last_;
};

}  // namespace autorep::trainer::models
