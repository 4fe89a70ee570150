#include "trainer/methods/registry.h"

#include <stdexcept>

#include "layers/util/json_check.h"

namespace autorep::trainer::methods {

const std::vector<MethodEntry>& registry() {
  static const std::vector<MethodEntry> entries = [] {
    std::vector<MethodEntry> e = {baseline_method(), autorep_method(), snl_method(), uniform_method(),
                                  random_method(), deepreduce_method()};
    for (auto& m : e) {
      m.schema.name = m.name;
      // search.deepreduce is deepreduce's alone: a change there never makes another run differ.
      if (m.name != "deepreduce") m.schema.unused_keys.push_back("search.deepreduce");
    }
    return e;
  }();
  return entries;
}

const MethodEntry& find_method(const std::string& name) {
  for (const auto& m : registry())
    if (m.name == name) return m;
  throw std::runtime_error("method: expected one of " + util::join(method_names()) + ", got \"" + name + "\"");
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& m : registry()) names.push_back(m.name);
  return names;
}

std::vector<std::string> reduction_method_names() {
  std::vector<std::string> names;
  for (const auto& m : registry())
    if (m.reduces) names.push_back(m.name);
  return names;
}

std::unique_ptr<engine::Method> make_method(const engine::Config& config) { return find_method(config.method).make(config); }

const engine::ConfigSchema& config_schema() {
  static const engine::ConfigSchema schema = [] {
    engine::ConfigSchema s;
    for (const auto& m : registry()) s.methods.push_back(m.schema);
    return s;
  }();
  return schema;
}

}  // namespace autorep::trainer::methods
