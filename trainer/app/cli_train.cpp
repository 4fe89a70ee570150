#include "trainer/app/commands.h"

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <iomanip>
#include <iostream>
#include <optional>
#include <memory>
#include <sstream>

#include "layers/site.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/config.h"
#include "trainer/engine/distributed.h"
#include "trainer/models/net.h"
#include "trainer/app/run.h"
#include "trainer/engine/device.h"
#include "trainer/engine/evaluate.h"
#include "trainer/engine/interrupt.h"
#include "trainer/engine/loop.h"
#include "trainer/methods/deepreduce.h"

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

// The per-class table of `autorep eval`: accuracy and samples per class, and with a reference
// its accuracy and the drop.
void print_class_table(const nlohmann::json& report, const nlohmann::json* reference) {
  size_t width = 5;
  for (const auto& e : report.at("per_class")) width = std::max(width, e.at("class").get<std::string>().size());
  auto pct = [](const nlohmann::json& v) { return v.is_null() ? std::string("-") : fixed(100.0 * v.get<double>(), 2) + "%"; };
  std::cout << std::left << std::setw(static_cast<int>(width)) << "class" << std::right << std::setw(10) << "accuracy"
            << std::setw(9) << "samples";
  if (reference) std::cout << std::setw(10) << "reference" << std::setw(9) << "drop";
  std::cout << "\n";
  const auto& rows = report.at("per_class");
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& e = rows[i];
    std::cout << std::left << std::setw(static_cast<int>(width)) << e.at("class").get<std::string>() << std::right
              << std::setw(10) << pct(e.at("accuracy")) << std::setw(9) << e.at("samples").get<int64_t>();
    if (reference)
      std::cout << std::setw(10) << pct(reference->at("per_class")[i].at("accuracy")) << std::setw(9)
                << (e.contains("drop") ? fixed(100.0 * e.at("drop").get<double>(), 2) : std::string("-"));
    std::cout << "\n";
  }
  std::cout << class_summary(report) << "\n";
}

int cmd_eval(const std::string& checkpoint, const std::string& data_path, const std::string& device,
             int64_t threads, const std::string& against) {
  configure_threads(threads < 0 ? 0 : threads);
  LoadedModel lm = load_model(checkpoint);
  DataOptions d = data::test_split_options(lm.config.data);
  if (!data_path.empty()) d.path = data_path;
  const DataSplits data = methods::load_test_split(lm, d);
  const torch::Device dev = resolve_device(device);
  lm.model->to(dev);
  const EvalResult r = evaluate(*lm.model, data, data.test, dev, d.eval_batch_size);
  std::optional<EvalResult> ref;
  if (!against.empty()) {
    LoadedModel rm = load_model(against);
    if (rm.model->spec().input_shape != lm.model->spec().input_shape || rm.model->spec().classes != lm.model->spec().classes)
      throw std::runtime_error("eval: --against " + against + " takes other inputs or classes than " + checkpoint);
    rm.model->to(dev);
    ref = evaluate(*rm.model, data, data.test, dev, d.eval_batch_size);
  }
  const nlohmann::json report = class_report(r, data, ref ? &*ref : nullptr);
  const nlohmann::json ref_report = ref ? class_report(*ref, data) : nlohmann::json();
  print_class_table(report, ref ? &ref_report : nullptr);
  std::cout << std::fixed << std::setprecision(2) << "test accuracy " << 100.0 * r.accuracy << "% ("
            << r.samples << " samples, loss " << std::setprecision(4) << r.loss;
  if (r.nonfinite > 0) std::cout << ", " << r.nonfinite << " with non-finite logits counted wrong";
  std::cout << "), ReLUs "
            << layers::kept_relus(lm.model->sites()) << "/" << layers::total_relus(lm.model->sites()) << "\n";
  std::cout << "accuracy=" << std::setprecision(4) << r.accuracy;
  if (!report.at("worst_class").is_null())
    std::cout << " worst_class_accuracy=" << report.at("worst_class_accuracy").get<double>();
  if (report.contains("max_class_drop") && !report.at("max_class_drop").is_null())
    std::cout << " max_class_drop=" << report.at("max_class_drop").get<double>();
  std::cout << "\n";
  return 0;
}

int cmd_count(const ModelSpec& spec) {
  const Net net = build_model(spec, layers::relu_factory());
  std::vector<std::string> stage_of(net->sites().size());
  for (const auto& st : net->stages())
    for (size_t i : st.sites) stage_of[i] = st.name;
  size_t width = 4, stage_width = 5;
  for (const auto& s : net->sites()) width = std::max(width, s.name.size());
  for (const auto& st : net->stages()) stage_width = std::max(stage_width, st.name.size());
  std::cout << std::left << std::setw(static_cast<int>(width)) << "site" << "  " << std::setw(static_cast<int>(stage_width))
            << "stage" << "  " << std::setw(14) << "shape" << std::right << std::setw(12) << "ReLUs" << "\n";
  for (size_t i = 0; i < net->sites().size(); ++i) {
    const auto& s = net->sites()[i];
    std::cout << std::left << std::setw(static_cast<int>(width)) << s.name << "  "
              << std::setw(static_cast<int>(stage_width)) << stage_of[i] << "  " << std::setw(14) << shape_text(s.shape)
              << std::right << std::setw(12) << with_commas(s.activation().total_relus()) << "\n";
  }
  const int64_t total = layers::total_relus(net->sites());
  std::cout << net->sites().size() << " sites, total " << with_commas(total) << " ReLUs per sample (" << spec.name
            << " at " << shape_text(spec.input_shape);
  if (spec.width != 1.0) std::cout << ", width " << util::short_number(spec.width);
  if (spec.stem_stride != 1) std::cout << ", stem stride " << spec.stem_stride;
  std::cout << ")\n";
  // DeepReDuce's view: what culling a stage removes and what thinning it keeps.
  std::cout << net->stages().size() << " stages (DeepReDuce culls or thins a whole stage):\n";
  const auto counts = methods::deepreduce::stage_counts(*net);
  for (size_t s = 0; s < counts.size(); ++s)
    std::cout << "  stage " << std::left << std::setw(static_cast<int>(stage_width)) << counts[s].name << std::right
              << std::setw(3) << net->stages()[s].sites.size() << " sites " << std::setw(12)
              << with_commas(counts[s].relus) << " ReLUs, thinned " << std::setw(12) << with_commas(counts[s].thinned)
              << "\n";
  std::cout << "total=" << total << "\n";
  return 0;
}

// DeepReDuce's candidate networks for a config's teacher, before anything trains: ordered by
// the teacher's criticality profile when it exists, else by the model's stage order.
int cmd_deepreduce_frontier(const std::string& config_path, const std::vector<std::string>& sets) {
  const Config config = load_config(config_path, sets);
  if (config.search.teacher.empty()) throw std::runtime_error("deepreduce-frontier: the config names no search.teacher");
  const auto meta = read_checkpoint_meta(config.search.teacher);
  const ModelSpec spec = spec_from_json(meta.state.at("model_spec"));
  const auto stages = methods::deepreduce::stage_counts(spec);
  methods::deepreduce::Profile profile;
  std::vector<size_t> order(stages.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const bool profiled = methods::deepreduce::read_profile(config, &profile);
  if (profiled) {
    order = profile.cull_order();
    std::cout << "criticality profile " << methods::deepreduce::profile_dir(config) << " (linear network "
              << fixed(100.0 * profile.linear_accuracy, 2) << "%):\n";
    for (const auto& s : profile.stages)
      std::cout << "  " << s.name << ": " << fixed(100.0 * s.accuracy, 2) << "% with its " << with_commas(s.relus)
                << " ReLUs, criticality " << util::short_number(s.criticality) << "\n";
  } else {
    std::cout << "no criticality profile yet in " << methods::deepreduce::profile_dir(config)
              << ": culling order below is the model's stage order (a deepreduce run profiles the teacher first)\n";
  }
  int64_t total = 0;
  for (const auto& s : stages) total += s.relus;
  const auto list = methods::deepreduce::candidates(spec, order, methods::deepreduce::options_of(config));
  const int64_t budget = config.search.budget.resolve(total);
  const size_t chosen = methods::deepreduce::choose(list, budget);
  std::cout << std::right << std::setw(4) << "#" << std::setw(12) << "ReLUs" << std::setw(9) << "share"
            << "  network\n";
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& p = list[i];
    std::cout << std::setw(4) << i + 1 << std::setw(12) << with_commas(p.relus) << std::setw(8)
              << fixed(100.0 * static_cast<double>(p.relus) / static_cast<double>(total), 2) << "%  "
              << p.describe(stages) << (i == chosen ? "   <- search.budget " + with_commas(budget) : std::string()) << "\n";
  }
  std::cout << list.size() << " candidates of " << spec.name << " (" << with_commas(total) << " ReLUs)"
            << (profiled ? "" : "; order not yet profiled") << "\n";
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
    std::string checkpoint, data, device = "auto", against;
    int64_t threads = -1;
  };
  auto ea = std::make_shared<EvalArgs>();
  auto* eval = app.add_subcommand("eval", "Report the test accuracy of a checkpoint, overall and per class");
  eval->add_option("--checkpoint", ea->checkpoint, "Checkpoint file (.pt)")->required();
  eval->add_option("--data", ea->data, "Folder of the data set (default: the one in the checkpoint's config)");
  eval->add_option("--device", ea->device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  eval->add_option("--threads", ea->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  eval->add_option("--against", ea->against,
                   "A reference checkpoint (e.g. the teacher) evaluated on the same images: each class's drop");
  out.push_back({eval, [ea] { return cmd_eval(ea->checkpoint, ea->data, ea->device, ea->threads, ea->against); }});

  struct CountArgs {
    std::string model, input = "3x32x32";
    int64_t classes = 10;
    bool no_stem = false;
    double width = 1.0;
    int64_t stem_stride = 1;
  };
  auto ca = std::make_shared<CountArgs>();
  auto* count = app.add_subcommand("count", "List a model's ReLU sites with their shapes, counts and stages, and the total");
  count->add_option("--model", ca->model, util::join(model_names(), " | "))->required();
  count->add_option("--input", ca->input, "Input shape CxHxW (default 3x32x32)");
  count->add_option("--classes", ca->classes, "Number of classes (default 10)");
  count->add_flag("--no-stem-relu", ca->no_stem, "resnet18: no ReLU after the stem convolution");
  count->add_option("--width", ca->width, "resnet18/resnet20/wrn-22-8: channel multiplier (default 1)");
  count->add_option("--stem-stride", ca->stem_stride, "resnet18/resnet20/wrn-22-8: stem stride (default 1)");
  struct FrontierArgs {
    std::string config;
    std::vector<std::string> sets;
  };
  auto fa = std::make_shared<FrontierArgs>();
  auto* frontier = app.add_subcommand(
      "deepreduce-frontier", "List DeepReDuce's candidate networks (cull, thin, reshape) with their ReLU counts for a "
                             "config's teacher, and the one its search.budget picks");
  frontier->add_option("--config,-c", fa->config, "JSON run config naming search.teacher")->required();
  frontier->add_option("--set", fa->sets, "Override a config key: a.b=value (repeatable)");
  out.push_back({frontier, [fa] { return cmd_deepreduce_frontier(fa->config, fa->sets); }});

  out.push_back({count, [ca] {
                   ModelSpec spec;
                   spec.name = ca->model;
                   spec.input_shape = parse_shape(ca->input);
                   spec.classes = ca->classes;
                   spec.stem_relu = !ca->no_stem;
                   spec.width = ca->width;
                   spec.stem_stride = ca->stem_stride;
                   return cmd_count(spec);
                 }});
}

}  // namespace autorep::trainer::app
