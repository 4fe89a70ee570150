#include "trainer/method.h"

#include <torch/torch.h>

#include <stdexcept>

#include "trainer/reduction.h"

namespace autorep::trainer {

std::vector<ParamGroup> Method::param_groups(TrainContext& ctx, const Phase& phase) {
  ParamGroup g;
  g.params = ctx.model->parameters();
  g.lr = phase.optim.lr;
  g.weight_decay = phase.optim.weight_decay;
  return {g};
}

torch::Tensor classification_loss(const Config& config, const torch::Tensor& logits, const torch::Tensor& y) {
  return torch::nn::functional::cross_entropy(
      logits, y, torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(config.train.label_smoothing));
}

LossOutput Method::loss(TrainContext& ctx, const torch::Tensor& x, const torch::Tensor& y,
                        const torch::Tensor& logits) {
  LossOutput out;
  out.loss = classification_loss(*ctx.config, logits, y);
  return out;
}

namespace {

// The all-ReLU model trained with `optim` for `train.epochs`: the teacher of every reduction run.
class BaselineMethod : public Method {
 public:
  explicit BaselineMethod(const Config& config) : config_(config) {}
  layers::ActivationFactory factory() const override { return layers::relu_factory(); }
  std::vector<Phase> phases() const override { return {Phase{"train", 0, config_.train.epochs, config_.optim}}; }

 private:
  Config config_;
};

}  // namespace

std::unique_ptr<Method> make_method(const Config& config) {
  if (config.method == "baseline") return std::make_unique<BaselineMethod>(config);
  if (auto m = make_reduction_method(config)) return m;
  throw std::runtime_error("method \"" + config.method + "\" is not available in this build");
}

}  // namespace autorep::trainer
