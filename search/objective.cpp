#include "search/objective.h"

#include <torch/torch.h>

#include "layers/gate.h"

namespace autorep::search {

namespace {

// Forward: the {0,1} mask as it is. Backward: softplus(aux) * grad to aux, nothing to the mask.
class MaskSte : public torch::autograd::Function<MaskSte> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& aux,
                               const torch::Tensor& mask) {
    ctx->save_for_backward({aux});
    return mask.to(aux.scalar_type());
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto aux = ctx->get_saved_variables()[0];
    return {grads[0] * torch::softplus(aux), torch::Tensor()};
  }
};

}  // namespace

int64_t elements_per_entry(const layers::GateImpl& gate) {
  return layers::elements_per_entry(gate.options().granularity(), gate.options().shape());
}

torch::Tensor relu_density(const GateList& gates) {
  TORCH_CHECK(!gates.empty(), "relu_density: the model has no gates");
  int64_t total = 0;
  for (const auto& g : gates) total += g->total_relus();
  torch::Tensor rho;
  for (const auto& g : gates) {
    auto kept = MaskSte::apply(g->aux(), g->mask()).sum() * static_cast<double>(elements_per_entry(*g));
    rho = rho.defined() ? rho + kept : kept;
  }
  return rho / static_cast<double>(total);
}

torch::Tensor budget_penalty(const torch::Tensor& rho, double rho_target, double lambda) {
  return lambda * torch::relu(rho - rho_target);
}

torch::Tensor kd_loss_per_sample(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                                 double temperature) {
  const auto log_p_s = torch::log_softmax(student_logits / temperature, 1);
  const auto log_p_t = torch::log_softmax(teacher_logits / temperature, 1);
  return temperature * temperature * (log_p_t.exp() * (log_p_t - log_p_s)).sum(1);
}

torch::Tensor kd_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits, double temperature) {
  return kd_loss_per_sample(student_logits, teacher_logits, temperature).mean();
}

LambdaSchedule::LambdaSchedule(std::string mode, double lambda, double growth, double decay, double min, double max)
    : mode_(std::move(mode)), lambda_(lambda), growth_(growth), decay_(decay), min_(min), max_(max) {}

void LambdaSchedule::update(double rho, double rho_target) {
  if (mode_ != "adaptive") return;
  lambda_ = rho > rho_target ? std::min(max_, lambda_ * growth_) : std::max(min_, lambda_ * decay_);
}

nlohmann::json LambdaSchedule::state() const { return {{"lambda", lambda_}}; }

void LambdaSchedule::load_state(const nlohmann::json& state) { lambda_ = state.at("lambda").get<double>(); }

}  // namespace autorep::search
