#include "trainer/app/sweep.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "layers/util/atomic_file.h"
#include "layers/util/json_check.h"
#include "layers/util/text.h"
#include "search/budget.h"
#include "trainer/app/run.h"
#include "trainer/app/sweep_detail.h"
#include "trainer/engine/distributed.h"
#include "trainer/methods/registry.h"
#include "trainer/methods/run_config.h"

#include "trainer/app/common.h"

namespace autorep::trainer::app {

namespace fs = std::filesystem;
using namespace sweep_detail;

namespace sweep_detail {

void fail(const std::string& source, const std::string& key, const std::string& what) { util::json_fail(source, key, what); }

std::string budget_text(const nlohmann::json& b) { return b.is_string() ? b.get<std::string>() : b.dump(); }

}  // namespace sweep_detail

namespace {

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream ss(path);
  std::string part;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  return parts;
}

// A `set` key must name a key of the run config (methods::config_defaults()), so a typo fails before
// any training instead of after the first run.
void check_config_key(const std::string& label, const std::string& path) {
  const nlohmann::json defaults = methods::config_defaults();
  const nlohmann::json* node = &defaults;
  std::string prefix;
  const auto parts = split_path(path);
  if (parts.empty()) fail(label, "\"" + path + "\"", "empty key");
  for (const auto& part : parts) {
    if (!node->is_object() || !node->contains(part))
      fail(label, path,
           "unknown key" + (node->is_object() ? " (valid keys" + (prefix.empty() ? std::string() : " in " + prefix) +
                                                     ": " + keys_of(*node) + ")"
                                              : " (" + prefix + " is not a section)"));
    node = &(*node)[part];
    prefix += (prefix.empty() ? "" : ".") + part;
  }
}

void set_path(nlohmann::json& user, const std::string& path, const nlohmann::json& value) {
  const auto parts = split_path(path);
  nlohmann::json* node = &user;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    nlohmann::json& next = (*node)[parts[i]];
    if (next.is_null()) next = nlohmann::json::object();
    node = &next;
  }
  nlohmann::json& leaf = (*node)[parts.back()];
  if (value.is_object() && leaf.is_object()) leaf.merge_patch(value);
  else leaf = value;
}



nlohmann::json parse_set(const nlohmann::json& v, const std::string& source, const std::string& key) {
  if (!v.is_object()) fail(source, key, "expected an object of \"section.key\": value, got " + v.dump());
  nlohmann::json out = nlohmann::json::object();
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.key().empty() && it.key()[0] == '_') continue;
    check_config_key(source + ": " + key, it.key());
    out[it.key()] = it.value();
  }
  return out;
}

// A `budgets` / `methods` entry: a plain value, or {"<field>": value, "set": {...}} whose `set`
// applies to that entry's runs only. Returns the value; `entry_set` gets the parsed `set` (an
// empty object when none) and `key` the path of the value, for messages.
const nlohmann::json& entry_value(const nlohmann::json& entry, const std::string& field, const std::string& what,
                                  const std::string& source, std::string& key, nlohmann::json& entry_set) {
  entry_set = nlohmann::json::object();
  if (!entry.is_object()) return entry;
  check_keys(entry, {field, "set"}, source, key + ".", "valid keys here");
  if (!entry.contains(field)) fail(source, key + "." + field, "missing: give " + what);
  if (entry.contains("set")) entry_set = parse_set(entry["set"], source, key + ".set");
  key += "." + field;
  return entry[field];
}

fs::path resolve(const std::string& dir, const std::string& path) {
  fs::path p(path);
  if (p.is_relative() && !dir.empty()) p = fs::path(dir) / p;
  return p.lexically_normal();
}

nlohmann::json read_object_file(const fs::path& path) {
  nlohmann::json j = read_json_file(path.string());
  if (!j.is_object()) throw std::runtime_error(path.string() + ": expected a JSON object at the top level");
  return j;
}


}  // namespace

namespace sweep_detail {

void apply_sets(nlohmann::json& user, const nlohmann::json& set) {
  for (auto it = set.begin(); it != set.end(); ++it) set_path(user, it.key(), it.value());
}

void apply_cli_overrides(nlohmann::json& user, const std::vector<std::string>& overrides, const std::string& flag) {
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) throw std::runtime_error(flag + " " + o + ": expected key.path=value");
    check_config_key(flag + " " + o, o.substr(0, eq));
    engine::apply_override(user, o);
  }
}

}  // namespace sweep_detail

std::string sweep_run_name(const std::string& method, const nlohmann::json& budget) {
  std::string b;
  for (char c : budget_text(budget)) {
    if (c == '%') b += "pct";
    else if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') b += c;
    else b += '_';
  }
  return method + "-" + b;
}

void parse_shard(const std::string& text, int64_t* shard, int64_t* shards) {
  const auto bad = [&] {
    return std::runtime_error("--shard " + text + ": expected K/N with 1 <= K <= N, such as 2/4");
  };
  const auto slash = text.find('/');
  if (slash == std::string::npos) throw bad();
  try {
    size_t u1 = 0, u2 = 0;
    const std::string a = text.substr(0, slash), b = text.substr(slash + 1);
    *shard = std::stoll(a, &u1);
    *shards = std::stoll(b, &u2);
    if (u1 != a.size() || u2 != b.size()) throw bad();
  } catch (const std::invalid_argument&) {
    throw bad();
  } catch (const std::out_of_range&) {
    throw bad();
  }
  if (*shards < 1 || *shard < 1 || *shard > *shards) throw bad();
}

SweepConfig sweep_config_from_json(const nlohmann::json& j, const std::string& source, const std::string& dir) {
  const std::vector<std::string> reductions = methods::reduction_method_names();
  if (!j.is_object()) throw std::runtime_error(source + ": expected a JSON object at the top level");
  const std::vector<std::string> valid = {"base", "base_config", "budgets", "methods", "set", "runs", "teacher", "out"};
  check_keys(j, valid, source, "", "valid keys");
  SweepConfig s;
  s.source = source;

  if (j.contains("base") == j.contains("base_config"))
    fail(source, "base",
         j.contains("base") ? "give either \"base\" or \"base_config\", not both"
                            : "missing: give \"base\": \"run-config.json\" or an inline \"base_config\": {...}");
  if (j.contains("base")) {
    if (!j["base"].is_string()) fail(source, "base", "expected a file name, got " + j["base"].dump());
    const fs::path p = resolve(dir, j["base"].get<std::string>());
    s.base = read_object_file(p);
    s.base_source = p.string();
  } else {
    if (!j["base_config"].is_object())
      fail(source, "base_config", "expected a run config object, got " + j["base_config"].dump());
    s.base = j["base_config"];
    s.base_source = source + ": base_config";
  }

  if (!j.contains("budgets")) fail(source, "budgets", "missing: give a list such as [\"1%\", \"3%\", 4328]");
  const auto& budgets = j["budgets"];
  if (!budgets.is_array() || budgets.empty())
    fail(source, "budgets", "expected a non-empty list of ReLU counts or percentages, got " + budgets.dump());
  std::set<std::string> names;
  for (size_t i = 0; i < budgets.size(); ++i) {
    std::string key = "budgets[" + std::to_string(i) + "]";
    nlohmann::json budget_set;
    const auto& b = entry_value(budgets[i], "budget", "the ReLU count or percentage", source, key, budget_set);
    if (!(b.is_number_integer() || b.is_number_unsigned() || b.is_string()))
      fail(source, key,
           "expected a ReLU count (integer), a percentage string like \"3%\" or {\"budget\": ..., \"set\": {...}}, got " +
               b.dump());
    // Typed once here, so "3 %" or "150%" fails before any teacher trains.
    try {
      search::Budget::parse(b, key);
    } catch (const std::exception& e) {
      throw std::runtime_error(source + ": " + e.what());
    }
    if (!names.insert(sweep_run_name("", b)).second)
      fail(source, key, "duplicate budget " + b.dump() + " (its run folder name is taken)");
    s.budgets.push_back(b);
    s.budget_sets.push_back(std::move(budget_set));
  }

  if (j.contains("methods")) {
    const auto& m = j["methods"];
    if (!m.is_array() || m.empty()) fail(source, "methods", "expected a non-empty list of method names, got " + m.dump());
    for (size_t i = 0; i < m.size(); ++i) {
      std::string key = "methods[" + std::to_string(i) + "]";
      nlohmann::json method_set;
      const auto& entry = entry_value(m[i], "method", "the method name", source, key, method_set);
      if (!entry.is_string())
        fail(source, key, "expected a method name or {\"method\": ..., \"set\": {...}}, got " + entry.dump());
      const std::string name = entry;
      if (std::find(reductions.begin(), reductions.end(), name) == reductions.end())
        fail(source, key, "expected one of " + join(reductions) + ", got \"" + name + "\"");
      if (std::find(s.methods.begin(), s.methods.end(), name) != s.methods.end())
        fail(source, key, "duplicate method \"" + name + "\"");
      s.methods.push_back(name);
      s.method_sets.push_back(std::move(method_set));
    }
  } else {
    const std::string base_method = s.base.value("method", std::string("baseline"));
    if (std::find(reductions.begin(), reductions.end(), base_method) == reductions.end())
      fail(source, "methods",
           "missing, and the base config's method is \"" + base_method +
               "\", not a reduction method; give \"methods\": [" + join(reductions) + "] or some of them");
    s.methods.push_back(base_method);
  }

  if (j.contains("set")) s.set = parse_set(j["set"], source, "set");

  if (j.contains("runs")) {
    const auto& r = j["runs"];
    if (!r.is_object())
      fail(source, "runs", "expected {\"<method>-<budget>\": {\"set\": {...}}, ...}, got " + r.dump());
    std::vector<std::string> planned;
    for (const auto& m : s.methods)
      for (const auto& b : s.budgets) planned.push_back(sweep_run_name(m, b));
    for (auto it = r.begin(); it != r.end(); ++it) {
      const std::string key = "runs." + it.key();
      if (std::find(planned.begin(), planned.end(), it.key()) == planned.end())
        fail(source, key, "not a run of this sweep (its runs: " + join(planned) + ")");
      if (!it.value().is_object()) fail(source, key, "expected {\"set\": {...}}, got " + it.value().dump());
      check_keys(it.value(), {"set"}, source, key + ".", "valid keys here");
      if (!it.value().contains("set")) fail(source, key + ".set", "missing");
      s.run_sets[it.key()] = parse_set(it.value()["set"], source, key + ".set");
    }
  }

  if (j.contains("teacher")) {
    const auto& t = j["teacher"];
    if (t.is_string()) {
      s.teacher_checkpoint = fs::absolute(resolve(dir, t.get<std::string>())).lexically_normal().string();
    } else if (t.is_object()) {
      check_keys(t, {"config", "set"}, source, "teacher.", "valid keys in teacher");
      if (!t.contains("config"))
        fail(source, "teacher.config", "missing: give the baseline config the sweep trains its teacher with");
      const auto& c = t["config"];
      if (c.is_string()) {
        const fs::path p = resolve(dir, c.get<std::string>());
        s.teacher_base = read_object_file(p);
        s.teacher_source = p.string();
      } else if (c.is_object()) {
        s.teacher_base = c;
        s.teacher_source = source + ": teacher.config";
      } else {
        fail(source, "teacher.config", "expected a config file name or an inline config object, got " + c.dump());
      }
      if (t.contains("set")) s.teacher_set = parse_set(t["set"], source, "teacher.set");
    } else {
      fail(source, "teacher",
           "expected a baseline checkpoint path or {\"config\": \"baseline-config.json\"}, got " + t.dump());
    }
  }

  if (j.contains("out")) {
    if (!j["out"].is_string()) fail(source, "out", "expected a folder name, got " + j["out"].dump());
    s.out = j["out"];
  }
  return s;
}

SweepConfig load_sweep_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  const std::string dir = fs::path(path).parent_path().string();
  return sweep_config_from_json(j, path, dir);
}

}  // namespace autorep::trainer::app
