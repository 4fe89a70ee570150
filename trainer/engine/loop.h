#pragma once
/// The training loop shared by every method: seeded batches, phases with their optimisers and
/// schedules, evaluation, metrics, progress output, atomic checkpoints and exact resume.

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/engine/config.h"
#include "trainer/engine/method.h"
#include "trainer/models/net.h"

namespace autorep::trainer::engine {

struct RunOptions {
  std::string out_dir;          ///< run directory (created)
  bool resume = false;          ///< continue from out_dir/checkpoints/last.pt
  int64_t stop_after_steps = -1;  ///< stop (as if killed) after this many steps in this process; -1: never
  bool quiet = false;           ///< no console output (log.txt is still written)
  int64_t spike_at_step = -1;   ///< tests: multiply this step's loss (counted in this process) by 1e6, as an outlier batch's
  int64_t spike_steps = 1;      ///< tests: ... and that of the spike_steps - 1 steps after it
};

struct RunResult {
  std::string out_dir;
  std::string best_checkpoint;  ///< out_dir/checkpoints/best.pt
  double best_accuracy = 0.0;   ///< test accuracy of best.pt (the eligible checkpoint best on validation, or on test without a split)
  double best_val_accuracy = -1.0;  ///< validation accuracy of best.pt (-1: no validation split)
  double final_accuracy = 0.0;  ///< test accuracy after the last epoch
  int64_t kept_relus = 0;       ///< of the final model, per sample
  int64_t total_relus = 0;
  double seconds = 0.0;         ///< wall time of this process's training
  /// Wall time of this process's training steps alone (batch assembly, the step, progress; not
  /// evaluation, checkpoints or setup), and how many steps that was: `autorep bench epoch`.
  double step_seconds = 0.0;
  int64_t steps_timed = 0;
  int64_t skipped_steps = 0;    ///< steps the spike guard skipped over the whole run
  int64_t rollbacks = 0;        ///< divergences the run went back from (train.spike_rollbacks)
  nlohmann::json method_state;  ///< the method's state at the end (Method::state())
  bool completed = false;       ///< false when stopped early by stop_after_steps
  nlohmann::json class_report;  ///< per-class test accuracy of best.pt, with drops against the teacher (class_report)
  nlohmann::json teacher_class_report;  ///< the teacher's on the same split (null without a teacher)
  nlohmann::json summary;       ///< what the command added after training (the export's summary); null if nothing
};

/// Runs (or resumes) a training run of `method` as configured. With --resume the caller has
/// checked that the config matches the run's (methods::train does).
RunResult run_training(const Config& config, Method& method, const RunOptions& options);

/// ModelSpec of a config for data of the given input shape and classes.
models::ModelSpec model_spec(const Config& config, const std::vector<int64_t>& input_shape, int64_t classes);

}  // namespace autorep::trainer::engine
