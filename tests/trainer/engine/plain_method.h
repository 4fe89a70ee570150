#pragma once
// A minimal method for the engine's tests (every ReLU kept, one phase with `optim`), so they
// exercise the training loop without the method registry above it.

#include <torch/torch.h>

#include <string>

#include "trainer/engine/checkpoint.h"
#include "trainer/engine/loop.h"
#include "trainer/engine/method.h"
#include "trainer/models/registry.h"

namespace autorep::test {

class PlainMethod : public trainer::engine::Method {
 public:
  explicit PlainMethod(const trainer::engine::Config& config) : config_(config) {}
  layers::ActivationFactory factory() const override { return layers::relu_factory(); }
  std::vector<trainer::engine::Phase> phases() const override {
    return {{trainer::engine::PhaseKind::Train, 0, config_.train.epochs, config_.optim}};
  }

 private:
  trainer::engine::Config config_;
};

/// run_training with a PlainMethod.
inline trainer::engine::RunResult run_training(const trainer::engine::Config& config,
                                               const trainer::engine::RunOptions& options) {
  PlainMethod method(config);
  return trainer::engine::run_training(config, method, options);
}

/// The all-ReLU model of a checkpoint written by a PlainMethod run.
struct PlainModel {
  trainer::models::Net model;
};
inline PlainModel load_model(const std::string& checkpoint) {
  const auto meta = trainer::engine::read_checkpoint_meta(checkpoint);
  PlainModel out;
  out.model = trainer::models::build_model(trainer::models::spec_from_json(meta.state.at("model_spec")),
                                           layers::relu_factory());
  trainer::engine::load_checkpoint(checkpoint, *out.model, nullptr);
  out.model->eval();
  return out;
}

}  // namespace autorep::test
