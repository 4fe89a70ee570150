#pragma once
/// Loss-spike guard: a training step whose loss is far above the recent ones (or not finite) is
/// skipped — no optimiser step, and the batch-norm running statistics its forward changed are put
/// back — so one outlier batch cannot wreck a run. A polynomial-heavy network can turn a single
/// batch into a loss of ~10^4 (x^2 compounding through many layers); the step's clipped gradient
/// and, above all, its batch-norm statistics then cost several epochs to recover from.

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace autorep::trainer::engine {

class SpikeGuard {
 public:
  /// `factor`: a loss above factor x the running mean is a spike (0: off, only non-finite losses
  /// are reported, by the trainer). The running mean is the plain mean of the phase's accepted
  /// losses while there are fewer than 1 / (1 - `decay`) of them, then an exponential moving
  /// average (weight 1 - `decay` per step); no finite loss is judged before `warmup` were accepted.
  explicit SpikeGuard(double factor, int64_t warmup = 20, double decay = 0.98, int64_t max_consecutive = 20);

  bool enabled() const { return factor_ > 0; }
  /// Records a step's loss (the whole batch's mean); true when the step must be skipped.
  bool skip(double loss);
  /// True once `max_consecutive` steps in a row were skipped: the run has diverged.
  bool diverged() const { return consecutive_ >= max_consecutive_; }
  /// Starts a new phase: its loss scale may differ (the search penalty ends at the finetune).
  void reset_mean();
  double mean() const { return mean_; }
  int64_t consecutive() const { return consecutive_; }
  /// Forgets the current run of skipped steps (a rollback starts a new trajectory).
  void reset_consecutive() { consecutive_ = 0; }

  nlohmann::json state() const;
  void load_state(const nlohmann::json& s);

 private:
  double factor_;
  int64_t warmup_;
  double decay_;
  int64_t max_consecutive_;
  double mean_ = 0.0;
  int64_t accepted_ = 0;  ///< losses in the running mean since the phase began
  int64_t consecutive_ = 0;
};

/// What a training forward changes besides the graph, copied to put back after a skipped step so
/// it leaves no trace: every buffer named running_mean, running_var, running_range or
/// num_batches_tracked (batch norm's and the gates'), the gates' step counters (`step`) and their coefficients c0, c1, c2 (a
/// DaPa refit in the forward overwrites them). The optimiser-state reset a refit calls for waits
/// for Method::before_update, which a skipped step does not reach.
class StepSnapshot {
 public:
  explicit StepSnapshot(torch::nn::Module& model);
  void save();
  void restore();

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> buffers_;  ///< (live buffer, saved copy)
};

}  // namespace autorep::trainer::engine
