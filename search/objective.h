#pragma once
/// The budget objective of the search (DESIGN.md §4): the kept-ReLU density rho through the
/// straight-through estimator, the penalty lambda*relu(rho - rho*), its constant or adaptive
/// weight, and knowledge distillation from the teacher.

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

namespace autorep::layers {
class GateImpl;
}

namespace autorep::search {

using GateList = std::vector<std::shared_ptr<layers::GateImpl>>;

/// ReLU elements one mask entry of `gate` stands for: 1 (pixel), H*W (channel), all (layer).
int64_t elements_per_entry(const layers::GateImpl& gate);

/// rho = sum_g sum(mask_g) * elements_per_entry_g / total, as a scalar tensor whose gradient
/// reaches each aux through the straight-through estimator: d rho / d aux = softplus(aux) *
/// elements_per_entry / total (no gradient reaches the mask itself).
torch::Tensor relu_density(const GateList& gates);

/// lambda * relu(rho - rho_target).
torch::Tensor budget_penalty(const torch::Tensor& rho, double rho_target, double lambda);

/// Knowledge distillation per sample: T^2 * KL(softmax(t/T) || softmax(s/T)), a vector of N.
torch::Tensor kd_loss_per_sample(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                                 double temperature);
/// Knowledge distillation: kd_loss_per_sample averaged over the batch.
torch::Tensor kd_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits, double temperature);

/// The penalty weight. "constant" keeps `lambda`. "adaptive" multiplies it by `growth` after
/// every step that ends over budget (rho > rho*) and by `decay` after every step within it,
/// clamped to [min, max], so the pressure rises until the budget is met and relaxes after.
class LambdaSchedule {
 public:
  LambdaSchedule(std::string mode, double lambda, double growth, double decay, double min, double max);
  double value() const { return lambda_; }
  /// Updates lambda after a step that ended at density `rho` against the target.
  void update(double rho, double rho_target);
  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

 private:
  std::string mode_;
  double lambda_, growth_, decay_, min_, max_;
};

}  // namespace autorep::search
