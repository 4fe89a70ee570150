#include "search/fairness.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace autorep::search {

GroupFairness::GroupFairness(int64_t groups, FairnessOptions options)
    : options_(options), gamma_(static_cast<size_t>(std::max<int64_t>(groups, 0)), 0.0),
      sums_(torch::zeros({2 * std::max<int64_t>(groups, 0)}, torch::kDouble)) {
  if (groups < 1) throw std::invalid_argument("search.fairness: needs at least one group");
}

torch::Tensor GroupFairness::penalty(const torch::Tensor& per_sample_loss, const torch::Tensor& group) {
  TORCH_CHECK(per_sample_loss.dim() == 1 && group.dim() == 1 && group.size(0) == per_sample_loss.size(0),
              "fairness penalty: expected per-sample losses and group indices of one length, got ",
              per_sample_loss.sizes(), " and ", group.sizes());
  const int64_t g_count = groups();
  const auto g = group.to(per_sample_loss.device(), torch::kLong);
  const auto mean = per_sample_loss.mean();
  // Per-group sums and counts in one scatter each (no loop over groups on the device).
  auto sums = torch::zeros({g_count}, per_sample_loss.options()).index_add(0, g, per_sample_loss);
  auto counts = torch::zeros({g_count}, per_sample_loss.options()).index_add(0, g, torch::ones_like(per_sample_loss));
  const auto present = counts > 0;
  const auto group_mean = sums / counts.clamp_min(1);
  const auto violation = torch::where(present, (group_mean - mean).abs(), torch::zeros_like(group_mean));
  if (!gamma_t_.defined() || gamma_t_.device() != per_sample_loss.device() ||
      gamma_t_.scalar_type() != per_sample_loss.scalar_type())
    gamma_t_ = torch::tensor(gamma_, torch::kDouble).to(per_sample_loss.options());
  const auto& gamma = gamma_t_;
  pending_ = torch::cat({violation.detach(), present.to(violation.scalar_type())});
  return (gamma * violation).sum();
}

void GroupFairness::commit() {
  if (!pending_.defined()) return;
  if (sums_.device() != pending_.device()) sums_ = sums_.to(pending_.device());
  sums_.add_(pending_.to(torch::kDouble));
  pending_ = torch::Tensor();
}

torch::Tensor GroupFairness::epoch_sums() const { return sums_.to(torch::kCPU).clone(); }

std::vector<double> GroupFairness::mean_violations(const torch::Tensor& sums) {
  const int64_t g = sums.numel() / 2;
  const auto s = sums.to(torch::kCPU, torch::kDouble).contiguous();
  const double* p = s.data_ptr<double>();
  std::vector<double> out(static_cast<size_t>(g), 0.0);
  for (int64_t i = 0; i < g; ++i) out[i] = p[g + i] > 0 ? p[i] / p[g + i] : 0.0;
  return out;
}

void GroupFairness::dual_step(const torch::Tensor& sums) {
  TORCH_CHECK(sums.numel() == 2 * groups(), "fairness dual step: expected ", 2 * groups(), " sums, got ", sums.numel());
  const auto mean = mean_violations(sums);
  for (size_t i = 0; i < gamma_.size(); ++i)
    gamma_[i] = std::max(0.0, gamma_[i] + options_.mu * (mean[i] - options_.tolerance));
  sums_.zero_();
  gamma_t_ = torch::Tensor();
}

nlohmann::json GroupFairness::state() const {
  const int64_t g = groups();
  const auto s = sums_.to(torch::kCPU).contiguous();
  const double* p = s.data_ptr<double>();
  return {{"multipliers", gamma_},
          {"violation_sums", std::vector<double>(p, p + g)},
          {"violation_batches", std::vector<double>(p + g, p + 2 * g)}};
}

void GroupFairness::load_state(const nlohmann::json& state) {
  const auto gamma = state.at("multipliers").get<std::vector<double>>();
  const auto vs = state.at("violation_sums").get<std::vector<double>>();
  const auto vb = state.at("violation_batches").get<std::vector<double>>();
  const size_t g = gamma_.size();
  if (gamma.size() != g || vs.size() != g || vb.size() != g)
    throw std::runtime_error("fairness state: " + std::to_string(gamma.size()) + " multipliers in the checkpoint, " +
                             std::to_string(g) + " groups in the run");
  gamma_ = gamma;
  std::vector<double> all(vs);
  all.insert(all.end(), vb.begin(), vb.end());
  sums_ = torch::tensor(all, torch::kDouble);
  gamma_t_ = torch::Tensor();
}

}  // namespace autorep::search
