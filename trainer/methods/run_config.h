#pragma once
/// The run config as users write it: the engine's sections plus every registered method's own
/// keys and checks (engine/config.h with the method registry's schema). Everything that reads
/// a user's config goes through these.

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "trainer/engine/config.h"

namespace autorep::trainer::methods {

/// All keys with their defaults.
nlohmann::json config_defaults();
/// engine::config_from_json with every registered method.
engine::Config config_from_json(const nlohmann::json& user, const std::string& source = "config");
/// engine::comparable_config with every registered method.
nlohmann::json comparable_config(const nlohmann::json& config_json, const std::string& source = "config");
/// Reads a config file, applies `--set` overrides, checks and resolves it.
engine::Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace autorep::trainer::methods
