#pragma once
/// Runs and checkpoints of a method: training one (the method made from the registry) and
/// rebuilding the model a checkpoint holds.

#include <nlohmann/json.hpp>

#include <string>

#include "trainer/engine/config.h"
#include "trainer/engine/loop.h"
#include "trainer/models/net.h"

namespace autorep::trainer::methods {

/// Makes the method of `config.method` and runs engine::run_training. With --resume it first
/// checks that the config matches the one the run was started with (comparable_config), so a
/// resumed run never silently changes.
engine::RunResult train(const engine::Config& config, const engine::RunOptions& options);

/// A model rebuilt from a checkpoint: its config, the model (weights loaded) and the state.
struct LoadedModel {
  engine::Config config;
  models::Net model;
  nlohmann::json state;
};
/// Rebuilds the model a checkpoint was trained as (activations per its method) and loads it.
LoadedModel load_model(const std::string& checkpoint);

}  // namespace autorep::trainer::methods
