#pragma once
/// The training loop shared by every method: seeded batches, phases with their optimisers and
/// schedules, evaluation, metrics, progress output, atomic checkpoints and exact resume.

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <string>

#include "trainer/config.h"
#include "trainer/data.h"
#include "trainer/models.h"

namespace autorep::trainer {

namespace dist {
class Group;
}

struct RunOptions {
  std::string out_dir;          ///< run directory (created)
  bool resume = false;          ///< continue from out_dir/checkpoints/last.pt
  int64_t stop_after_steps = -1;  ///< stop (as if killed) after this many steps in this process; -1: never
  bool quiet = false;           ///< no console output (log.txt is still written)
  int64_t spike_at_step = -1;   ///< tests: multiply this step's loss (counted in this process) by 1e6, as an outlier batch's
};

struct RunResult {
  std::string out_dir;
  double best_accuracy = 0.0;   ///< best test accuracy among checkpoints eligible for best.pt
  double final_accuracy = 0.0;  ///< test accuracy after the last epoch
  int64_t kept_relus = 0;       ///< of the final model, per sample
  int64_t total_relus = 0;
  double seconds = 0.0;         ///< wall time of this process's training
  bool completed = false;       ///< false when stopped early by stop_after_steps
  nlohmann::json summary;       ///< method-specific summary (e.g. export path)
};

/// Runs (or resumes) a training run as configured.
RunResult run_training(const Config& config, const RunOptions& options);

/// The summary a finished run leaves in `<run dir>/result.json` (written by `autorep train` and
/// by sweeps; paths relative to the run folder). Reduction runs: method, budget, relu_count,
/// total_relus, accuracy (of the exported model), best_accuracy, final_accuracy, seconds,
/// export_path. Baselines: method, accuracy (best), final_accuracy, relu_count, total_relus,
/// seconds, checkpoint.
nlohmann::json run_result_json(const Config& config, const RunResult& result);
/// Writes run_result_json() to `<result.out_dir>/result.json` atomically (rank 0 only) and
/// returns it.
nlohmann::json write_run_result(const Config& config, const RunResult& result);

/// Sets LibTorch's intra-op threads: `threads`, or all cores when 0. Returns the count used.
int64_t configure_threads(int64_t threads);
/// Resolves "auto" | "cpu" | "cuda" (error when cuda is asked for but not available).
torch::Device resolve_device(const std::string& device);

/// Test accuracy and mean loss of `model` on a split. A sample whose logits are not all finite
/// (a mostly polynomial network can overflow on some inputs) counts as wrong, is left out of
/// the mean loss and is counted in `nonfinite`.
struct EvalResult {
  double accuracy = 0.0;
  double loss = 0.0;  ///< mean over the samples with finite logits (NaN when there are none)
  int64_t samples = 0;
  int64_t nonfinite = 0;
};
/// With `group`, each process evaluates its share of the split and every process gets the totals.
EvalResult evaluate(NetImpl& model, const DataSplits& data, const Dataset& split, torch::Device device,
                    int64_t batch_size, dist::Group* group = nullptr);

/// A model rebuilt from a checkpoint: its config, the model (weights loaded) and the state.
struct LoadedModel {
  Config config;
  Net model;
  nlohmann::json state;
};
/// Rebuilds the model a checkpoint was trained as (activations per its method) and loads it.
LoadedModel load_model(const std::string& checkpoint);

/// ModelSpec of a config for data of the given input shape and classes.
ModelSpec model_spec(const Config& config, const std::vector<int64_t>& input_shape, int64_t classes);
nlohmann::json spec_to_json(const ModelSpec& spec);
ModelSpec spec_from_json(const nlohmann::json& j);

}  // namespace autorep::trainer
