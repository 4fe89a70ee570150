#pragma once
/// The method registry: every training method by name, with what it adds to the config and
/// the factory that makes it. Config validation, sweeps, the CLI help and the tests ask it.
/// Adding a method is one new file in this folder plus its entry in registry.cpp.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainer/engine/config.h"
#include "trainer/engine/loop.h"
#include "trainer/engine/method.h"

namespace autorep::trainer::methods {

struct MethodEntry {
  std::string name;
  std::string summary;   ///< one line for the CLI help
  bool reduces = true;   ///< brings the ReLUs to search.budget and exports masks (false: a baseline)
  /// Its own `search` keys, the keys it never reads, its checks (schema.name == name).
  engine::MethodSchema schema;
  std::function<std::unique_ptr<engine::Method>(const engine::Config&)> make;
  /// Work before the run's own training, in every process (DeepReDuce: the stage-criticality
  /// profile of the teacher, trained once and reused); empty for most methods.
  std::function<void(const engine::Config&, const engine::RunOptions&)> before_training;
};

/// Every registered method, in the order the CLI help and sweeps list them.
const std::vector<MethodEntry>& registry();
/// The entry of `name`; throws "method: expected one of ..., got ..." for an unknown name.
const MethodEntry& find_method(const std::string& name);
std::vector<std::string> method_names();
/// The methods with `reduces` (what a sweep runs).
std::vector<std::string> reduction_method_names();
/// The method named by `config.method`.
std::unique_ptr<engine::Method> make_method(const engine::Config& config);
/// The config schema of every registered method (what methods::config_from_json checks against).
const engine::ConfigSchema& config_schema();

// One factory per method file.
MethodEntry baseline_method();
MethodEntry autorep_method();
MethodEntry snl_method();
MethodEntry uniform_method();
MethodEntry random_method();
MethodEntry deepreduce_method();

}  // namespace autorep::trainer::methods
