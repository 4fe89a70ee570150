#include <CLI/CLI.hpp>

#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include "trainer/app/commands.h"
#include "trainer/engine/distributed.h"
#include "trainer/app/sweep.h"

#include "trainer/engine/interrupt.h"
#include "trainer/app/common.h"

namespace autorep::trainer::app {

namespace {

struct SweepArgs {
  std::string config;
  std::vector<std::string> sets, teacher_sets, only;
  std::string out, device, shard;
  int64_t threads = -1;
  bool collect = false, teacher_only = false, quiet_runs = false, no_plot = false;
  dist::Options dist;
};

void print_table(const std::vector<SweepRow>& rows) {
  if (rows.empty()) return;
  size_t wm = 6, wb = 6;
  for (const auto& r : rows) {
    wm = std::max(wm, r.method.size());
    wb = std::max(wb, r.budget.size());
  }
  std::cout << std::left << std::setw(static_cast<int>(wm)) << "method" << "  " << std::setw(static_cast<int>(wb))
            << "budget" << std::right << std::setw(12) << "ReLUs" << std::setw(10) << "accuracy" << std::setw(10)
            << "seconds" << "  status\n";
  for (const auto& r : rows) {
    std::ostringstream acc, secs;
    if (r.accuracy >= 0) acc << std::fixed << std::setprecision(2) << 100.0 * r.accuracy << "%";
    if (r.seconds >= 0) secs << std::fixed << std::setprecision(0) << r.seconds;
    std::cout << std::left << std::setw(static_cast<int>(wm)) << r.method << "  " << std::setw(static_cast<int>(wb))
              << r.budget << std::right << std::setw(12) << (r.relu_count >= 0 ? with_commas(r.relu_count) : "")
              << std::setw(10) << acc.str() << std::setw(10) << secs.str() << "  " << r.status << "\n";
  }
}

int cmd_sweep(const SweepArgs& a) {
  const SweepConfig sweep = load_sweep_config(a.config);
  interrupt::install();
  if (!a.collect) dist::init_from_environment(a.dist, a.device.empty() ? "auto" : a.device);
  SweepOptions o;
  o.quiet = !dist::is_primary();
  o.out_dir = a.out;
  o.overrides = a.sets;
  o.teacher_overrides = a.teacher_sets;
  o.device = a.device;
  o.threads = a.threads;
  if (!a.shard.empty()) parse_shard(a.shard, &o.shard, &o.shards);
  o.only = a.only;
  o.collect = a.collect;
  o.teacher_only = a.teacher_only;
  o.quiet_runs = a.quiet_runs;
  o.plot = !a.no_plot;
  const SweepResult r = run_sweep(sweep, o);
  if (!dist::is_primary()) return r.failed > 0 ? 1 : 0;
  print_table(r.rows);
  std::cout << "sweep: " << r.planned << " runs";
  if (!a.collect && !a.teacher_only) {
    std::cout << ": " << r.trained << " trained, " << r.skipped << " finished before, " << r.failed << " failed";
    if (r.other_shards > 0) std::cout << ", " << r.other_shards << " left to other shards or not selected";
  }
  std::cout << "\nsweep: table " << r.csv_path;
  if (!r.png_path.empty()) std::cout << ", plot " << r.png_path << " and " << r.svg_path;
  std::cout << "\n";
  if (r.failed > 0) {
    std::cerr << "sweep: " << r.failed << " run(s) failed (see " << r.out_dir << "/sweep-errors.txt)" << std::endl;
    return 1;
  }
  return 0;
}

}  // namespace

void add_sweep_commands(CLI::App& app, Commands& out) {
  auto sa = std::make_shared<SweepArgs>();
  auto* sweep = app.add_subcommand(
      "sweep", "Run one reduction per (method, budget) sharing a teacher; write sweep.csv and a Pareto plot "
               "(docs/sweeps.md)");
  sweep->add_option("--config,-c", sa->config, "Sweep file (see configs/sweep-*.json)")->required();
  sweep->add_option("--set", sa->sets, "Override a key of every run's config: a.b=value (repeatable)");
  sweep->add_option("--teacher-set", sa->teacher_sets,
                    "Override a key of the shared teacher's config: a.b=value (repeatable)");
  sweep->add_option("--out,-o", sa->out, "Sweep folder (default: the sweep's \"out\", else runs/sweep-<name>)");
  sweep->add_option("--device", sa->device, "auto | cpu | cuda (teacher and runs)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sweep->add_option("--threads", sa->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  sweep->add_option("--shard", sa->shard, "K/N: run only the runs whose index % N == K-1 (array jobs)");
  sweep->add_option("--only", sa->only, "Train only this run (folder name such as autorep-1pct; repeatable)");
  sweep->add_flag("--collect", sa->collect, "Train nothing: rebuild sweep.csv and the plot from the run folders");
  sweep->add_flag("--teacher-only", sa->teacher_only, "Train (or skip) the shared teacher, then stop");
  sweep->add_flag("--quiet-runs", sa->quiet_runs, "Print only the sweep's lines, not each run's progress");
  sweep->add_flag("--no-plot", sa->no_plot, "Do not draw the Pareto plot");
  add_dist_options(*sweep, sa->dist);
  out.push_back({sweep, [sa] { return cmd_sweep(*sa); }});
}

}  // namespace autorep::trainer::app
