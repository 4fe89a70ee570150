// libFuzzer target: a run config as `autorep train --config F --set ...` reads it. Lines of the
// input that start with "--set " are overrides; the rest is the config file's JSON.
#include <nlohmann/json.hpp>

#include <exception>
#include <sstream>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/engine/config.h"
#include "trainer/methods/registry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace autorep::trainer;
  std::istringstream in(autorep::fuzz::text(data, size));
  std::string line, json_text;
  std::vector<std::string> sets;
  while (std::getline(in, line)) {
    if (line.rfind("--set ", 0) == 0)
      sets.push_back(line.substr(6));
    else
      json_text += line + "\n";
  }
  try {
    auto user = nlohmann::json::parse(json_text);
    for (const auto& s : sets) engine::apply_override(user, s);
    const engine::Config config = engine::config_from_json(user, methods::config_schema(), "fuzz.json");
    (void)engine::comparable_config(engine::to_json(config), methods::config_schema());
  } catch (const std::exception&) {
  }
  return 0;
}
