#include "tests/torch_catch.h"
#include "tests/trainer/engine/plain_method.h"

#include <torch/torch.h>

#include "trainer/engine/spike_guard.h"
#include "trainer/engine/step.h"
#include "trainer/models/registry.h"

using namespace autorep::trainer;
using namespace autorep::trainer::engine;
using namespace autorep::trainer::models;

namespace {

// Cross-entropy plus a "schedule" term whose weight grows 10x each step (as a penalty's
// multipliers may after a dual step), named as a loss part and, when `unjudged`, left out of
// what the spike guard judges.
class GrowingPenaltyMethod : public autorep::test::PlainMethod {
 public:
  GrowingPenaltyMethod(const Config& config, bool unjudged) : PlainMethod(config), unjudged_(unjudged) {}
  LossOutput loss(TrainContext& ctx, const torch::Tensor& x, const torch::Tensor& y,
                  const torch::Tensor& logits) override {
    LossOutput out;
    auto ce = torch::nn::functional::cross_entropy(logits, y);
    auto schedule = weight_ * logits.pow(2).mean();
    weight_ *= 10.0;
    out.loss = ce + schedule;
    out.parts = {{"ce", ce.detach()}, {"schedule", schedule.detach()}};
    if (unjudged_) out.unjudged = {"schedule"};
    return out;
  }

 private:
  bool unjudged_;
  double weight_ = 1e-3;
};

struct StepRig {
  Config config;
  Net model = build_model(ModelSpec{"cnn-small", {1, 28, 28}, 10, true}, autorep::layers::relu_factory());
  // lr 0: the model stays put, so only the schedule's weight changes the loss from step to step.
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.0)};
  SpikeGuard guard{/*factor=*/10.0, /*warmup=*/3};
  StepSnapshot snapshot{*model};
  TrainContext ctx;
  StepOutcome last;
  StepRig() {
    ctx.config = &config;
    ctx.model = model;
    ctx.optimizer = &optimizer;
  }
  /// Steps on fixed batches; how many the guard skipped.
  int steps(Method& method, int n) {
    torch::manual_seed(0);
    const auto x = torch::randn({16, 1, 28, 28});
    const auto y = torch::randint(0, 10, {16}, torch::kLong);
    const StepEnv env{&ctx, &method, &guard, &snapshot, 16, nullptr, nullptr};
    const Phase phase{PhaseKind::Train, 0, 1, config.optim};
    int skipped = 0;
    for (int i = 0; i < n; ++i) {
      last = train_step(env, phase, x, y, i);
      skipped += last.skipped ? 1 : 0;
    }
    return skipped;
  }
};

}  // namespace

TEST_CASE("the spike guard judges the loss without the parts a method marks unjudged", "[train][spike]") {
  torch::manual_seed(1);
  SECTION("a growing marked part is not a spike, and the step reports both losses") {
    StepRig rig;
    GrowingPenaltyMethod method(rig.config, /*unjudged=*/true);
    CHECK(rig.steps(method, 8) == 0);
    // The judged mean stays at cross-entropy's scale while the whole loss has grown ~10^4-fold.
    CHECK(rig.guard.mean() < 10.0);
    CHECK(rig.last.judged_loss < 10.0);
    CHECK(rig.last.loss > 100.0 * rig.last.judged_loss);
  }
  SECTION("the same part, judged, trips the guard") {
    StepRig rig;
    GrowingPenaltyMethod method(rig.config, /*unjudged=*/false);
    CHECK(rig.steps(method, 8) > 0);
  }
}
