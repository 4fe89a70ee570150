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

/// Learning-rate factor of a phase at a step: linear warm-up, then cosine (to min_lr/lr) or constant.
double lr_factor(const OptimOptions& o, int64_t step, int64_t total_steps, int64_t steps_per_epoch);

}  // namespace autorep::trainer::engine
