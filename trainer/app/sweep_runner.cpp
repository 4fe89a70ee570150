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

#include "trainer/engine/interrupt.h"
#include "trainer/app/common.h"

namespace autorep::trainer::app {

namespace fs = std::filesystem;
using namespace sweep_detail;

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
    util::write_file_atomic((out / "sweep.csv").string(), sweep_csv(result.rows));
    std::string errors;
    for (const auto& r : result.rows)
      if (r.status == "failed") errors += r.name + ": " + r.error + "\n";
    const fs::path errors_path = out / "sweep-errors.txt";
    if (!errors.empty()) util::write_file_atomic(errors_path.string(), errors);
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
        r = train_run(teacher_config, ro);
      } catch (const interrupt::Interrupted&) {
        throw;  // the teacher's last.pt is written; the same sweep command resumes it
      } catch (const std::exception& e) {
        throw std::runtime_error("teacher (" + teacher_dir.string() + "): " + error_text(e));
      }
      if (!fs::exists(teacher_dir / "checkpoints" / "best.pt"))
        throw std::runtime_error("teacher (" + teacher_dir.string() + "): no checkpoints/best.pt after training");
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
    if (interrupt::requested() != 0) {
      write_table();
      const std::string message = std::string("sweep stopped by ") + interrupt::name(interrupt::requested()) +
                                  " before " + p.name + "; run the same command to continue";
      console.line(message);
      throw interrupt::Interrupted(interrupt::requested(), message);
    }
    dist::barrier();  // every process sees the run folders as rank 0 left them
    const SweepRow before = inspect_run(p, out);
    if (before.status == "ok") {
      ++result.skipped;
      console.line(tag(p) + ": finished before (accuracy " + fixed(100.0 * before.accuracy, 2) + "%, ReLUs " +
                   with_commas(before.relu_count) + "), skipped");
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
      RunResult r;
      try {
        r = train_run(p.config, ro);
      } catch (const interrupt::Interrupted& e) {
        write_table();
        console.line(tag(p) + ": " + e.what() + " (or run the same sweep command)");
        throw;
      }
      if (!r.completed) throw std::runtime_error("the run stopped before its last epoch");
      const nlohmann::json rj = run_result_json(p.config, r);
      const double accuracy = rj.at("accuracy").get<double>();
      const int64_t relus = rj.at("relu_count").get<int64_t>();
      ++result.trained;
      console.line(tag(p) + ": done, accuracy " + fixed(100.0 * accuracy, 2) + "%, ReLUs " + with_commas(relus) + " of " +
                   with_commas(r.total_relus) + ", " + fixed(r.seconds, 0) + " s");
    } catch (const std::exception& e) {
      const std::string msg = one_line(error_text(e));
      ++result.failed;
      try {
        if (dist::is_primary()) {
          fs::create_directories(p.dir);
          util::write_file_atomic((p.dir / "error.txt").string(), msg + "\n");
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

}  // namespace autorep::trainer::app
