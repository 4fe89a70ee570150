// Baselines that fix the masks once at the budget and only finetune: `random` and `uniform`.
// They finetune for all train.epochs with the finetune optimiser (as many epochs as a search run
// trains in total, so the comparison does not favour autorep).
#include <torch/torch.h>

#include <algorithm>

#include "layers/magnitude_recorder.h"
#include "search/projection.h"
#include "trainer/methods/reduction.h"
#include "trainer/methods/registry.h"
#include "trainer/models/registry.h"

namespace autorep::trainer::methods {

namespace {

using engine::Phase;
using engine::PhaseKind;
using engine::TrainContext;

class FixedMaskMethod : public ReductionMethod {
 public:
  using ReductionMethod::ReductionMethod;

  std::vector<Phase> phases() const override {
    return {Phase{PhaseKind::Finetune, 0, config_.train.epochs, config_.search.finetune_optim}};
  }

  void begin_phase(TrainContext& ctx, const Phase& phase, bool resumed) override {
    if (!resumed) {
      const int64_t kept = choose_masks(ctx);
      ctx.log(config_.method + " masks: kept " + std::to_string(kept) + " of " + std::to_string(total_) +
              " ReLUs (budget " + std::to_string(budget_) + ")");
    }
    ReductionMethod::begin_phase(ctx, phase, resumed);
  }

 protected:
  virtual int64_t choose_masks(TrainContext& ctx) = 0;
};

class RandomMethod : public FixedMaskMethod {
 public:
  using FixedMaskMethod::FixedMaskMethod;

 protected:
  int64_t choose_masks(TrainContext&) override { return search::random_masks(gates_, budget_, config_.train.seed); }
};

class UniformMethod : public FixedMaskMethod {
 public:
  using FixedMaskMethod::FixedMaskMethod;

 protected:
  // Ranks each site's ReLUs by the teacher's mean |pre-activation| over training images.
  int64_t choose_masks(TrainContext& ctx) override {
    models::Net recorder = models::build_model(ctx.model->spec(), layers::magnitude_recorder_factory());
    init_from_teacher(*recorder, *teacher_);
    recorder->to(ctx.device);
    recorder->eval();
    const auto& data = *ctx.data;
    const int64_t n = std::min<int64_t>(data.train.size(), 2048);
    {
      torch::NoGradGuard no_grad;
      for (int64_t start = 0; start < n; start += config_.data.eval_batch_size) {
        auto idx = torch::arange(start, std::min(n, start + config_.data.eval_batch_size), torch::kLong);
        recorder->forward(data::make_batch(data, data.train, idx, /*train=*/false, 0).to(ctx.device));
      }
    }
    std::vector<torch::Tensor> scores;
    for (const auto& s : recorder->sites()) {
      auto* rec = dynamic_cast<layers::MagnitudeRecorderImpl*>(s.module.get());
      TORCH_INTERNAL_ASSERT(rec != nullptr);
      scores.push_back(layers::reduce_to_mask_shape(rec->mean_magnitude(), config_.gate.granularity()));
    }
    return search::uniform_masks(gates_, scores, budget_);
  }
};

// Fixed masks have no search phase: they finetune for all train.epochs.
const std::vector<std::string> kNoSearchKeys = {"search.search_epochs", "search.search_optim", "search.aux_lr"};

}  // namespace

MethodEntry uniform_method() {
  MethodEntry e;
  e.name = "uniform";
  e.summary = "the same kept fraction at every site, by the teacher's activation magnitude; finetune only";
  e.schema.unused_keys = kNoSearchKeys;
  e.make = [](const engine::Config& c) { return std::make_unique<UniformMethod>(c); };
  return e;
}

MethodEntry random_method() {
  MethodEntry e;
  e.name = "random";
  e.summary = "a seeded random set of ReLUs at the budget; finetune only";
  e.schema.unused_keys = kNoSearchKeys;
  e.make = [](const engine::Config& c) { return std::make_unique<RandomMethod>(c); };
  return e;
}

}  // namespace autorep::trainer::methods
