#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <iostream>
#include <memory>
#include <sstream>

#include "layers/bench_gate.h"
#include "trainer/app/bench_epoch.h"
#include "trainer/app/bench_step.h"
#include "trainer/app/commands.h"
#include "trainer/models/net.h"
#include "trainer/engine/loop.h"

#include "trainer/app/common.h"

namespace autorep::trainer::app {

namespace {

std::vector<int64_t> parse_list(const std::string& text, char sep, const std::string& what) {
  std::vector<int64_t> v;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, sep)) {
    try {
      size_t used = 0;
      const long long x = std::stoll(part, &used);
      if (used != part.size() || x <= 0) throw std::invalid_argument(part);
      v.push_back(x);
    } catch (const std::exception&) {
      throw std::runtime_error(what + " \"" + text + "\": expected positive integers separated by '" + sep + "'");
    }
  }
  return v;
}

}  // namespace

void add_bench_commands(CLI::App& app, Commands& out) {
  auto* bench = app.add_subcommand("bench", "Speed measurements, reported as ratios measured in one run");
  bench->require_subcommand(1);

  struct GateArgs {
    std::string shape = "64,64,28,28", device = "cpu", granularity = "pixel", dtype = "float32";
    int64_t threads = 0;
    int iters = 50;
    bool channels_last = false;
  };
  auto ga = std::make_shared<GateArgs>();
  auto* gate = bench->add_subcommand("gate", "Fused gate vs plain ReLU vs composite gate, forward+backward");
  gate->add_option("--shape", ga->shape, "Input N,C,H,W or N,F (default 64,64,28,28)");
  gate->add_option("--device", ga->device, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  gate->add_option("--granularity", ga->granularity, "pixel | channel | layer")
      ->check(CLI::IsMember({"pixel", "channel", "layer"}));
  gate->add_option("--dtype", ga->dtype, "float32 | bfloat16 | float16 (the last two on cuda)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  gate->add_option("--threads", ga->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  gate->add_option("--iters", ga->iters, "Timed iterations per variant (default 50; the composite reference at most 20)")->check(CLI::PositiveNumber);
  gate->add_flag("--channels-last", ga->channels_last,
                 "x and dL/dy in channels_last memory (N,C,H,W shapes): the row kernels; ReLU and the copy too");
  out.push_back({gate, [ga] {
                   configure_threads(ga->threads);
                   layers::GateBenchOptions o;
                   o.shape = parse_list(ga->shape, ',', "--shape");
                   o.device = ga->device;
                   o.granularity = ga->granularity;
                   o.dtype = ga->dtype;
                   o.iters = ga->iters;
                   o.channels_last = ga->channels_last;
                   return layers::run_gate_bench(o, std::cout);
                 }});

  struct StepArgs {
    std::string model = "resnet20", input = "1x28x28", device = "cpu";
    int64_t batch = 128, threads = 0;
    int iters = 10;
    std::string teacher_dtype = "float32";
    bool conv_paths = false;
  };
  auto sa = std::make_shared<StepArgs>();
  auto* step = bench->add_subcommand("step", "Baseline training step vs search step on the same model and batch");
  step->add_option("--model", sa->model, "Model (default resnet20)");
  step->add_option("--input", sa->input, "Input CxHxW (default 1x28x28)");
  step->add_option("--batch", sa->batch, "Batch size (default 128)")->check(CLI::PositiveNumber);
  step->add_option("--device", sa->device, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  step->add_option("--threads", sa->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  step->add_option("--teacher-dtype", sa->teacher_dtype,
                   "Precision of the search step's teacher forward (search.kd.teacher_dtype; default float32)")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  step->add_option("--iters", sa->iters, "Timed iterations per step kind (default 10)")->check(CLI::PositiveNumber);
  step->add_flag("--conv-paths", sa->conv_paths,
                 "Also time the baseline step with channels_last weights and batch (CPU)");
  out.push_back({step, [sa] {
                   configure_threads(sa->threads);
                   StepBenchOptions o;
                   o.model = sa->model;
                   o.input = parse_shape(sa->input);
                   o.batch = sa->batch;
                   o.device = sa->device;
                   o.iters = sa->iters;
                   o.teacher_dtype = sa->teacher_dtype;
                   o.conv_paths = sa->conv_paths;
                   return run_step_bench(o, std::cout);
                 }});

  struct EpochArgs {
    std::string model = "resnet20", input = "1x28x28", device = "cpu", data = "fashion-mnist", data_path;
    std::string teacher_dtype = "float32", budget = "3%";
    int64_t steps = 0, threads = 0;
    bool channels_last = false;
  };
  auto ea = std::make_shared<EpochArgs>();
  auto* epoch = bench->add_subcommand(
      "epoch", "Baseline, search and finetune epochs through the real data loader and training loop");
  epoch->add_option("--model", ea->model, "Model (default resnet20)");
  epoch->add_option("--input", ea->input, "Input CxHxW, the data set's images (default 1x28x28)");
  epoch->add_option("--data", ea->data, "Data set (default fashion-mnist)");
  epoch->add_option("--data-path", ea->data_path, "Folder of the data set's files (default: its usual place)");
  epoch->add_option("--steps", ea->steps, "Steps timed per run (default 0: a whole epoch)")->check(CLI::NonNegativeNumber);
  epoch->add_option("--device", ea->device, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  epoch->add_option("--threads", ea->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  epoch->add_option("--teacher-dtype", ea->teacher_dtype, "search.kd.teacher_dtype of the search run (default float32)")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  epoch->add_option("--budget", ea->budget, "search.budget of the reduction runs (default 3%)");
  epoch->add_flag("--channels-last", ea->channels_last,
                  "Also time each run with train.channels_last, right after its default-layout run");
  out.push_back({epoch, [ea] {
                   configure_threads(ea->threads);
                   EpochBenchOptions o;
                   o.model = ea->model;
                   o.input = parse_shape(ea->input);
                   o.data = ea->data;
                   o.data_path = ea->data_path;
                   o.steps = ea->steps;
                   o.device = ea->device;
                   o.threads = ea->threads;
                   o.teacher_dtype = ea->teacher_dtype;
                   o.channels_last = ea->channels_last;
                   o.budget = ea->budget;
                   return run_epoch_bench(o, std::cout);
                 }});
}

}  // namespace autorep::trainer::app
