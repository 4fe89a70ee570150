#pragma once
/// Sweeps (DESIGN.md §4, `autorep sweep`): one reduction run per (method, budget) under a sweep
/// folder, sharing one teacher; finished runs are skipped, unfinished ones resumed; after every
/// run the table `sweep.csv` is rebuilt from the run folders and written atomically, and at the
/// end a Pareto plot (accuracy against ReLU count, log x, one line per method) is drawn with
/// gnuplot as PNG and SVG. The sweep file format is documented in docs/sweeps.md.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "trainer/engine/config.h"

namespace autorep::trainer::app {

/// A parsed sweep file. Paths inside it are resolved against the sweep file's folder.
struct SweepConfig {
  std::string source;                  ///< the sweep file (or a label), for messages
  nlohmann::json base;                 ///< user JSON of the base run config (`base` file or `base_config`)
  std::string base_source;             ///< where `base` came from
  std::vector<nlohmann::json> budgets;  ///< each an integer count or a string such as "3%"
  /// Per budget (same order; may be shorter): {"a.b": value} applied to that budget's runs
  /// after the method's.
  std::vector<nlohmann::json> budget_sets;
  std::vector<std::string> methods;     ///< reduction methods; from the base's method when not given
  /// Per method (same order; may be shorter): {"a.b": value} applied to that method's runs
  /// after `set`, before the budget's.
  std::vector<nlohmann::json> method_sets;
  nlohmann::json set = nlohmann::json::object();  ///< {"a.b": value} applied to every run
  /// `runs`: run folder name ("autorep-10pct") -> {"a.b": value} applied to that one run, last
  /// (after the budget's set).
  std::map<std::string, nlohmann::json> run_sets;
  std::string teacher_checkpoint;      ///< `teacher` as a path: an existing baseline checkpoint
  nlohmann::json teacher_base;         ///< `teacher.config`: user JSON of the shared teacher (null: none)
  std::string teacher_source;
  nlohmann::json teacher_set = nlohmann::json::object();  ///< `teacher.set`
  std::string out;                     ///< `out`: default sweep folder ("" = runs/sweep-<file stem>)
};

/// Parses a sweep JSON. `dir` is the folder relative paths are resolved against. Unknown keys,
/// wrong types, duplicate or unknown methods, duplicate budgets and unknown `set` keys are
/// std::runtime_error "<source>: <key>: <what is wrong>".
SweepConfig sweep_config_from_json(const nlohmann::json& j, const std::string& source, const std::string& dir);
/// Reads and parses a sweep file.
SweepConfig load_sweep_config(const std::string& path);

struct SweepOptions {
  std::string out_dir;                    ///< sweep folder ("" = the sweep's `out` or runs/sweep-<stem>)
  std::vector<std::string> overrides;     ///< `--set a.b=v`, applied to every run (after the sweep's `set`)
  std::vector<std::string> teacher_overrides;  ///< `--teacher-set a.b=v`, applied to the shared teacher
  std::string device;                     ///< "" or auto|cpu|cuda, for the teacher and every run
  int64_t threads = -1;                   ///< >= 0: train.threads for the teacher and every run
  int64_t shard = 1;                      ///< run only runs with index % shards == shard - 1 (1-based)
  int64_t shards = 1;
  std::vector<std::string> only;          ///< run folder names (autorep-1pct, ...): train only these
  bool collect = false;                   ///< train nothing; rebuild the table and the plot
  bool teacher_only = false;              ///< train (or skip) the shared teacher, then stop
  bool quiet = false;                     ///< no console output (runs still write log.txt)
  bool quiet_runs = false;                ///< only the sweep's own lines, not each run's progress
  bool plot = true;                       ///< draw the Pareto plot (when gnuplot is installed)
};

/// One row of sweep.csv. Paths are relative to the sweep folder.
struct SweepRow {
  int64_t index = -1;        ///< position in the sweep (methods outer, budgets inner); -1: the teacher
  std::string method;        ///< the teacher's row says "teacher"
  std::string budget;        ///< as given: "3%", "4328" ("all" for the teacher)
  std::string name;          ///< run folder name, e.g. autorep-3pct
  std::string status;        ///< ok | failed | unfinished | pending
  int64_t relu_count = -1;   ///< ReLUs kept per sample by the exported model (-1: none)
  int64_t total_relus = -1;
  double accuracy = -1.0;    ///< test accuracy (fraction) of the exported checkpoint (-1: none)
  double val_accuracy = -1.0;  ///< its validation accuracy, what it was selected on (-1: no split)
  int64_t skipped_steps = -1;  ///< steps the spike guard skipped (-1: unknown)
  int64_t search_end_kept = -1;  ///< autorep: ReLUs kept when the search ended (-1: not autorep)
  double worst_class_accuracy = -1.0;  ///< test accuracy of its worst class (-1: not recorded)
  std::string worst_class;             ///< that class's name
  std::optional<double> max_class_drop;  ///< the largest per-class drop against the teacher
  double seconds = -1.0;     ///< wall time of the run, all processes together
  std::string run_dir;
  std::string export_path;
  std::string error;         ///< why it failed
};

struct SweepResult {
  std::string out_dir;
  int64_t planned = 0;      ///< runs in the sweep (all shards)
  int64_t trained = 0;      ///< runs trained (or resumed) to completion by this call
  int64_t skipped = 0;      ///< runs skipped because they had finished before
  int64_t failed = 0;       ///< runs that failed in this call (or hold a run of another config)
  int64_t other_shards = 0;  ///< runs left to other shards (or not chosen by `only`)
  bool teacher_trained = false;  ///< the shared teacher was trained (or resumed) by this call
  std::vector<SweepRow> rows;    ///< the table as last written (teacher first when present)
  std::string csv_path;
  std::string png_path, svg_path;  ///< "" when not drawn
};

/// The folder name of a run: `<method>-<budget>` with '%' written as "pct" and any character
/// other than letters, digits, '.', '_' and '-' as '_' ("3%" -> autorep-3pct, 4328 -> random-4328).
std::string sweep_run_name(const std::string& method, const nlohmann::json& budget);

/// Parses "K/N" (1 <= K <= N) for --shard; throws naming the value otherwise.
void parse_shard(const std::string& text, int64_t* shard, int64_t* shards);

/// Runs (or resumes, or collects) a sweep. Throws for sweep-level errors (bad config, a teacher
/// that fails to train); a failing run is recorded in the table and the sweep goes on.
SweepResult run_sweep(const SweepConfig& sweep, const SweepOptions& options);

/// sweep.csv text of `rows` (columns: method,budget,relu_count,accuracy,seconds,run_dir,
/// export_path,status,error).
std::string sweep_csv(const std::vector<SweepRow>& rows);

}  // namespace autorep::trainer::app
