#pragma once
/// Runs and checkpoints of a method: training one (the method made from the registry) and
/// rebuilding the model a checkpoint holds.

#include <nlohmann/json.hpp>

#include <string>

#include "trainer/data/dataset.h"
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

/// Loads the data `options` describe (typically data::test_split_options of the checkpoint's
/// config) with the normalisation the checkpoint was trained with: image folders compute theirs
/// from the training images loaded, and the test-split options load one. Checkpoints record
/// it in their state ("normalisation"); older ones keep what the loader computes.
data::DataSplits load_test_split(const LoadedModel& lm, const data::DataOptions& options);

}  // namespace autorep::trainer::methods
