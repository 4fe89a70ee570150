#include "trainer/engine/config.h"
#include "trainer/engine/loop.h"  // model_spec

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "layers/gate_options_json.h"
#include "layers/util/json_check.h"
#include "layers/util/text.h"
#include "trainer/models/registry.h"

namespace autorep::trainer::data {
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(DataOptions, name, path, batch_size, eval_batch_size,
                                                crop_padding, flip, image_size, limit_train, limit_test, val_split,
                                                split_seed, groups, class_fraction)
}  // namespace autorep::trainer::data

namespace autorep::trainer::engine {

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ModelOptions, name, stem_relu, width, stem_stride)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(OptimOptions, name, lr, momentum, nesterov, weight_decay,
                                                beta1, beta2, schedule, warmup_epochs, min_lr,
                                                grad_clip)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(KdConfig, temperature, weight, teacher_dtype)
}  // namespace autorep::trainer::engine
namespace autorep::search {
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(FairnessOptions, enabled, mu, tolerance, search)
}  // namespace autorep::search
namespace autorep::trainer::engine {
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TrainOptions, epochs, seed, label_smoothing, threads, device,
                                                checkpoint_interval_s, log_every, eval_every, skip_spikes,
                                                spike_rollbacks, channels_last)

namespace {

using util::json_fail;

const std::vector<std::string> kSearchKeys = {"budget",       "teacher",        "search_epochs", "aux_lr",
                                              "search_optim", "finetune_optim", "kd",        "fairness"};

}  // namespace

// The `search` section is flat in the file: the shared keys and every method's own keys.
void to_json(nlohmann::json& j, const SearchOptions& s) {
  j = s.method_keys.is_object() ? s.method_keys : nlohmann::json::object();
  j["budget"] = s.budget;
  j["teacher"] = s.teacher;
  j["search_epochs"] = s.search_epochs;
  j["aux_lr"] = s.aux_lr;
  j["search_optim"] = s.search_optim;
  j["finetune_optim"] = s.finetune_optim;
  j["kd"] = s.kd;
  j["fairness"] = s.fairness;
}

void from_json(const nlohmann::json& j, SearchOptions& s) {
  const SearchOptions d;
  s.budget = j.value("budget", nlohmann::json(d.budget)).get<search::Budget>();
  s.teacher = j.value("teacher", d.teacher);
  s.search_epochs = j.value("search_epochs", d.search_epochs);
  s.aux_lr = j.value("aux_lr", d.aux_lr);
  s.search_optim = j.value("search_optim", d.search_optim);
  s.finetune_optim = j.value("finetune_optim", d.finetune_optim);
  s.kd = j.value("kd", d.kd);
  s.fairness = j.value("fairness", d.fairness);
  s.method_keys = nlohmann::json::object();
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(kSearchKeys.begin(), kSearchKeys.end(), it.key()) == kSearchKeys.end())
      s.method_keys[it.key()] = it.value();
}

void to_json(nlohmann::json& j, const Config& c) {
  j = {{"method", c.method}, {"data", c.data},     {"model", c.model}, {"gate", c.gate},
       {"search", c.search}, {"optim", c.optim}, {"train", c.train}};
}

void from_json(const nlohmann::json& j, Config& c) {
  const Config d;
  c.method = j.value("method", d.method);
  c.data = j.value("data", d.data);
  c.model = j.value("model", d.model);
  c.gate = d.gate;
  if (j.contains("gate")) layers::from_json(j.at("gate"), c.gate);
  c.search = j.value("search", d.search);
  c.optim = j.value("optim", d.optim);
  c.train = j.value("train", d.train);
}

std::vector<std::string> ConfigSchema::method_names() const {
  std::vector<std::string> names;
  for (const auto& m : methods) names.push_back(m.name);
  return names;
}

const MethodSchema* ConfigSchema::find(const std::string& name) const {
  for (const auto& m : methods)
    if (m.name == name) return &m;
  return nullptr;
}

namespace {

// data.groups ({"name": [class, ...]}) and data.class_fraction ({"class": fraction}): objects
// whose keys the user names. Classes may be names or label indices; indices become strings.
nlohmann::json free_form_map(const nlohmann::json& v, const std::string& path, const std::string& source) {
  if (!v.is_object()) json_fail(source, path, "expected an object, got " + v.dump());
  const bool groups = path == "data.groups";
  auto class_key = [&](const nlohmann::json& c, const std::string& at) -> std::string {
    if (c.is_string()) return c.get<std::string>();
    if (c.is_number_integer() || c.is_number_unsigned()) return std::to_string(c.get<int64_t>());
    json_fail(source, at, "expected a class name or label index, got " + c.dump());
  };
  nlohmann::json out = nlohmann::json::object();
  for (auto it = v.begin(); it != v.end(); ++it) {
    const std::string at = path + "." + it.key();
    if (groups) {
      if (!it.value().is_array()) json_fail(source, at, "expected a list of classes, got " + it.value().dump());
      nlohmann::json members = nlohmann::json::array();
      for (size_t i = 0; i < it.value().size(); ++i)
        members.push_back(class_key(it.value()[i], at + "[" + std::to_string(i) + "]"));
      out[it.key()] = members;
    } else {
      if (!it.value().is_number()) json_fail(source, at, "expected a fraction in (0, 1], got " + it.value().dump());
      const double f = it.value().get<double>();
      if (!(f > 0 && f <= 1)) json_fail(source, at, "expected a fraction in (0, 1], got " + it.value().dump());
      out[it.key()] = f;
    }
  }
  return out;
}

// Merges `user` into `base` (the defaults), refusing keys that base does not have and values whose
// type does not match the default's. Keys starting with '_' are comments and are ignored.
void merge_checked(nlohmann::json& base, const nlohmann::json& user, const std::string& path,
                   const std::string& source) {
  if (!user.is_object())
    json_fail(source, path.empty() ? "(top level)" : path, "expected an object, got " + user.dump());
  for (auto it = user.begin(); it != user.end(); ++it) {
    const std::string& key = it.key();
    if (util::is_comment_key(key)) continue;
    const std::string p = util::key_path(path, key);
    if (!base.contains(key))
      json_fail(source, p, "unknown key (valid keys" + (path.empty() ? std::string() : " in " + path) + ": " +
                               util::keys_of(base) + ")");
    nlohmann::json& b = base[key];
    const nlohmann::json& v = it.value();
    if (p == "search.budget") {
      if (!(v.is_number_integer() || v.is_number_unsigned() || v.is_string()))
        json_fail(source, p, "expected a ReLU count (integer) or a percentage string like \"3%\", got " + v.dump());
      b = v;
      continue;
    }
    if (p == "data.groups" || p == "data.class_fraction") {
      b = free_form_map(v, p, source);
      continue;
    }
    if (b.is_object()) {
      merge_checked(b, v, p, source);
      continue;
    }
    // A value of the default's type; a list's entries of the type of the default list's entries.
    auto same_type = [](const nlohmann::json& d, const nlohmann::json& x) {
      if (d.is_boolean()) return x.is_boolean();
      if (d.is_number_integer() || d.is_number_unsigned()) return x.is_number_integer() || x.is_number_unsigned();
      if (d.is_number()) return x.is_number();
      if (d.is_string()) return x.is_string();
      return false;
    };
    if (b.is_array()) {
      if (!v.is_array()) json_fail(source, p, "expected a list, got " + v.dump());
      for (size_t i = 0; i < v.size(); ++i)
        if (b.empty() ? !(v[i].is_string() || v[i].is_number() || v[i].is_boolean()) : !same_type(b[0], v[i]))
          json_fail(source, p + "[" + std::to_string(i) + "]",
                    "expected " + (b.empty() ? std::string("a number or string") : util::json_type_name(b[0])) +
                        ", got " + v[i].dump());
      b = v;
      continue;
    }
    if (!same_type(b, v)) json_fail(source, p, "expected " + util::json_type_name(b) + ", got " + v.dump());
    if ((b.is_number_unsigned()) && v.is_number_integer() && v.get<int64_t>() < 0)
      json_fail(source, p, "expected a non-negative integer, got " + v.dump());
    b = v;
  }
}

void check_positive(const std::string& source, const std::string& path, double v) {
  if (!(v > 0) || !std::isfinite(v)) json_fail(source, path, "expected a finite value > 0, got " + util::short_number(v));
}

void check_at_least(const std::string& source, const std::string& path, double v, double lo) {
  if (!(v >= lo) || !std::isfinite(v))
    json_fail(source, path, "expected a finite value >= " + util::short_number(lo) + ", got " + util::short_number(v));
}

// Every numeric key of the `gate` section: a zero scale or divisor would make every refit divide
// by zero and every polynomial NaN from the first step.
void check_gate(const std::string& source, const layers::GateOptions& g) {
  check_positive(source, "gate.scale1", g.scale1());
  check_positive(source, "gate.scale2", g.scale2());
  check_at_least(source, "gate.threshold", g.threshold(), 0);
  const auto& d = g.dapa();
  check_positive(source, "gate.dapa.var_floor", d.var_floor());
  check_positive(source, "gate.dapa.w0_div", d.w0_div());
  check_positive(source, "gate.dapa.w2_div", d.w2_div());
  check_at_least(source, "gate.dapa.sigma_scale", d.sigma_scale(), 1);
  check_at_least(source, "gate.dapa.range_bound", d.range_bound(), 0);
  check_at_least(source, "gate.dapa.refit_every", static_cast<double>(d.refit_every()), 1);
  check_at_least(source, "gate.dapa.refit_until", static_cast<double>(d.refit_until()), 0);
  check_at_least(source, "gate.dapa.calibration_batches", static_cast<double>(d.calibration_batches()), 0);
}

void check_optim(const std::string& source, const std::string& path, const OptimOptions& o) {
  util::check_one_of(source, path + ".name", o.name, {"sgd", "adam"});
  util::check_one_of(source, path + ".schedule", o.schedule, {"cosine", "constant"});
  check_positive(source, path + ".lr", o.lr);
  if (o.weight_decay < 0) json_fail(source, path + ".weight_decay", "must be >= 0");
  if (o.warmup_epochs < 0) json_fail(source, path + ".warmup_epochs", "must be >= 0");
  if (o.grad_clip < 0) json_fail(source, path + ".grad_clip", "must be >= 0 (0 turns clipping off)");
}

// Checks on the merged JSON that must come before it is read into typed values.
void validate_json(const nlohmann::json& merged, const std::string& source) {
  util::check_one_of(source, "gate.granularity", merged.at("gate").at("granularity").get<std::string>(),
                     layers::granularity_names());
  try {
    search::Budget::parse(merged.at("search").at("budget"));
  } catch (const std::exception& e) {
    throw std::runtime_error(source + ": " + e.what());
  }
}

void validate(const Config& c, const ConfigSchema& schema, const std::string& source) {
  util::check_one_of(source, "method", c.method, schema.method_names());
  util::check_one_of(source, "model.name", c.model.name, models::model_names());
  if (!(c.model.width > 0 && c.model.width <= 16)) json_fail(source, "model.width", "must be in (0, 16]");
  if (c.model.stem_stride < 1 || c.model.stem_stride > 8) json_fail(source, "model.stem_stride", "must be 1 to 8");
  if ((c.model.width != 1 || c.model.stem_stride != 1) && !models::model_reshapes(c.model.name))
    json_fail(source, c.model.width != 1 ? "model.width" : "model.stem_stride",
              "applies to resnet18, resnet20 and wrn-22-8 only (model.name is " + c.model.name + ")");
  util::check_one_of(source, "data.name", c.data.name, data::dataset_names());
  if (c.data.batch_size <= 0) json_fail(source, "data.batch_size", "must be positive");
  if (c.data.eval_batch_size <= 0) json_fail(source, "data.eval_batch_size", "must be positive");
  check_optim(source, "optim", c.optim);
  check_optim(source, "search.search_optim", c.search.search_optim);
  check_optim(source, "search.finetune_optim", c.search.finetune_optim);
  if (c.gate.degree() != 1 && c.gate.degree() != 2) json_fail(source, "gate.degree", "expected 1 or 2");
  util::check_one_of(source, "gate.dapa.sigma", c.gate.dapa().sigma(), {"std", "var"});
  check_gate(source, c.gate);
  util::check_one_of(source, "train.device", c.train.device, {"auto", "cpu", "cuda"});
  if (c.train.epochs <= 0) json_fail(source, "train.epochs", "must be positive");
  if (c.train.threads < 0) json_fail(source, "train.threads", "must be >= 0");
  if (c.train.label_smoothing < 0 || c.train.label_smoothing >= 1)
    json_fail(source, "train.label_smoothing", "must be in [0, 1)");
  check_at_least(source, "train.spike_rollbacks", static_cast<double>(c.train.spike_rollbacks), 0);
  if (c.train.skip_spikes != 0 && !(c.train.skip_spikes > 1))
    json_fail(source, "train.skip_spikes", "must be 0 (off) or a factor > 1");
  if (c.search.kd.temperature <= 0) json_fail(source, "search.kd.temperature", "must be positive");
  if (!(c.search.fairness.mu >= 0) || !std::isfinite(c.search.fairness.mu))
    json_fail(source, "search.fairness.mu", "expected a finite value >= 0, got " + util::short_number(c.search.fairness.mu));
  if (!(c.search.fairness.tolerance >= 0) || !std::isfinite(c.search.fairness.tolerance))
    json_fail(source, "search.fairness.tolerance",
              "expected a finite value >= 0, got " + util::short_number(c.search.fairness.tolerance));
  util::check_one_of(source, "search.kd.teacher_dtype", c.search.kd.teacher_dtype, {"float32", "bfloat16"});
  const MethodSchema* method = schema.find(c.method);
  auto reads = [&](const std::string& key) {
    return std::find(method->unused_keys.begin(), method->unused_keys.end(), key) == method->unused_keys.end();
  };
  const bool uses_search = reads("search") && reads("search.search_epochs");
  if (uses_search && c.search.search_epochs >= c.train.epochs)
    json_fail(source, "search.search_epochs",
              "must be below train.epochs (" + std::to_string(c.train.epochs) +
                  "): the epochs after the search finetune the projected masks, and best.pt is chosen among them");
  if (uses_search && c.search.search_epochs < 0) json_fail(source, "search.search_epochs", "must be >= 0");
  for (const auto& m : schema.methods)
    if (m.validate) m.validate(c, source);
}

// Removes a dotted key path from a JSON object (nothing when it is absent).
void erase_path(nlohmann::json& j, const std::string& path) {
  const auto dot = path.find('.');
  if (!j.is_object()) return;
  if (dot == std::string::npos) {
    j.erase(path);
    return;
  }
  const std::string head = path.substr(0, dot);
  if (j.contains(head)) erase_path(j[head], path.substr(dot + 1));
}

}  // namespace

nlohmann::json config_defaults(const ConfigSchema& schema) {
  nlohmann::json d = Config{};
  for (const auto& m : schema.methods)
    for (auto it = m.search_keys.begin(); it != m.search_keys.end(); ++it) d["search"][it.key()] = it.value();
  return d;
}

nlohmann::json to_json(const Config& config) { return config; }

Config config_from_json(const nlohmann::json& user, const ConfigSchema& schema, const std::string& source) {
  nlohmann::json merged = config_defaults(schema);
  merge_checked(merged, user, "", source);
  validate_json(merged, source);
  Config c = merged.get<Config>();
  validate(c, schema, source);
  return c;
}

nlohmann::json comparable_config(const nlohmann::json& config_json, const ConfigSchema& schema,
                                 const std::string& source) {
  nlohmann::json out = config_json;
  try {
    out = to_json(config_from_json(config_json, schema, source));
  } catch (const std::exception&) {
  }
  if (out.contains("train"))
    for (const char* k : {"threads", "device", "checkpoint_interval_s", "log_every", "channels_last"})
      out["train"].erase(k);
  if (const MethodSchema* m = schema.find(out.value("method", std::string("baseline"))))
    for (const auto& key : m->unused_keys) erase_path(out, key);
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

Config load_config(const std::string& path, const std::vector<std::string>& overrides, const ConfigSchema& schema) {
  nlohmann::json user = read_json_file(path);
  if (!user.is_object()) throw std::runtime_error(path + ": expected a JSON object at the top level");
  for (const auto& o : overrides) apply_override(user, o);
  return config_from_json(user, schema, path);
}

models::ModelSpec model_spec(const Config& config, const std::vector<int64_t>& input_shape, int64_t classes) {
  models::ModelSpec spec;
  spec.name = config.model.name;
  spec.input_shape = input_shape;
  spec.classes = classes;
  spec.stem_relu = config.model.stem_relu;
  spec.width = config.model.width;
  spec.stem_stride = config.model.stem_stride;
  return spec;
}

}  // namespace autorep::trainer::engine
