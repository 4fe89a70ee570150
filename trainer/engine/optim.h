#pragma once
/// The optimiser of a phase (SGD or Adam over the method's parameter groups) and its
/// learning-rate schedule.

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "trainer/engine/config.h"
#include "trainer/engine/method.h"

namespace autorep::trainer::engine {

/// SGD or Adam (`o.name`) over `groups`, each with its own lr and weight decay; empty groups are
/// left out.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<ParamGroup>& groups, const OptimOptions& o);

/// Scales the gradients of `params` so that their global L2 norm is at most `max_norm`, as
/// torch::nn::utils::clip_grad_norm_ does (factor max_norm / (norm + 1e-6) when below 1), and
/// returns the norm before clipping. On the CPU the norm is one float64 pass over each gradient
/// and the gradients are touched only when clipped: LibTorch 1.13 makes two calls per parameter
/// every step, clipped or not. Other gradients go to LibTorch's clip_grad_norm_.
double clip_gradients(const std::vector<torch::Tensor>& params, double max_norm);

/// Learning-rate factor of a phase at a step: linear warm-up, then cosine (to min_lr/lr) or constant.
double lr_factor(const OptimOptions& o, int64_t step, int64_t total_steps, int64_t steps_per_epoch);

}  // namespace autorep::trainer::engine
