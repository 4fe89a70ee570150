#include "trainer/app/bench_epoch.h"

#include <torch/torch.h>

#include <filesystem>
#include <iomanip>
#include <map>
#include <stdexcept>
#include <unistd.h>

#include "trainer/engine/config.h"
#include "trainer/engine/loop.h"
#include "trainer/methods/run_model.h"

namespace autorep::trainer::app {

namespace {

namespace fs = std::filesystem;

struct Timed {
  std::string what;
  double ms_per_step = 0.0;
  int64_t steps = 0;
};

Timed timed_run(const std::string& what, const engine::Config& config, const fs::path& dir, int64_t steps) {
  engine::RunOptions ro;
  ro.out_dir = dir.string();
  ro.quiet = true;
  ro.stop_after_steps = steps > 0 ? steps : -1;
  const engine::RunResult r = methods::train(config, ro);
  if (r.steps_timed == 0) throw std::runtime_error("bench epoch: the " + what + " run took no step");
  return {what, 1e3 * r.step_seconds / static_cast<double>(r.steps_timed), r.steps_timed};
}

}  // namespace

int run_epoch_bench(const EpochBenchOptions& o, std::ostream& out) {
  if (o.steps < 0) throw std::runtime_error("bench epoch: --steps must be >= 0 (0: a whole epoch)");
  const std::map<std::string, std::vector<int64_t>> shapes = {{"fashion-mnist", {1, 28, 28}},
                                                              {"mnist", {1, 28, 28}},
                                                              {"cifar10", {3, 32, 32}},
                                                              {"cifar100", {3, 32, 32}}};
  if (const auto it = shapes.find(o.data); it != shapes.end() && it->second != o.input) {
    throw std::runtime_error("bench epoch: --input must be the images of --data " + o.data + ", " +
                             std::to_string(it->second[0]) + "x" + std::to_string(it->second[1]) + "x" +
                             std::to_string(it->second[2]));
  }
  engine::Config base;  // the shipped defaults of every key
  base.method = "baseline";
  base.model.name = o.model;
  base.data.name = o.data;
  base.data.path = o.data_path;
  base.train.device = o.device;
  base.train.threads = o.threads;
  // One epoch is enough: every run stops after `steps` steps of its first epoch. With a whole
  // epoch (--steps 0) the baseline trains exactly one epoch, and the reduction runs (a search
  // epoch, then a finetune epoch) stop after as many steps: the first epoch of each, not two.
  base.train.epochs = 2;
  int64_t steps = o.steps;
  base.search.search_epochs = 1;
  base.train.checkpoint_interval_s = 0;
  base.train.log_every = 0;

  const fs::path dir = fs::temp_directory_path() / ("autorep-bench-epoch-" + std::to_string(::getpid()));
  std::vector<Timed> runs;
  try {
    fs::create_directories(dir);
    // Each run in the default layout, then (--channels-last) in channels_last memory.
    auto both = [&](const std::string& what, engine::Config c, const std::string& folder) {
      c.train.channels_last = false;
      runs.push_back(timed_run(what, c, dir / folder, steps));
      if (!o.channels_last) return;
      c.train.channels_last = true;
      runs.push_back(timed_run(what + ", cl", c, dir / (folder + "-cl"), steps));
    };
    engine::Config baseline = base;
    if (steps == 0) baseline.train.epochs = 1;
    both("baseline", baseline, "baseline");
    if (steps == 0) steps = runs[0].steps;
    // Its last.pt (all ReLUs, a few steps in) is the teacher of the reduction runs.
    engine::Config red = base;
    red.search.teacher = (dir / "baseline" / "checkpoints" / "last.pt").string();
    red.search.budget = search::Budget(o.budget);
    red.search.kd.teacher_dtype = o.teacher_dtype;
    red.method = "autorep";
    both("search (autorep)", red, "autorep");
    red.method = "uniform";
    both("finetune (uniform)", red, "uniform");
    // The baseline once more, last (A-B-A): the ratios divide by the mean of the two baseline
    // timings, so a machine that speeds up or slows down over the minutes of the bench moves
    // numerator and denominator alike.
    both("baseline, again", baseline, "baseline-again");
  } catch (...) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    throw;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);

  // The data set's image shape, to say what was measured (and catch a mismatched --input).
  out << "bench epoch: " << o.model << " on " << o.data << " (input " << o.input[0] << "x" << o.input[1] << "x"
      << o.input[2] << "), batch " << base.data.batch_size << ", " << o.device << ", "
      << torch::get_num_threads() << " threads, teacher " << o.teacher_dtype << ", budget " << o.budget << "; "
      << (o.steps > 0 ? "the first " + std::to_string(o.steps) + " steps" : std::string("a whole epoch"))
      << " of each run through the training loop (data loading included; setup, evaluation and checkpoints not);"
         " the baseline before and after the others, the ratios against the mean of the two\n";
  out << std::fixed;
  for (const auto& r : runs) {
    out << "  " << std::left << std::setw(20) << r.what << std::right << std::setprecision(1) << std::setw(9)
        << r.ms_per_step << " ms/step over " << r.steps << " steps\n";
  }
  // runs: baseline, search, finetune, baseline again; with --channels-last each followed by its
  // cl run. A baseline is the mean of its two timings.
  const size_t k = o.channels_last ? 2 : 1;
  const auto baseline_ms = [&](size_t cl) { return 0.5 * (runs[cl].ms_per_step + runs[3 * k + cl].ms_per_step); };
  out << std::setprecision(3) << "baseline drift (again / first)=" << runs[3 * k].ms_per_step / runs[0].ms_per_step
      << "\n"
      << "search_epoch_over_baseline=" << runs[k].ms_per_step / baseline_ms(0) << "\n"
      << "finetune_epoch_over_baseline=" << runs[2 * k].ms_per_step / baseline_ms(0) << "\n";
  if (o.channels_last) {
    out << "baseline_channels_last_over_default=" << baseline_ms(1) / baseline_ms(0) << "\n";
    const char* names[] = {"search", "finetune"};
    for (size_t i = 1; i < 3; ++i)
      out << names[i - 1] << "_channels_last_over_default="
          << runs[2 * i + 1].ms_per_step / runs[2 * i].ms_per_step << "\n";
    out << "channels_last: search_epoch_over_baseline=" << runs[3].ms_per_step / baseline_ms(1)
        << " finetune_epoch_over_baseline=" << runs[5].ms_per_step / baseline_ms(1) << "\n";
  }
  return 0;
}

}  // namespace autorep::trainer::app
