#include "trainer/engine/method.h"

#include <torch/torch.h>

namespace autorep::trainer::engine {

const Phase& phase_at(const std::vector<Phase>& phases, int64_t epoch, size_t* index) {
  for (size_t i = 0; i < phases.size(); ++i) {
    if (epoch >= phases[i].first_epoch && epoch < phases[i].first_epoch + phases[i].epochs) {
      *index = i;
      return phases[i];
    }
  }
  TORCH_INTERNAL_ASSERT(false, "epoch ", epoch, " belongs to no phase");
}

std::string phase_name(PhaseKind kind) {
  switch (kind) {
    case PhaseKind::Train: return "train";
    case PhaseKind::Search: return "search";
    case PhaseKind::Finetune: return "finetune";
  }
  TORCH_INTERNAL_ASSERT(false, "unknown phase kind");
}

std::vector<ParamGroup> Method::param_groups(TrainContext& ctx, const Phase& phase) const {
  ParamGroup g;
  g.params = ctx.model->parameters();
  g.lr = phase.optim.lr;
  g.weight_decay = phase.optim.weight_decay;
  return {g};
}

torch::Tensor classification_loss(const Config& config, const torch::Tensor& logits, const torch::Tensor& y,
                                  bool per_sample) {
  auto options = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(config.train.label_smoothing);
  if (per_sample) options.reduction(torch::kNone);
  return torch::nn::functional::cross_entropy(logits, y, options);
}

LossOutput Method::loss(TrainContext& ctx, const torch::Tensor& x, const torch::Tensor& y,
                        const torch::Tensor& logits) {
  LossOutput out;
  out.loss = classification_loss(*ctx.config, logits, y);
  return out;
}

}  // namespace autorep::trainer::engine
