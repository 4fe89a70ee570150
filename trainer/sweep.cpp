#include "trainer/sweep.h"

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

#include "trainer/checkpoint.h"
#include "trainer/distributed.h"
#include "trainer/train.h"

namespace autorep::trainer {

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kReductionMethods = {"autorep", "snl", "uniform", "random"};

[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& what) {
  throw std::runtime_error(source + ": " + key + ": " + what);
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// Fails on the first key of `obj` that is not in `valid` (keys starting with `_` are comments),
// naming it as <prefix><key> and listing the valid keys after `label` ("valid keys here" ...).
void check_keys(const nlohmann::json& obj, const std::vector<std::string>& valid, const std::string& source,
                const std::string& prefix, const std::string& label) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& k = it.key();
    if (!k.empty() && k[0] == '_') continue;
    if (std::find(valid.begin(), valid.end(), k) == valid.end())
      fail(source, prefix + k, "unknown key (" + label + ": " + join(valid) + ")");
  }
}

std::string keys_of(const nlohmann::json& obj) {
  std::vector<std::string> k;
  for (auto it = obj.begin(); it != obj.end(); ++it) k.push_back(it.key());
  return join(k);
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream ss(path);
  std::string part;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  return parts;
}

// A `set` key must name a key of the run config (config_defaults()), so a typo fails before
// any training instead of after the first run.
void check_config_key(const std::string& label, const std::string& path) {
  const nlohmann::json defaults = config_defaults();
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

void apply_sets(nlohmann::json& user, const nlohmann::json& set) {
  for (auto it = set.begin(); it != set.end(); ++it) set_path(user, it.key(), it.value());
}

void apply_cli_overrides(nlohmann::json& user, const std::vector<std::string>& overrides, const std::string& flag) {
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) throw std::runtime_error(flag + " " + o + ": expected key.path=value");
    check_config_key(flag + " " + o, o.substr(0, eq));
    apply_override(user, o);
  }
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

std::string budget_text(const nlohmann::json& b) { return b.is_string() ? b.get<std::string>() : b.dump(); }

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

std::string commas(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > (v < 0 ? 1 : 0); i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string error_text(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// First difference between a run folder's config.json and the config the sweep would run now,
// compared as comparable_config() does (run-only keys and settings the method never reads do
// not count), also ignoring where the teacher lives (the sweep folder may have moved). "" when
// they agree.
std::string config_difference(const fs::path& run_dir, const Config& config) {
  const fs::path saved_path = run_dir / "config.json";
  if (!fs::exists(saved_path)) return "";
  nlohmann::json saved = comparable_config(read_json_file(saved_path.string()), saved_path.string());
  nlohmann::json now = comparable_config(to_json(config));
  for (auto* j : {&saved, &now})
    if (j->contains("search")) (*j)["search"].erase("teacher");
  if (saved == now) return "";
  const auto diff = nlohmann::json::diff(saved, now);
  return diff.empty() ? std::string("?") : diff.at(0).value("path", std::string("?"));
}

struct PlannedRun {
  int64_t index = 0;
  std::string method;
  nlohmann::json budget;
  std::string name;
  fs::path dir;
  Config config;
};

class Console {
 public:
  explicit Console(bool quiet) : quiet_(quiet) {}
  void line(const std::string& s) const {
    if (!quiet_) std::cout << "sweep: " << s << std::endl;
  }
  void warn(const std::string& s) const {
    if (!quiet_) std::cerr << "sweep: warning: " << s << std::endl;
  }

 private:
  bool quiet_;
};

// The state of a run folder, as a table row.
SweepRow inspect_run(const PlannedRun& p, const fs::path& out) {
  SweepRow row;
  row.index = p.index;
  row.method = p.method;
  row.budget = budget_text(p.budget);
  row.name = p.name;
  row.run_dir = p.name;
  const fs::path result_path = p.dir / "result.json";
  if (fs::exists(result_path)) {
    try {
      const nlohmann::json r = read_json_file(result_path.string());
      row.relu_count = r.value("relu_count", int64_t{-1});
      row.total_relus = r.value("total_relus", int64_t{-1});
      row.accuracy = r.value("accuracy", -1.0);
      row.seconds = r.value("seconds", -1.0);
      const std::string ex = r.value("export_path", std::string());
      if (!ex.empty()) row.export_path = (fs::path(p.name) / ex).string();
      const std::string diff = config_difference(p.dir, p.config);
      if (diff.empty()) {
        row.status = "ok";
      } else {
        row.status = "failed";
        row.error = (out / p.name).string() + " holds a finished run of another config (first difference at " + diff +
                    "); remove that folder to rerun it, or sweep into another --out";
      }
    } catch (const std::exception& e) {
      row.status = "failed";
      row.error = one_line(error_text(e));
    }
    return row;
  }
  if (fs::exists(p.dir / "error.txt")) {
    row.status = "failed";
    row.error = one_line(read_text(p.dir / "error.txt"));
  } else if (fs::exists(p.dir / "checkpoints" / "last.pt")) {
    row.status = "unfinished";
  } else {
    row.status = "pending";
  }
  return row;
}

SweepRow inspect_teacher(const fs::path& dir) {
  SweepRow row;
  row.method = "teacher";
  row.budget = "all";
  row.name = "teacher";
  row.run_dir = "teacher";
  const fs::path result_path = dir / "result.json";
  if (fs::exists(result_path)) {
    const nlohmann::json r = read_json_file(result_path.string());
    row.status = "ok";
    row.relu_count = r.value("relu_count", int64_t{-1});
    row.total_relus = r.value("total_relus", int64_t{-1});
    row.accuracy = r.value("accuracy", -1.0);
    row.seconds = r.value("seconds", -1.0);
    row.export_path = r.value("checkpoint", std::string());
    if (!row.export_path.empty()) row.export_path = (fs::path("teacher") / row.export_path).string();
  } else if (fs::exists(dir / "checkpoints" / "last.pt")) {
    row.status = "unfinished";
  } else {
    row.status = "pending";
  }
  return row;
}

bool teacher_finished(const fs::path& dir) {
  return fs::exists(dir / "result.json") && fs::exists(dir / "checkpoints" / "best.pt");
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string gp_string(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("''") : std::string(1, c);
  return q + "'";
}

// Writes sweep-plot.dat (one block per method, points sorted by ReLU count) and sweep-plot.gp
// next to sweep.csv, and runs gnuplot on them when it is installed.
void write_plot(const fs::path& out, const std::vector<SweepRow>& rows, const std::string& title,
                const Console& console, SweepResult& result) {
  std::vector<std::string> methods;
  std::map<std::string, std::vector<const SweepRow*>> points;
  const SweepRow* teacher = nullptr;
  for (const auto& r : rows) {
    // A log axis has no place for 0 ReLUs; such runs stay in the table only.
    if (r.status != "ok" || r.relu_count <= 0 || r.accuracy < 0) continue;
    if (r.method == "teacher") {
      teacher = &r;
      continue;
    }
    if (!points.count(r.method)) methods.push_back(r.method);
    points[r.method].push_back(&r);
  }
  if (methods.empty()) {
    console.line("no finished runs with ReLUs yet: no Pareto plot");
    return;
  }
  std::ostringstream dat;
  dat << "# Pareto data of the sweep in this folder (drawn by sweep-plot.gp)\n"
         "# one block per method; columns: relu_count accuracy_percent budget\n";
  std::vector<std::string> plots;
  int block = 0;
  for (const auto& m : methods) {
    auto& v = points[m];
    std::stable_sort(v.begin(), v.end(),
                     [](const SweepRow* a, const SweepRow* b) { return a->relu_count < b->relu_count; });
    dat << "# " << m << "\n";
    for (const auto* r : v) dat << r->relu_count << " " << fixed(100.0 * r->accuracy, 4) << " " << r->budget << "\n";
    dat << "\n\n";
    plots.push_back("'sweep-plot.dat' index " + std::to_string(block++) +
                    " using 1:2 with linespoints linewidth 2 pointtype 7 title " + gp_string(m));
  }
  if (teacher != nullptr) {
    dat << "# teacher (all ReLUs)\n"
        << teacher->relu_count << " " << fixed(100.0 * teacher->accuracy, 4) << " all\n\n\n";
    plots.push_back("'sweep-plot.dat' index " + std::to_string(block++) +
                    " using 1:2 with points pointtype 5 pointsize 1.5 linecolor rgb 'black' title 'teacher (all ReLUs)'");
  }
  std::string plot_cmd = "plot ";
  for (size_t i = 0; i < plots.size(); ++i) plot_cmd += (i ? ", \\\n     " : "") + plots[i];

  std::ostringstream gp;
  gp << "# Pareto plot of this sweep: test accuracy against ReLUs kept per sample, log x axis.\n"
        "# Written by `autorep sweep`; redraw with: cd <this folder> && gnuplot sweep-plot.gp\n"
        "set title " << gp_string(title) << " noenhanced\n"
        "set logscale x 10\n"
        "set xlabel 'ReLUs kept per sample (log scale)'\n"
        "set ylabel 'test accuracy (%)'\n"
        "set grid xtics mxtics ytics\n"
        "set key bottom right noenhanced\n"
        "set format x '%.0s%c'\n"
        "set offsets graph 0.05, graph 0.05, graph 0.05, graph 0.05\n"
        "set terminal png size 960,640\n"
        "set output 'pareto.png'\n"
     << plot_cmd << "\n"
     << "set terminal svg size 960,640 dynamic\n"
        "set output 'pareto.svg'\n"
        "replot\n"
        "set output\n";
  write_file_atomic((out / "sweep-plot.dat").string(), dat.str());
  write_file_atomic((out / "sweep-plot.gp").string(), gp.str());

  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    console.warn("gnuplot is not installed: no Pareto plot (install the Debian package gnuplot-nox, then run "
                 "`gnuplot sweep-plot.gp` in " + out.string() + "); sweep.csv is written");
    return;
  }
  const std::string cmd = "cd " + shell_quote(out.string()) + " && gnuplot sweep-plot.gp > sweep-plot.log 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    console.warn("gnuplot failed on " + (out / "sweep-plot.gp").string() + " (see " +
                 (out / "sweep-plot.log").string() + ")");
    return;
  }
  result.png_path = (out / "pareto.png").string();
  result.svg_path = (out / "pareto.svg").string();
}

}  // namespace

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
    if (b.is_number_integer() && b.get<int64_t>() < 0) fail(source, key, "must not be negative, got " + b.dump());
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
      if (std::find(kReductionMethods.begin(), kReductionMethods.end(), name) == kReductionMethods.end())
        fail(source, key, "expected one of " + join(kReductionMethods) + ", got \"" + name + "\"");
      if (std::find(s.methods.begin(), s.methods.end(), name) != s.methods.end())
        fail(source, key, "duplicate method \"" + name + "\"");
      s.methods.push_back(name);
      s.method_sets.push_back(std::move(method_set));
    }
  } else {
    const std::string base_method = s.base.value("method", std::string("baseline"));
    if (std::find(kReductionMethods.begin(), kReductionMethods.end(), base_method) == kReductionMethods.end())
      fail(source, "methods",
           "missing, and the base config's method is \"" + base_method +
               "\", not a reduction method; give \"methods\": [" + join(kReductionMethods) + "] or some of them");
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

std::string sweep_csv(const std::vector<SweepRow>& rows) {
  std::ostringstream s;
  s << "method,budget,relu_count,accuracy,seconds,run_dir,export_path,status,error\n";
  for (const auto& r : rows) {
    s << csv_field(r.method) << "," << csv_field(r.budget) << ","
      << (r.relu_count >= 0 ? std::to_string(r.relu_count) : std::string()) << ","
      << (r.accuracy >= 0 ? fixed(r.accuracy, 6) : std::string()) << ","
      << (r.seconds >= 0 ? fixed(r.seconds, 1) : std::string()) << "," << csv_field(r.run_dir) << ","
      << csv_field(r.export_path) << "," << r.status << "," << csv_field(r.error) << "\n";
  }
  return s.str();
}

SweepResult run_sweep(const SweepConfig& sweep, const SweepOptions& options) {
  if (options.shards < 1 || options.shard < 1 || options.shard > options.shards)
    throw std::runtime_error("--shard " + std::to_string(options.shard) + "/" + std::to_string(options.shards) +
                             ": expected K/N with 1 <= K <= N");
  const Console console(options.quiet);
  fs::path out = options.out_dir;
  if (out.empty()) out = sweep.out.empty() ? fs::path("runs") / ("sweep-" + fs::path(sweep.source).stem().string())
                                           : fs::path(sweep.out);
  SweepResult result;
  result.out_dir = out.string();

  auto runtime_settings = [&](nlohmann::json& user) {
    if (!options.device.empty()) user["train"]["device"] = options.device;
    if (options.threads >= 0) user["train"]["threads"] = options.threads;
  };

  // The shared teacher, when the sweep trains it.
  const fs::path teacher_dir = out / "teacher";
  const bool own_teacher = !sweep.teacher_base.is_null();
  Config teacher_config;
  std::string teacher_path = sweep.teacher_checkpoint;
  if (own_teacher) {
    nlohmann::json user = sweep.teacher_base;
    apply_sets(user, sweep.teacher_set);
    apply_cli_overrides(user, options.teacher_overrides, "--teacher-set");
    runtime_settings(user);
    teacher_config = config_from_json(user, sweep.teacher_source);
    if (teacher_config.method != "baseline")
      fail(sweep.source, "teacher.config",
           "the teacher must be a baseline (all-ReLU) run, but " + sweep.teacher_source + " has method \"" +
               teacher_config.method + "\"");
    teacher_path = fs::absolute(teacher_dir / "checkpoints" / "best.pt").lexically_normal().string();
  }

  // Every run's config is built and checked before anything trains, so a mistake in the sweep
  // fails now and names its key rather than after hours of runs.
  std::vector<PlannedRun> plan;
  for (size_t m = 0; m < sweep.methods.size(); ++m) {
    const std::string& method = sweep.methods[m];
    for (size_t b = 0; b < sweep.budgets.size(); ++b) {
      const nlohmann::json& budget = sweep.budgets[b];
      PlannedRun p;
      p.index = static_cast<int64_t>(plan.size());
      p.method = method;
      p.budget = budget;
      p.name = sweep_run_name(method, budget);
      p.dir = out / p.name;
      nlohmann::json user = sweep.base;
      apply_sets(user, sweep.set);
      if (m < sweep.method_sets.size()) apply_sets(user, sweep.method_sets[m]);
      if (b < sweep.budget_sets.size()) apply_sets(user, sweep.budget_sets[b]);
      if (const auto r = sweep.run_sets.find(p.name); r != sweep.run_sets.end()) apply_sets(user, r->second);
      apply_cli_overrides(user, options.overrides, "--set");
      user["method"] = method;
      user["search"]["budget"] = budget;
      if (!teacher_path.empty()) user["search"]["teacher"] = teacher_path;
      runtime_settings(user);
      p.config = config_from_json(user, sweep.source + " (run " + p.name + ", base " + sweep.base_source + ")");
      plan.push_back(std::move(p));
    }
  }
  for (const auto& name : options.only) {
    if (std::none_of(plan.begin(), plan.end(), [&](const PlannedRun& p) { return p.name == name; })) {
      std::vector<std::string> names;
      for (const auto& p : plan) names.push_back(p.name);
      throw std::runtime_error("--only " + name + ": no such run in " + sweep.source + " (its runs: " + join(names) + ")");
    }
  }
  const bool selected_runs = options.shards > 1 || !options.only.empty();
  result.planned = static_cast<int64_t>(plan.size());
  const int64_t total = result.planned;
  auto tag = [&](const PlannedRun& p) {
    return "[" + std::to_string(p.index + 1) + "/" + std::to_string(total) + "] " + p.method + " " +
           budget_text(p.budget);
  };

  auto write_table = [&] {
    std::vector<SweepRow> rows;
    if (own_teacher) rows.push_back(inspect_teacher(teacher_dir));
    for (const auto& p : plan) {
      SweepRow r = inspect_run(p, out);
      if (r.status == "pending" && !fs::exists(p.dir)) continue;  // not started by anyone yet
      rows.push_back(std::move(r));
    }
    result.rows = std::move(rows);
    if (!dist::is_primary()) return;  // in a multi-process sweep rank 0 keeps the table
    fs::create_directories(out);
    write_file_atomic((out / "sweep.csv").string(), sweep_csv(result.rows));
    std::string errors;
    for (const auto& r : result.rows)
      if (r.status == "failed") errors += r.name + ": " + r.error + "\n";
    const fs::path errors_path = out / "sweep-errors.txt";
    if (!errors.empty()) write_file_atomic(errors_path.string(), errors);
    else if (fs::exists(errors_path)) fs::remove(errors_path);
  };
  result.csv_path = (out / "sweep.csv").string();

  if (options.collect) {
    write_table();
    if (options.plot && dist::is_primary())
      write_plot(out, result.rows, fs::path(sweep.source).stem().string(), console, result);
    return result;
  }

  if (dist::is_primary()) fs::create_directories(out);
  dist::barrier();
  if (own_teacher) {
    const std::string diff = config_difference(teacher_dir, teacher_config);
    if (!diff.empty())
      throw std::runtime_error(teacher_dir.string() + " holds a teacher of another config (first difference at " +
                               diff + "); remove it to retrain, or sweep into another --out");
    if (teacher_finished(teacher_dir)) {
      const SweepRow t = inspect_teacher(teacher_dir);
      console.line("teacher " + teacher_dir.string() + ": finished (accuracy " + fixed(100.0 * t.accuracy, 2) +
                   "%), skipped");
    } else {
      if (selected_runs && !options.teacher_only)
        throw std::runtime_error("the shared teacher in " + teacher_dir.string() +
                                 " is not trained yet; train it once with `autorep sweep --config " + sweep.source +
                                 " --teacher-only` (same --out) before starting shards or --only runs");
      const bool resume = fs::exists(teacher_dir / "checkpoints" / "last.pt");
      if (!resume && fs::exists(teacher_dir) && dist::is_primary()) fs::remove_all(teacher_dir);
      dist::barrier();
      console.line(std::string(resume ? "resuming" : "training") + " the shared teacher in " + teacher_dir.string());
      RunOptions ro;
      ro.out_dir = teacher_dir.string();
      ro.resume = resume;
      ro.quiet = options.quiet || options.quiet_runs;
      RunResult r;
      try {
        r = run_training(teacher_config, ro);
      } catch (const std::exception& e) {
        throw std::runtime_error("teacher (" + teacher_dir.string() + "): " + error_text(e));
      }
      if (!fs::exists(teacher_dir / "checkpoints" / "best.pt"))
        throw std::runtime_error("teacher (" + teacher_dir.string() + "): no checkpoints/best.pt after training");
      write_run_result(teacher_config, r);
      result.teacher_trained = true;
      console.line("teacher done: accuracy " + fixed(100.0 * r.best_accuracy, 2) + "%, " + fixed(r.seconds, 0) + " s");
    }
  } else if (!teacher_path.empty() && !fs::exists(teacher_path)) {
    fail(sweep.source, "teacher", teacher_path + ": no such checkpoint (give a baseline run's checkpoints/best.pt)");
  }
  if (options.teacher_only) {
    write_table();
    return result;
  }

  write_table();
  for (const auto& p : plan) {
    const bool chosen = options.only.empty() ||
                        std::find(options.only.begin(), options.only.end(), p.name) != options.only.end();
    if (p.index % options.shards != options.shard - 1 || !chosen) {
      ++result.other_shards;
      continue;
    }
    dist::barrier();  // every process sees the run folders as rank 0 left them
    const SweepRow before = inspect_run(p, out);
    if (before.status == "ok") {
      ++result.skipped;
      console.line(tag(p) + ": finished before (accuracy " + fixed(100.0 * before.accuracy, 2) + "%, ReLUs " +
                   commas(before.relu_count) + "), skipped");
      continue;
    }
    if (before.status == "failed" && fs::exists(p.dir / "result.json")) {  // a finished run of another config
      ++result.failed;
      console.line(tag(p) + ": FAILED: " + before.error);
      continue;
    }
    const bool resume = fs::exists(p.dir / "checkpoints" / "last.pt");
    try {
      // Without a checkpoint there is nothing to keep: a half-written first epoch would only
      // leave stale lines in metrics.jsonl.
      if (dist::is_primary()) {
        if (!resume && fs::exists(p.dir)) fs::remove_all(p.dir);
        fs::remove(p.dir / "error.txt");
      }
      dist::barrier();
      console.line(tag(p) + ": " + (resume ? "resuming " : "start ") + p.dir.string());
      RunOptions ro;
      ro.out_dir = p.dir.string();
      ro.resume = resume;
      ro.quiet = options.quiet || options.quiet_runs;
      const RunResult r = run_training(p.config, ro);
      if (!r.completed) throw std::runtime_error("the run stopped before its last epoch");
      const nlohmann::json rj = write_run_result(p.config, r);
      const double accuracy = rj.at("accuracy").get<double>();
      const int64_t relus = rj.at("relu_count").get<int64_t>();
      ++result.trained;
      console.line(tag(p) + ": done, accuracy " + fixed(100.0 * accuracy, 2) + "%, ReLUs " + commas(relus) + " of " +
                   commas(r.total_relus) + ", " + fixed(r.seconds, 0) + " s");
    } catch (const std::exception& e) {
      const std::string msg = one_line(error_text(e));
      ++result.failed;
      try {
        if (dist::is_primary()) {
          fs::create_directories(p.dir);
          write_file_atomic((p.dir / "error.txt").string(), msg + "\n");
        }
      } catch (const std::exception& e2) {
        console.warn("cannot record the failure in " + p.dir.string() + ": " + e2.what());
      }
      console.line(tag(p) + ": FAILED: " + msg);
    }
    write_table();
  }
  write_table();
  if (options.plot && dist::is_primary())
    write_plot(out, result.rows, fs::path(sweep.source).stem().string(), console, result);
  return result;
}

}  // namespace autorep::trainer
