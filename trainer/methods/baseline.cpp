// The all-ReLU model trained with `optim` for `train.epochs`: the teacher of every reduction run.
#include <torch/torch.h>

#include "trainer/methods/registry.h"

namespace autorep::trainer::methods {

namespace {

class BaselineMethod : public engine::Method {
 public:
  explicit BaselineMethod(const engine::Config& config) : config_(config) {}
  layers::ActivationFactory factory() const override { return layers::relu_factory(); }
  std::vector<engine::Phase> phases() const override {
    return {engine::Phase{engine::PhaseKind::Train, 0, config_.train.epochs, config_.optim}};
  }

 private:
  engine::Config config_;
};

}  // namespace

MethodEntry baseline_method() {
  MethodEntry e;
  e.name = "baseline";
  e.summary = "every ReLU kept: the teacher of the reduction methods";
  e.reduces = false;
  e.schema.unused_keys = {"search"};
  e.make = [](const engine::Config& c) { return std::make_unique<BaselineMethod>(c); };
  return e;
}

}  // namespace autorep::trainer::methods
