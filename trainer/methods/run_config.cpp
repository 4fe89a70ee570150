#include "trainer/methods/run_config.h"

#include "trainer/methods/registry.h"

namespace autorep::trainer::methods {

nlohmann::json config_defaults() { return engine::config_defaults(config_schema()); }

engine::Config config_from_json(const nlohmann::json& user, const std::string& source) {
  return engine::config_from_json(user, config_schema(), source);
}

nlohmann::json comparable_config(const nlohmann::json& config_json, const std::string& source) {
  return engine::comparable_config(config_json, config_schema(), source);
}

engine::Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  return engine::load_config(path, overrides, config_schema());
}

}  // namespace autorep::trainer::methods
