#pragma once
/// Checkpoints: model parameters and buffers, optimiser state, the training position
/// (phase, epoch, step, accumulators), method state, RNG state and the resolved config,
/// written atomically (temporary file + rename) so a crash never leaves a half-written file.

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <string>

namespace torch::optim {
class Optimizer;
}

namespace autorep::trainer::engine {

/// What a checkpoint holds besides tensors.
struct CheckpointMeta {
  nlohmann::json config;  ///< resolved config of the run
  nlohmann::json state;   ///< training position, accumulators, method state, model spec
};

/// Writes model (+ optimiser when given) and meta to `path` atomically.
void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                     const torch::optim::Optimizer* optimizer, const CheckpointMeta& meta);

/// Reads only the meta (config and state) of a checkpoint; throws naming the file when it is
/// missing or not an autorep checkpoint.
CheckpointMeta read_checkpoint_meta(const std::string& path);

/// Whether loading a checkpoint also sets the global CPU generator to the state it saved:
/// only a resume does; loading a teacher or a model to evaluate leaves the run's RNG alone.
enum class RngState { keep, restore };

/// Loads parameters and buffers into `model` (which must have the checkpoint's structure)
/// and, when `optimizer` is given and the checkpoint has optimiser state, the optimiser.
void load_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     RngState rng = RngState::keep);

/// Whether the checkpoint at `path` holds optimiser state.
bool checkpoint_has_optimizer(const std::string& path);

}  // namespace autorep::trainer::engine
