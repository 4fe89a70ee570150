#pragma once
/// Group-fair finetune (Das, Romanelli and Fioretto, ICML 2024): per-group Lagrange
/// multipliers gamma_g, a penalty sum_g gamma_g * |L_g - L| added to the batch loss (L the
/// batch's mean loss, L_g the mean over its samples of group g, both with gradient), and dual
/// ascent gamma_g <- max(0, gamma_g + mu * (mean violation of g - tolerance)) once per epoch.

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace autorep::search {

/// The `search.fairness` section.
struct FairnessOptions {
  bool enabled = false;
  /// Dual step size. 0.4 is the authors' 0.001 summed over an epoch of ~400 batches (their
  /// update adds the summed violations; this one adds the mean, so it does not scale with the
  /// batch count).
  double mu = 0.4;
  /// Violation (in loss units) a group may keep without its multiplier growing.
  double tolerance = 0.0;
  /// Also in the search phase (the paper's mitigation is a finetune step: off by default).
  bool search = false;
};

class GroupFairness {
 public:
  GroupFairness(int64_t groups, FairnessOptions options);

  /// sum_g gamma_g * |L_g - L| over the groups present in the batch (a scalar with gradient
  /// through `per_sample_loss`); `group` holds each sample's group index. Records every present
  /// group's violation |L_g - L| (detached) as pending: commit() adds it to the epoch's record
  /// (a training loop commits only the steps it takes).
  torch::Tensor penalty(const torch::Tensor& per_sample_loss, const torch::Tensor& group);
  /// Adds the last penalty()'s violations to the epoch's record.
  void commit();
  /// This epoch's violation sums: float64 [sum of violations (G), batches the group was in (G)]
  /// on the CPU, to be summed over the processes of a run before dual_step.
  torch::Tensor epoch_sums() const;
  /// The dual step from (summed) epoch_sums(); clears the epoch's record.
  void dual_step(const torch::Tensor& sums);
  /// The mean violation of each group in `sums` (0 for a group no batch held).
  static std::vector<double> mean_violations(const torch::Tensor& sums);

  const std::vector<double>& multipliers() const { return gamma_; }
  int64_t groups() const { return static_cast<int64_t>(gamma_.size()); }
  /// {"multipliers": [...], "violation_sums": [...], "violation_batches": [...]} (a resume
  /// mid-epoch keeps the epoch's record too).
  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

 private:
  FairnessOptions options_;
  std::vector<double> gamma_;
  // No host synchronisation per step: the epoch's record accumulates on the losses' device and
  // the multipliers live there too; both come to the host once per epoch.
  torch::Tensor sums_;     ///< float64 [2G], on the device of the last commit (the CPU at first)
  torch::Tensor pending_;  ///< the last penalty()'s violations and presence, on its device
  torch::Tensor gamma_t_;  ///< gamma_ on the losses' device and dtype (undefined when stale)
};

}  // namespace autorep::search
