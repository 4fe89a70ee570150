#include "trainer/config.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "trainer/models.h"

namespace autorep::trainer {

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(DataOptions, name, path, batch_size, eval_batch_size,
                                                crop_padding, flip, image_size, limit_train, limit_test)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ModelOptions, name, stem_relu)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(OptimOptions, name, lr, momentum, nesterov, weight_decay,
                                                beta1, beta2, schedule, warmup_epochs, min_lr,
                                                grad_clip)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(DapaConfig, enabled, sigma, var_floor, w0_div, w2_div,
                                                refit_every, refit_until)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(GateConfig, granularity, degree, scale1, scale2, threshold,
                                                dapa)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(KdConfig, temperature, weight, teacher_dtype)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(SearchOptions, budget, teacher, search_epochs, lambda,
                                                lambda_mode, lambda_growth, lambda_decay, lambda_min,
                                                lambda_max, aux_lr, search_optim, finetune_optim, kd,
                                                snl_l1, snl_growth)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TrainOptions, epochs, seed, label_smoothing, threads, device,
                                                checkpoint_interval_s, log_every, eval_every, skip_spikes)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Config, method, data, model, gate, search, optim, train)

namespace {

std::string type_name(const nlohmann::json& v) {
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_object()) return "object";
  if (v.is_array()) return "array";
  return "null";
}

[[noreturn]] void fail(const std::string& source, const std::string& path, const std::string& what) {
  throw std::runtime_error(source + ": " + path + ": " + what);
}

std::string keys_of(const nlohmann::json& obj) {
  std::string out;
  for (auto it = obj.begin(); it != obj.end(); ++it) out += (out.empty() ? "" : ", ") + it.key();
  return out;
}

// Merges `user` into `base` (the defaults), refusing keys that base does not have and values whose
// type does not match the default's. Keys starting with '_' are comments and are ignored.
void merge_checked(nlohmann::json& base, const nlohmann::json& user, const std::string& path,
                   const std::string& source) {
  if (!user.is_object())
    fail(source, path.empty() ? "(top level)" : path, "expected an object, got " + user.dump());
  for (auto it = user.begin(); it != user.end(); ++it) {
    const std::string& key = it.key();
    if (!key.empty() && key[0] == '_') continue;
    const std::string p = path.empty() ? key : path + "." + key;
    if (!base.contains(key))
      fail(source, p, "unknown key (valid keys" + (path.empty() ? std::string() : " in " + path) + ": " +
                          keys_of(base) + ")");
    nlohmann::json& b = base[key];
    const nlohmann::json& v = it.value();
    if (p == "search.budget") {
      if (!(v.is_number_integer() || v.is_number_unsigned() || v.is_string()))
        fail(source, p, "expected a ReLU count (integer) or a percentage string like \"3%\", got " + v.dump());
      b = v;
      continue;
    }
    if (b.is_object()) {
      merge_checked(b, v, p, source);
      continue;
    }
    bool ok = false;
    if (b.is_boolean()) ok = v.is_boolean();
    else if (b.is_number_integer() || b.is_number_unsigned()) ok = v.is_number_integer() || v.is_number_unsigned();
    else if (b.is_number()) ok = v.is_number();
    else if (b.is_string()) ok = v.is_string();
    if (!ok) fail(source, p, "expected " + type_name(b) + ", got " + v.dump());
    if ((b.is_number_unsigned()) && v.is_number_integer() && v.get<int64_t>() < 0)
      fail(source, p, "expected a non-negative integer, got " + v.dump());
    b = v;
  }
}

void check_one_of(const std::string& source, const std::string& path, const std::string& value,
                  const std::vector<std::string>& valid) {
  std::string list;
  for (const auto& v : valid) {
    if (value == v) return;
    list += (list.empty() ? "" : ", ") + std::string(v);
  }
  fail(source, path, "expected one of " + list + ", got \"" + value + "\"");
}

void check_positive(const std::string& source, const std::string& path, double v) {
  if (!(v > 0)) fail(source, path, "expected a positive value, got " + std::to_string(v));
}

void check_optim(const std::string& source, const std::string& path, const OptimOptions& o) {
  check_one_of(source, path + ".name", o.name, {"sgd", "adam"});
  check_one_of(source, path + ".schedule", o.schedule, {"cosine", "constant"});
  check_positive(source, path + ".lr", o.lr);
  if (o.weight_decay < 0) fail(source, path + ".weight_decay", "must be >= 0");
  if (o.warmup_epochs < 0) fail(source, path + ".warmup_epochs", "must be >= 0");
  if (o.grad_clip < 0) fail(source, path + ".grad_clip", "must be >= 0 (0 turns clipping off)");
}

void validate(const Config& c, const std::string& source) {
  check_one_of(source, "method", c.method, {"baseline", "autorep", "snl", "uniform", "random"});
  check_one_of(source, "model.name", c.model.name, model_names());
  check_one_of(source, "data.name", c.data.name, {"fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder"});
  if (c.data.batch_size <= 0) fail(source, "data.batch_size", "must be positive");
  if (c.data.eval_batch_size <= 0) fail(source, "data.eval_batch_size", "must be positive");
  check_optim(source, "optim", c.optim);
  check_optim(source, "search.search_optim", c.search.search_optim);
  check_optim(source, "search.finetune_optim", c.search.finetune_optim);
  check_one_of(source, "gate.granularity", c.gate.granularity, {"pixel", "channel", "layer"});
  if (c.gate.degree != 1 && c.gate.degree != 2) fail(source, "gate.degree", "expected 1 or 2");
  check_one_of(source, "gate.dapa.sigma", c.gate.dapa.sigma, {"std", "var"});
  check_one_of(source, "search.lambda_mode", c.search.lambda_mode, {"constant", "adaptive"});
  check_one_of(source, "train.device", c.train.device, {"auto", "cpu", "cuda"});
  if (c.train.epochs <= 0) fail(source, "train.epochs", "must be positive");
  if (c.train.threads < 0) fail(source, "train.threads", "must be >= 0");
  if (c.train.label_smoothing < 0 || c.train.label_smoothing >= 1)
    fail(source, "train.label_smoothing", "must be in [0, 1)");
  if (c.train.skip_spikes != 0 && !(c.train.skip_spikes > 1))
    fail(source, "train.skip_spikes", "must be 0 (off) or a factor > 1");
  if (c.search.kd.temperature <= 0) fail(source, "search.kd.temperature", "must be positive");
  check_one_of(source, "search.kd.teacher_dtype", c.search.kd.teacher_dtype, {"float32", "bfloat16"});
  if (c.method != "baseline" && c.search.search_epochs > c.train.epochs)
    fail(source, "search.search_epochs", "must not exceed train.epochs (" + std::to_string(c.train.epochs) + ")");
}

}  // namespace

nlohmann::json config_defaults() { return Config{}; }

nlohmann::json to_json(const Config& config) { return config; }

Config config_from_json(const nlohmann::json& user, const std::string& source) {
  nlohmann::json merged = config_defaults();
  merge_checked(merged, user, "", source);
  Config c = merged.get<Config>();
  validate(c, source);
  return c;
}

nlohmann::json comparable_config(const nlohmann::json& config_json, const std::string& source) {
  nlohmann::json out = config_json;
  try {
    out = to_json(config_from_json(config_json, source));
  } catch (const std::exception&) {
  }
  if (out.contains("train"))
    for (const char* k : {"threads", "device", "checkpoint_interval_s", "log_every"}) out["train"].erase(k);
  const std::string method = out.value("method", std::string("baseline"));
  if (method == "baseline") out.erase("search");
  if (method == "snl" && out.contains("gate"))
    for (const char* k : {"degree", "scale1", "scale2", "dapa"}) out["gate"].erase(k);
  return out;
}

void apply_override(nlohmann::json& user, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::runtime_error("--set " + assignment + ": expected key.path=value");
  const std::string path = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  nlohmann::json* node = &user;
  std::stringstream ss(path);
  std::string part;
  std::vector<std::string> parts;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    nlohmann::json& next = (*node)[parts[i]];
    if (next.is_null()) next = nlohmann::json::object();
    if (!next.is_object())
      throw std::runtime_error("--set " + assignment + ": " + parts[i] + " is not a section");
    node = &next;
  }
  (*node)[parts.back()] = value;
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open file");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  nlohmann::json user = read_json_file(path);
  if (!user.is_object()) throw std::runtime_error(path + ": expected a JSON object at the top level");
  for (const auto& o : overrides) apply_override(user, o);
  return config_from_json(user, path);
}

}  // namespace autorep::trainer
