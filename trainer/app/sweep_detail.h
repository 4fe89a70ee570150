#pragma once
// What the files of the sweep (sweep_config.cpp, sweep_table.cpp, sweep_runner.cpp) share.

#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "trainer/app/sweep.h"

namespace autorep::trainer::app {
namespace sweep_detail {

namespace fs = std::filesystem;

/// Throws "<source>: <key>: <what>".
[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& what);
/// Applies a parsed `set` ({"a.b": value}) to a user config JSON.
void apply_sets(nlohmann::json& user, const nlohmann::json& set);
/// Applies `--set` / `--teacher-set` overrides, each key checked against the config's keys.
void apply_cli_overrides(nlohmann::json& user, const std::vector<std::string>& overrides, const std::string& flag);
/// "3%", "4328".
std::string budget_text(const nlohmann::json& b);
/// The message of an exception (LibTorch's without its backtrace).
std::string error_text(const std::exception& e);
/// `s` with line breaks turned into spaces and trailing spaces dropped.
std::string one_line(std::string s);
/// First difference between a run folder's config.json and the config the sweep would run now
/// ("" when they agree).
std::string config_difference(const fs::path& run_dir, const engine::Config& config);

struct PlannedRun {
  int64_t index = 0;
  std::string method;
  nlohmann::json budget;
  std::string name;
  fs::path dir;
  engine::Config config;
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

/// The state of a run folder, as a table row.
SweepRow inspect_run(const PlannedRun& p, const fs::path& out);
/// The shared teacher's row.
SweepRow inspect_teacher(const fs::path& dir);
bool teacher_finished(const fs::path& dir);
/// Writes sweep-plot.dat and sweep-plot.gp next to sweep.csv, and runs gnuplot on them when it
/// is installed (result.png_path / svg_path).
void write_plot(const fs::path& out, const std::vector<SweepRow>& rows, const std::string& title,
                const Console& console, SweepResult& result);

}  // namespace sweep_detail
}  // namespace autorep::trainer::app
