#include "trainer/engine/optim.h"

#include <torch/torch.h>

#include <cmath>

namespace autorep::trainer::engine {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<ParamGroup>& groups,
                                                        const OptimOptions& o) {
  std::vector<torch::optim::OptimizerParamGroup> pg;
  for (const auto& g : groups) {
    if (g.params.empty()) continue;
    if (o.name == "sgd") {
      auto opt = std::make_unique<torch::optim::SGDOptions>(g.lr);
      opt->momentum(o.momentum).nesterov(o.nesterov).weight_decay(g.weight_decay);
      pg.emplace_back(g.params, std::move(opt));
    } else {
      auto opt = std::make_unique<torch::optim::AdamOptions>(g.lr);
      opt->betas({o.beta1, o.beta2}).weight_decay(g.weight_decay);
      pg.emplace_back(g.params, std::move(opt));
    }
  }
  TORCH_CHECK(!pg.empty(), "no trainable parameters");
  if (o.name == "sgd")
    return std::make_unique<torch::optim::SGD>(pg, torch::optim::SGDOptions(o.lr).momentum(o.momentum).nesterov(o.nesterov));
  return std::make_unique<torch::optim::Adam>(pg, torch::optim::AdamOptions(o.lr));
}

double lr_factor(const OptimOptions& o, int64_t step, int64_t total_steps, int64_t steps_per_epoch) {
  const double warm = o.warmup_epochs * steps_per_epoch;
  if (warm > 0 && step < warm) return (step + 1) / warm;
  if (o.schedule == "constant") return 1.0;
  const double span = std::max(1.0, total_steps - warm);
  const double t = std::min(1.0, (step - warm) / span);
  const double floor = o.min_lr / o.lr;
  return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * t));
}

}  // namespace autorep::trainer::engine
