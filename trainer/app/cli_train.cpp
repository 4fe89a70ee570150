#include "trainer/app/commands.h"

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include "layers/site.h"
#include "trainer/engine/config.h"
#include "trainer/engine/distributed.h"
#include "trainer/models/net.h"
#include "trainer/app/run.h"
#include "trainer/engine/device.h"
#include "trainer/engine/evaluate.h"
#include "trainer/engine/interrupt.h"
#include "trainer/engine/loop.h"

#include "layers/util/json_check.h"
#include "trainer/app/common.h"

namespace autorep::trainer::app {

void add_dist_options(CLI::App& command, dist::Options& options) {
  command.add_option("--dist-backend", options.backend,
                     "Multi-process runs (WORLD_SIZE > 1): gloo | nccl (default: nccl on CUDA, gloo on CPU)")
      ->check(CLI::IsMember({"gloo", "nccl"}));
  command.add_option("--dist-timeout", options.timeout_s,
                     "Seconds to wait for every process at the rendezvous and in each collective (default 300)")
      ->check(CLI::PositiveNumber);
}

namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string out;
  std::string device;
  int64_t threads = -1;
  bool resume = false;
  dist::Options dist;
};

int cmd_train(const TrainArgs& a) {
  interrupt::install();
  std::vector<std::string> sets = a.sets;
  if (!a.device.empty()) sets.push_back("train.device=\"" + a.device + "\"");
  if (a.threads >= 0) sets.push_back("train.threads=" + std::to_string(a.threads));
  std::string config_path = a.config;
  if (config_path.empty()) {
    if (!a.resume || a.out.empty()) throw std::runtime_error("train: --config is required (or --out DIR --resume)");
    config_path = a.out + "/config.json";
  }
  const Config config = load_config(config_path, sets);
  dist::init_from_environment(a.dist, config.train.device);
  RunOptions opts;
  opts.out_dir = a.out.empty() ? "runs/" + config.method + "-" + config.model.name : a.out;
  opts.resume = a.resume;
  train_run(config, opts);
  return 0;
}

int cmd_eval(const std::string& checkpoint, const std::string& data_path, const std::string& device,
             int64_t threads) {
  configure_threads(threads < 0 ? 0 : threads);
  LoadedModel lm = load_model(checkpoint);
  DataOptions d = lm.config.data;
  if (!data_path.empty()) d.path = data_path;
  d.limit_train = 1;  // only the test split is evaluated
  const DataSplits data = load_dataset(d);
  const torch::Device dev = resolve_device(device);
  lm.model->to(dev);
  const EvalResult r = evaluate(*lm.model, data, data.test, dev, d.eval_batch_size);
  std::cout << std::fixed << std::setprecision(2) << "test accuracy " << 100.0 * r.accuracy << "% ("
            << r.samples << " samples, loss " << std::setprecision(4) << r.loss;
  if (r.nonfinite > 0) std::cout << ", " << r.nonfinite << " with non-finite logits counted wrong";
  std::cout << "), ReLUs "
            << layers::kept_relus(lm.model->sites()) << "/" << layers::total_relus(lm.model->sites()) << "\n";
  std::cout << "accuracy=" << std::setprecision(4) << r.accuracy << "\n";
  return 0;
}

int cmd_count(const std::string& model, const std::string& input, int64_t classes, bool no_stem_relu) {
  ModelSpec spec;
  spec.name = model;
  spec.input_shape = parse_shape(input);
  spec.classes = classes;
  spec.stem_relu = !no_stem_relu;
  const Net net = build_model(spec, layers::relu_factory());
  size_t width = 4;
  for (const auto& s : net->sites()) width = std::max(width, s.name.size());
  std::cout << std::left << std::setw(static_cast<int>(width)) << "site" << "  " << std::setw(14) << "shape"
            << std::right << std::setw(12) << "ReLUs" << "\n";
  for (const auto& s : net->sites())
    std::cout << std::left << std::setw(static_cast<int>(width)) << s.name << "  " << std::setw(14)
              << shape_text(s.shape) << std::right << std::setw(12) << with_commas(s.activation().total_relus())
              << "\n";
  const int64_t total = layers::total_relus(net->sites());
  std::cout << net->sites().size() << " sites, total " << with_commas(total) << " ReLUs per sample (" << model
            << " at " << input << ")\n";
  std::cout << "total=" << total << "\n";
  return 0;
}

}  // namespace


void add_training_commands(CLI::App& app, Commands& out) {
  auto ta = std::make_shared<TrainArgs>();
  auto* train = app.add_subcommand("train", "Train a model (baseline or a ReLU-reduction method) from a JSON config");
  std::string methods_help = "Methods (config key `method`):";
  for (const auto& m : registry()) methods_help += "\n  " + m.name + ": " + m.summary;
  train->footer(methods_help);
  train->add_option("--config,-c", ta->config, "JSON run config (see configs/)");
  train->add_option("--set", ta->sets, "Override a config key: a.b=value (repeatable)");
  train->add_option("--out,-o", ta->out, "Run directory (default runs/<method>-<model>)");
  train->add_option("--device", ta->device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  train->add_option("--threads", ta->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  train->add_flag("--resume", ta->resume, "Continue the run in --out from checkpoints/last.pt");
  add_dist_options(*train, ta->dist);
  out.push_back({train, [ta] { return cmd_train(*ta); }});

  struct EvalArgs {
    std::string checkpoint, data, device = "auto";
    int64_t threads = -1;
  };
  auto ea = std::make_shared<EvalArgs>();
  auto* eval = app.add_subcommand("eval", "Report the test accuracy of a checkpoint");
  eval->add_option("--checkpoint", ea->checkpoint, "Checkpoint file (.pt)")->required();
  eval->add_option("--data", ea->data, "Folder of the data set (default: the one in the checkpoint's config)");
  eval->add_option("--device", ea->device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  eval->add_option("--threads", ea->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  out.push_back({eval, [ea] { return cmd_eval(ea->checkpoint, ea->data, ea->device, ea->threads); }});

  struct CountArgs {
    std::string model, input = "3x32x32";
    int64_t classes = 10;
    bool no_stem = false;
  };
  auto ca = std::make_shared<CountArgs>();
  auto* count = app.add_subcommand("count", "List a model's ReLU sites with their shapes and counts, and the total");
  count->add_option("--model", ca->model, util::join(model_names(), " | "))->required();
  count->add_option("--input", ca->input, "Input shape CxHxW (default 3x32x32)");
  count->add_option("--classes", ca->classes, "Number of classes (default 10)");
  count->add_flag("--no-stem-relu", ca->no_stem, "resnet18: no ReLU after the stem convolution");
  out.push_back({count, [ca] { return cmd_count(ca->model, ca->input, ca->classes, ca->no_stem); }});
}

}  // namespace autorep::trainer::app
