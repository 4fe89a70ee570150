#pragma once
/// One optimiser step, as every run takes it and `autorep bench step` measures it: forward,
/// the method's loss, backward (with the gradients all-reduced in a multi-process run), the
/// spike guard, gradient clipping, the optimiser step and the method's after-step hook.

#include <torch/types.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/engine/distributed.h"
#include "trainer/engine/method.h"
#include "trainer/engine/spike_guard.h"

namespace autorep::trainer::engine {

/// What a step needs besides its batch.
/// Thrown by train_step when the run has diverged (train.skip_spikes loss spikes in a row, or a
/// non-finite loss without the guard); the training loop rolls back (train.spike_rollbacks) or
/// stops with it.
struct Diverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct StepEnv {
  TrainContext* ctx = nullptr;     ///< ctx->optimizer is the phase's optimiser
  Method* method = nullptr;
  SpikeGuard* guard = nullptr;
  StepSnapshot* running_stats = nullptr;  ///< saved before and restored after a skipped step
  int64_t global_batch = 0;        ///< samples of the batch over all processes
  dist::Group* group = nullptr;    ///< null in a one-process run
  dist::GradientSync* sync = nullptr;
};

/// What one step produced.
struct StepOutcome {
  double loss = 0.0;      ///< mean loss of the global batch
  double judged_loss = 0.0;  ///< what the spike guard judged: `loss` less the method's unjudged parts
  bool skipped = false;   ///< skipped by the spike guard: no update, running statistics restored
  bool stop_requested = false;  ///< some process got SIGINT/SIGTERM before this step: stop after it
  /// CPU float64, summed over the processes: [loss * B, correct predictions, part_1 * B, ...,
  /// processes asked to stop].
  torch::Tensor batch_stats;
  std::vector<std::string> part_names;  ///< of the loss parts, in batch_stats order from index 2
  std::string spike_detail;  ///< a skipped step: where its activations ran out (describe_spike)
};

/// Takes one step on the batch (x, y) of this process; counts it in ctx->global_step and
/// ctx->phase_step whether or not it is skipped. `loss_factor` scales the loss (tests use it
/// to make an outlier batch). Throws "training diverged: ..." when the loss is not finite (or
/// the guard saw too many spikes in a row), naming the epoch and `step_in_epoch`.
StepOutcome train_step(const StepEnv& env, const Phase& phase, const torch::Tensor& x, const torch::Tensor& y,
                       int64_t step_in_epoch, double loss_factor = 1.0);

/// Where a batch's activations ran out, for the log line of a skipped step: forwards `x` again
/// (no graph) with every gate probing, and names the first gate in forward order that saw an
/// input beyond 20 running standard deviations at a polynomial position, and the gate with the
/// largest such input, with their output peaks. Changes the running statistics as a training
/// forward does (the caller restores them). "" for a model without gates.
std::string describe_spike(models::NetImpl& model, const torch::Tensor& x);

/// What a diverged step looked like, for its error message: the loss parts, how many samples had
/// non-finite logits, the first parameter that is not finite (by name) or, when all are finite,
/// that the batch's activations overflowed; and what to try.
std::string describe_divergence(models::NetImpl& model, const LossOutput& loss, const torch::Tensor& logits);

}  // namespace autorep::trainer::engine
