#include "trainer/methods/run_model.h"

#include <torch/torch.h>

#include <filesystem>
#include <stdexcept>

#include "trainer/engine/checkpoint.h"
#include "trainer/methods/registry.h"
#include "trainer/methods/run_config.h"
#include "trainer/models/registry.h"

namespace autorep::trainer::methods {

namespace fs = std::filesystem;

engine::RunResult train(const engine::Config& config, const engine::RunOptions& options) {
  auto method = make_method(config);
  const std::string last_path = (fs::path(options.out_dir) / "checkpoints" / "last.pt").string();
  if (options.resume && fs::exists(last_path)) {
    // Resuming with a different config would silently change the run; only how it runs may differ.
    const engine::CheckpointMeta meta = engine::read_checkpoint_meta(last_path);
    const nlohmann::json saved = comparable_config(meta.config, last_path), now = comparable_config(engine::to_json(config));
    if (saved != now) {
      const auto diff = nlohmann::json::diff(saved, now);
      throw std::runtime_error("--resume: the config differs from the one the run in " + options.out_dir +
                               " was started with (first difference at " +
                               diff.at(0).value("path", std::string("?")) + ")");
    }
  }
  const MethodEntry& entry = find_method(config.method);
  if (entry.before_training) entry.before_training(config, options);
  return engine::run_training(config, *method, options);
}

data::DataSplits load_test_split(const LoadedModel& lm, const data::DataOptions& options) {
  data::DataSplits data = data::load_dataset(options);
  if (!lm.state.contains("normalisation")) return data;
  const auto& n = lm.state.at("normalisation");
  auto mean = n.at("mean").get<std::vector<float>>(), std = n.at("std").get<std::vector<float>>();
  if (mean.size() != data.mean.size() || std.size() != data.std.size())
    throw std::runtime_error("the checkpoint was trained on " + std::to_string(mean.size()) +
                             "-channel images, the data set has " + std::to_string(data.mean.size()) + " channels");
  data.mean = std::move(mean);
  data.std = std::move(std);
  return data;
}

LoadedModel load_model(const std::string& checkpoint) {
  const engine::CheckpointMeta meta = engine::read_checkpoint_meta(checkpoint);
  LoadedModel out;
  out.config = config_from_json(meta.config, checkpoint + " (its config)");
  out.state = meta.state;
  if (!meta.state.contains("model_spec"))
    throw std::runtime_error(checkpoint + ": checkpoint has no model description");
  const models::ModelSpec spec = models::spec_from_json(meta.state.at("model_spec"));
  auto method = make_method(out.config);
  out.model = models::build_model(spec, method->factory());
  engine::load_checkpoint(checkpoint, *out.model, nullptr);
  out.model->eval();
  return out;
}

}  // namespace autorep::trainer::methods
