#include "tests/torch_catch.h"

#include <filesystem>

#include "trainer/engine/config.h"
#include "trainer/methods/run_config.h"

using namespace autorep::trainer;
using namespace autorep::trainer::engine;
using namespace autorep::trainer::methods;
using nlohmann::json;

TEST_CASE("defaults resolve and round-trip through JSON", "[config]") {
  const Config c = config_from_json(json::object());
  CHECK(c.method == "baseline");
  CHECK(c.data.name == "fashion-mnist");
  const Config again = config_from_json(to_json(c));
  CHECK(to_json(again) == to_json(c));
}

TEST_CASE("unknown keys and wrong types name the key path", "[config]") {
  CHECK_THROWS_WITH(config_from_json(json{{"optim", {{"learning_rat", 0.1}}}}, "c.json"),
                    Catch::Contains("c.json: optim.learning_rat: unknown key"));
  CHECK_THROWS_WITH(config_from_json(json{{"optim", {{"lr", "fast"}}}}),
                    Catch::Contains("optim.lr: expected number, got \"fast\""));
  CHECK_THROWS_WITH(config_from_json(json{{"train", {{"epochs", 1.5}}}}),
                    Catch::Contains("train.epochs: expected integer"));
  CHECK_THROWS_WITH(config_from_json(json{{"optim", 3}}), Catch::Contains("optim: expected an object"));
  CHECK_THROWS_WITH(config_from_json(json{{"method", "magic"}}), Catch::Contains("method: expected one of"));
  CHECK_THROWS_WITH(config_from_json(json{{"gate", {{"granularity", "row"}}}}),
                    Catch::Contains("gate.granularity"));
  CHECK_THROWS_WITH(config_from_json(json{{"search", {{"budget", true}}}}), Catch::Contains("search.budget"));
  CHECK_THROWS_WITH(config_from_json(json{{"train", {{"epochs", 0}}}}), Catch::Contains("train.epochs"));
  CHECK_THROWS_WITH(config_from_json(json{{"search", {{"kd", {{"teacher_dtype", "half"}}}}}}),
                    Catch::Contains("search.kd.teacher_dtype: expected one of"));
  CHECK_NOTHROW(config_from_json(json{{"search", {{"kd", {{"teacher_dtype", "bfloat16"}}}}}}));
  // Lists: entries of the default list's type.
  auto deepreduce = [](const json& keys) { return json{{"search", {{"deepreduce", keys}}}}; };
  CHECK_THROWS_WITH(config_from_json(deepreduce({{"widths", {1, "half"}}})),
                    Catch::Contains("search.deepreduce.widths[1]: expected number, got \"half\""));
  CHECK_THROWS_WITH(config_from_json(deepreduce({{"stem_strides", 2}})),
                    Catch::Contains("search.deepreduce.stem_strides: expected a list"));
  CHECK_THROWS_WITH(config_from_json(deepreduce({{"stem_strides", {1, 1.5}}})),
                    Catch::Contains("search.deepreduce.stem_strides[1]: expected integer"));
  CHECK_THROWS_WITH(config_from_json(deepreduce({{"widths", {1, 2}}})),
                    Catch::Contains("search.deepreduce.widths: each width must be in (0, 1]"));
  CHECK_THROWS_WITH(config_from_json(deepreduce({{"replacement", "relu6"}})),
                    Catch::Contains("search.deepreduce.replacement: expected one of"));
  CHECK_THROWS_WITH(config_from_json(json{{"model", {{"name", "vgg16"}, {"width", 0.5}}}}),
                    Catch::Contains("model.width: applies to resnet18, resnet20 and wrn-22-8 only"));
  const Config c = config_from_json(deepreduce({{"keep_stages", {"layer3"}}, {"widths", {1, 0.5}}}));
  CHECK(c.search.method_keys["deepreduce"]["keep_stages"] == json::array({"layer3"}));
}

TEST_CASE("numeric gate keys are range-checked and a search must leave finetune epochs", "[config]") {
  for (const char* key : {"scale1", "scale2"}) {
    CAPTURE(key);
    for (double bad : {0.0, -1.0}) {
      CHECK_THROWS_WITH(config_from_json(json{{"gate", {{key, bad}}}}),
                        Catch::Contains(std::string("gate.") + key) && Catch::Contains("> 0"));
    }
  }
  for (const char* key : {"w0_div", "w2_div", "var_floor"})
    CHECK_THROWS_WITH(config_from_json(json{{"gate", {{"dapa", {{key, 0}}}}}}),
                      Catch::Contains(std::string("gate.dapa.") + key));
  CHECK_THROWS_WITH(config_from_json(json{{"gate", {{"dapa", {{"sigma_scale", 0.5}}}}}}),
                    Catch::Contains("gate.dapa.sigma_scale") && Catch::Contains(">= 1"));
  CHECK_THROWS_WITH(config_from_json(json{{"gate", {{"dapa", {{"calibration_batches", -1}}}}}}),
                    Catch::Contains("gate.dapa.calibration_batches"));
  CHECK_THROWS_WITH(config_from_json(json{{"gate", {{"threshold", -0.1}}}}), Catch::Contains("gate.threshold"));
  CHECK_NOTHROW(config_from_json(json{{"gate", {{"scale2", 0.05}, {"dapa", {{"sigma_scale", 1}}}}}}));
  // The search epochs must leave a finetune (best.pt is chosen among its epochs).
  CHECK_THROWS_WITH(config_from_json(json{{"method", "autorep"}, {"train", {{"epochs", 5}}}, {"search", {{"search_epochs", 5}}}}),
                    Catch::Contains("search.search_epochs") && Catch::Contains("below train.epochs"));
  CHECK_NOTHROW(config_from_json(json{{"method", "autorep"}, {"train", {{"epochs", 6}}}, {"search", {{"search_epochs", 5}}}}));
  // Fixed masks have no search phase: search_epochs does not apply to them.
  CHECK_NOTHROW(config_from_json(json{{"method", "uniform"}, {"train", {{"epochs", 2}}}}));
}

TEST_CASE("set overrides (--set) change any key, parsing JSON values and falling back to strings", "[config]") {
  json user = json::object();
  apply_override(user, "optim.lr=0.05");
  apply_override(user, "data.path=/tmp/some data");
  apply_override(user, "search.budget=\"2%\"");
  apply_override(user, "search.budget_unused_check=1");
  user["search"].erase("budget_unused_check");
  apply_override(user, "optim.nesterov=true");
  const Config c = config_from_json(user);
  CHECK(c.optim.lr == 0.05);
  CHECK(c.data.path == "/tmp/some data");
  CHECK(c.search.budget == "2%");
  CHECK(c.optim.nesterov);
  CHECK_THROWS_WITH(apply_override(user, "novalue"), Catch::Contains("key.path=value"));
}

TEST_CASE("every shipped config is valid", "[config]") {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(AUTOREP_SOURCE_DIR) + "/configs")) {
    const std::string name = e.path().filename().string();
    // Run configs only: sweep files and cost tables have their own readers and tests.
    if (e.path().extension() != ".json" || name.rfind("sweep-", 0) == 0 || name.rfind("cost-", 0) == 0) continue;
    const json j = read_json_file(e.path().string());
    if (j.contains("budgets")) continue;  // sweep configs are checked by the sweep tests
    INFO(e.path().string());
    CHECK_NOTHROW(load_config(e.path().string()));
    ++n;
  }
  CHECK(n >= 6);
}

TEST_CASE("comparable configs ignore run-only keys and fill keys an older autorep did not write", "[config]") {
  Config c;
  c.method = "autorep";
  json full = to_json(c);
  json older = full;
  older["gate"]["dapa"].erase("var_floor");  // a key added after that run started
  json other_machine = full;
  other_machine["train"]["threads"] = 7;
  other_machine["train"]["checkpoint_interval_s"] = 5.0;
  CHECK(comparable_config(older) == comparable_config(full));
  CHECK(comparable_config(other_machine) == comparable_config(full));
  CHECK_FALSE(comparable_config(full).at("train").contains("threads"));
  json changed = full;
  changed["gate"]["dapa"]["var_floor"] = 0.25;
  CHECK(comparable_config(changed) != comparable_config(full));
  // A saved config that no longer parses is compared as written, not dropped.
  json unknown = full;
  unknown["gate"]["retired_key"] = 1;
  CHECK(comparable_config(unknown).at("gate").contains("retired_key"));
}
