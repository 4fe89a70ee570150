#include "trainer/train.h"

#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>

#include "layers/gate.h"
#include "trainer/checkpoint.h"
#include "trainer/distributed.h"
#include "trainer/method.h"
#include "trainer/spike_guard.h"

namespace autorep::trainer {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int64_t configure_threads(int64_t threads) {
  int64_t n = threads > 0 ? threads : static_cast<int64_t>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  torch::set_num_threads(static_cast<int>(n));
  return n;
}

torch::Device resolve_device(const std::string& device) {
  if (device == "cpu") return torch::kCPU;
  if (device == "cuda") {
    if (!torch::cuda::is_available())
      throw std::runtime_error("--device cuda: no CUDA device is available (this LibTorch " +
                               std::string(torch::cuda::is_available() ? "has" : "may lack") + " CUDA support)");
    return torch::kCUDA;
  }
  if (device == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  throw std::runtime_error("device \"" + device + "\": expected auto, cpu or cuda");
}

ModelSpec model_spec(const Config& config, const std::vector<int64_t>& input_shape, int64_t classes) {
  ModelSpec spec;
  spec.name = config.model.name;
  spec.input_shape = input_shape;
  spec.classes = classes;
  spec.stem_relu = config.model.stem_relu;
  return spec;
}

nlohmann::json spec_to_json(const ModelSpec& spec) {
  return {{"arch", spec.name}, {"input_shape", spec.input_shape}, {"classes", spec.classes}, {"stem_relu", spec.stem_relu}};
}

ModelSpec spec_from_json(const nlohmann::json& j) {
  ModelSpec spec;
  spec.name = j.at("arch").get<std::string>();
  spec.input_shape = j.at("input_shape").get<std::vector<int64_t>>();
  spec.classes = j.at("classes").get<int64_t>();
  spec.stem_relu = j.value("stem_relu", true);
  return spec;
}

EvalResult evaluate(NetImpl& model, const DataSplits& data, const Dataset& split, torch::Device device,
                    int64_t batch_size, dist::Group* group) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  EvalResult r;
  double loss_sum = 0.0;
  int64_t correct = 0, nonfinite = 0;
  const int64_t n = split.size();
  // With a process group each process evaluates its contiguous share; the sums are combined.
  const int64_t parts = group ? group->size() : 1, part = group ? group->rank() : 0;
  const int64_t first = n * part / parts, last = n * (part + 1) / parts;
  for (int64_t start = first; start < last; start += batch_size) {
    const int64_t end = std::min(last, start + batch_size);
    auto idx = torch::arange(start, end, torch::kLong);
    auto x = make_batch(data, split, idx, /*train=*/false, 0).to(device);
    auto y = split.labels.slice(0, start, end).to(device);
    auto logits = model.forward(x);
    const auto finite = torch::isfinite(logits).all(1);
    const int64_t bad = finite.numel() - finite.sum().item<int64_t>();
    if (bad > 0) {
      nonfinite += bad;
      logits = logits.index({finite});
      y = y.index({finite});
    }
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    correct += logits.argmax(1).eq(y).sum().item<int64_t>();
  }
  model.train(was_training);
  if (group != nullptr) {
    auto sums = torch::tensor({loss_sum, static_cast<double>(correct), static_cast<double>(nonfinite)}, torch::kDouble);
    group->allreduce_sum(sums);
    loss_sum = sums[0].item<double>();
    correct = static_cast<int64_t>(sums[1].item<double>() + 0.5);
    nonfinite = static_cast<int64_t>(sums[2].item<double>() + 0.5);
  }
  r.samples = n;
  r.nonfinite = nonfinite;
  r.accuracy = n > 0 ? static_cast<double>(correct) / n : 0.0;
  r.loss = n > nonfinite ? loss_sum / (n - nonfinite) : (n > 0 ? std::nan("") : 0.0);
  return r;
}

LoadedModel load_model(const std::string& checkpoint) {
  const CheckpointMeta meta = read_checkpoint_meta(checkpoint);
  LoadedModel out;
  out.config = config_from_json(meta.config, checkpoint + " (its config)");
  out.state = meta.state;
  if (!meta.state.contains("model_spec"))
    throw std::runtime_error(checkpoint + ": checkpoint has no model description");
  const ModelSpec spec = spec_from_json(meta.state.at("model_spec"));
  auto method = make_method(out.config);
  out.model = build_model(spec, method->factory());
  load_checkpoint(checkpoint, *out.model, nullptr);
  out.model->eval();
  return out;
}

namespace {

// Console and log output: a redrawn bar on a terminal, plain periodic lines otherwise.
class Reporter {
 public:
  /// An empty `log_path` writes no log file (the processes of a multi-process run other than rank 0).
  Reporter(const std::string& log_path, bool quiet)
      : quiet_(quiet), tty_(!quiet && ::isatty(STDERR_FILENO)) {
    if (!log_path.empty()) log_.open(log_path, std::ios::app);
  }

  void line(const std::string& text) {
    if (!quiet_) {
      if (bar_shown_) std::cerr << "\r\033[K";
      std::cerr << text << std::endl;
      bar_shown_ = false;
    }
    if (log_.is_open()) log_ << text << std::endl;
  }

  // Shows progress inside an epoch. On a terminal the bar is redrawn at most ~10 times a second;
  // otherwise one line is written every `every` steps (and to the log).
  void step(int64_t epoch, int64_t epochs, int64_t step, int64_t steps, double loss, double samples_per_s,
            double eta_s, const std::string& extra, int64_t every) {
    std::ostringstream s;
    s << "epoch " << epoch + 1 << "/" << epochs << " step " << step << "/" << steps << " loss " << std::fixed
      << std::setprecision(4) << loss << " " << std::setprecision(0) << samples_per_s << " img/s eta "
      << format_seconds(eta_s);
    if (!extra.empty()) s << " " << extra;
    if (tty_) {
      const auto now = Clock::now();
      if (step != steps && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      const int width = 24;
      const int filled = steps > 0 ? static_cast<int>(width * step / steps) : 0;
      std::cerr << "\r\033[K[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << s.str()
                << std::flush;
      bar_shown_ = true;
    } else if (every > 0 && (step % every == 0 || step == steps) && (!quiet_ || log_.is_open())) {
      line(s.str());
    }
  }

  static std::string format_seconds(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    const int64_t t = static_cast<int64_t>(s + 0.5);
    std::ostringstream o;
    if (t >= 3600) o << t / 3600 << "h";
    if (t >= 60) o << std::setw(t >= 3600 ? 2 : 1) << std::setfill('0') << (t % 3600) / 60 << "m";
    o << std::setw(t >= 60 ? 2 : 1) << std::setfill('0') << t % 60 << "s";
    return o.str();
  }

 private:
  std::ofstream log_;
  bool quiet_;
  bool tty_;
  bool bar_shown_ = false;
  Clock::time_point last_draw_{};
};

void append_jsonl(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path, std::ios::app);
  out << j.dump() << "\n";
}

uint64_t batch_seed(uint64_t seed, int64_t epoch, int64_t step) {
  // splitmix64 over the triple: independent augmentation per (seed, epoch, step).
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) * 0xBF58476D1CE4E5B9ull +
               static_cast<uint64_t>(step) * 0x94D049BB133111EBull + 0x2545F4914F6CDD1Dull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<ParamGroup>& groups,
                                                        const OptimOptions& o) {
  std::vector<torch::optim::OptimizerParamGroup> pg;
  for (const auto& g : groups) {
    if (g.params.empty()) continue;
    if (o.name == "sgd") {
      auto opt = std::make_unique<torch::optim::SGDOptions>(g.lr);
      opt->momentum(o.momentum).nesterov(o.nesterov).weight_decay(g.weight_decay);
      pg.emplace_back(g.params, std::move(opt));
    } else {
      auto opt = std::make_unique<torch::optim::AdamOptions>(g.lr);
      opt->betas({o.beta1, o.beta2}).weight_decay(g.weight_decay);
      pg.emplace_back(g.params, std::move(opt));
    }
  }
  TORCH_CHECK(!pg.empty(), "no trainable parameters");
  if (o.name == "sgd")
    return std::make_unique<torch::optim::SGD>(pg, torch::optim::SGDOptions(o.lr).momentum(o.momentum).nesterov(o.nesterov));
  return std::make_unique<torch::optim::Adam>(pg, torch::optim::AdamOptions(o.lr));
}

// Learning-rate factor of a phase at a step: linear warm-up, then cosine (to min_lr/lr) or constant.
double lr_factor(const OptimOptions& o, int64_t step, int64_t total_steps, int64_t steps_per_epoch) {
  const double warm = o.warmup_epochs * steps_per_epoch;
  if (warm > 0 && step < warm) return (step + 1) / warm;
  if (o.schedule == "constant") return 1.0;
  const double span = std::max(1.0, total_steps - warm);
  const double t = std::min(1.0, (step - warm) / span);
  const double floor = o.min_lr / o.lr;
  return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * t));
}

// Rank 0's parameters and buffers on every process, so all start from the same model.
void broadcast_model(NetImpl& model, dist::Group& group) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) group.broadcast(p, 0);
  for (auto& b : model.buffers()) group.broadcast(b, 0);
}

// Batch norm normalises each process's share of the batch with that share's statistics, so the
// running estimates drift apart; their mean is what one process would have estimated.
void average_batch_norm_stats(NetImpl& model, dist::Group& group) {
  std::vector<torch::Tensor> stats;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(m.get())) {
      stats.push_back(bn->running_mean);
      stats.push_back(bn->running_var);
    } else if (auto* bn1 = dynamic_cast<torch::nn::BatchNorm1dImpl*>(m.get())) {
      stats.push_back(bn1->running_mean);
      stats.push_back(bn1->running_var);
    }
  }
  if (stats.empty()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> flat;
  for (const auto& t : stats) flat.push_back(t.reshape({-1}).to(torch::kDouble));
  auto packed = torch::cat(flat);
  group.allreduce_sum(packed);
  packed.div_(static_cast<double>(group.size()));
  int64_t at = 0;
  for (auto& t : stats) {
    t.copy_(packed.slice(0, at, at + t.numel()).view(t.sizes()));
    at += t.numel();
  }
}

// Every process must hold the same masks (they follow from the same all-reduced aux gradients);
// a difference means the processes no longer train one model, and the run stops.
void check_masks_agree(NetImpl& model, dist::Group& group, int64_t epoch) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a over every mask's values, in module order
  for (const auto& kv : model.named_buffers()) {
    const auto& name = kv.key();
    if (name.size() < 4 || name.compare(name.size() - 4, 4, "mask") != 0) continue;
    const auto t = kv.value().to(torch::kCPU, torch::kFloat).contiguous();
    const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
    for (int64_t i = 0; i < t.numel() * 4; ++i) h = (h ^ bytes[i]) * 0x100000001B3ull;
  }
  // Two 32-bit halves (exact in float64) and their negations: one MAX gives max and min.
  const double hi = static_cast<double>(h >> 32), lo = static_cast<double>(h & 0xFFFFFFFFull);
  auto v = torch::tensor({hi, lo, -hi, -lo}, torch::kDouble);
  group.allreduce_max(v);
  if (v[0].item<double>() != -v[2].item<double>() || v[1].item<double>() != -v[3].item<double>())
    throw std::runtime_error("after epoch " + std::to_string(epoch + 1) + " the " + std::to_string(group.size()) +
                             " processes hold different masks (mask checksum differs across ranks); "
                             "the run is stopped");
}

const Phase& phase_of(const std::vector<Phase>& phases, int64_t epoch, size_t* index) {
  for (size_t i = 0; i < phases.size(); ++i) {
    if (epoch >= phases[i].first_epoch && epoch < phases[i].first_epoch + phases[i].epochs) {
      *index = i;
      return phases[i];
    }
  }
  TORCH_INTERNAL_ASSERT(false, "epoch ", epoch, " belongs to no phase");
}

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

// Each loss part's mean per sample over the epoch, from its sums.
nlohmann::json epoch_means(const nlohmann::json& sums, int64_t seen) {
  nlohmann::json means = nlohmann::json::object();
  for (const auto& [name, sum] : sums.items()) means[name] = sum.get<double>() / static_cast<double>(std::max<int64_t>(1, seen));
  return means;
}

}  // namespace

RunResult run_training(const Config& config, const RunOptions& options) {
  const auto t_start = Clock::now();
  TORCH_CHECK(!options.out_dir.empty(), "no output directory given");
  const fs::path out(options.out_dir);
  const std::string last_path = (out / "checkpoints" / "last.pt").string();
  const std::string best_path = (out / "checkpoints" / "best.pt").string();
  const std::string metrics_path = (out / "metrics.jsonl").string();
  // In a multi-process run every process trains; only rank 0 writes files and prints.
  dist::Group* const group = dist::current();
  const bool primary = dist::is_primary();
  const int64_t world = group ? group->size() : 1, rank = group ? group->rank() : 0;

  nlohmann::json state;
  if (options.resume) {
    if (!fs::exists(last_path))
      throw std::runtime_error(last_path + ": nothing to resume (no checkpoint in " + options.out_dir + ")");
    CheckpointMeta meta = read_checkpoint_meta(last_path);
    // Resuming with a different config would silently change the run; only how it runs may differ.
    const nlohmann::json saved = comparable_config(meta.config, last_path), now = comparable_config(to_json(config));
    if (saved != now) {
      const auto diff = nlohmann::json::diff(saved, now);
      throw std::runtime_error("--resume: the config differs from the one the run in " + options.out_dir +
                               " was started with (first difference at " +
                               diff.at(0).value("path", std::string("?")) + ")");
    }
    state = meta.state;
  } else if (fs::exists(last_path)) {
    throw std::runtime_error(options.out_dir + " already holds a run (checkpoints/last.pt); pass --resume to continue it "
                             "or choose another --out");
  }
  if (primary) {
    fs::create_directories(out / "checkpoints");
    write_file_atomic((out / "config.json").string(), to_json(config).dump(2) + "\n");
  }
  if (group && config.data.batch_size % world != 0)
    throw std::runtime_error("data.batch_size " + std::to_string(config.data.batch_size) +
                             " is the global batch and must be divisible by WORLD_SIZE " + std::to_string(world));
  dist::barrier();  // every process has seen the folder as it was before this run

  Reporter report(primary ? (out / "log.txt").string() : std::string(), options.quiet || !primary);
  // Processes sharing a machine share its cores.
  int64_t thread_request = config.train.threads;
  if (group && thread_request == 0)
    thread_request = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / group->local_size());
  const int64_t threads = configure_threads(thread_request);
  torch::Device device = resolve_device(config.train.device);
  if (group && device.is_cuda()) device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(group->local_rank()));
  torch::manual_seed(config.train.seed);
  // Gates combine their batch statistics across processes (see layers::set_moment_reducer).
  struct MomentReducerScope {
    explicit MomentReducerScope(dist::Group* g) {
      if (g) layers::set_moment_reducer([g](torch::Tensor& t) { g->allreduce_sum(t); });
    }
    ~MomentReducerScope() { layers::set_moment_reducer(nullptr); }
  } moment_scope(group);

  const auto t_data = Clock::now();
  DataSplits data = load_dataset(config.data);
  report.line("data: " + data.name + " train " + std::to_string(data.train.size()) + " test " +
              std::to_string(data.test.size()) + " (" +
              std::to_string(std::chrono::duration<double>(Clock::now() - t_data).count()).substr(0, 4) + " s)");

  auto method = make_method(config);
  const ModelSpec spec = model_spec(config, data.input_shape, data.classes);
  TrainContext ctx;
  ctx.config = &config;
  ctx.model = build_model(spec, method->factory());
  ctx.model->to(device);
  ctx.device = device;
  ctx.data = &data;
  ctx.out_dir = options.out_dir;
  ctx.log = [&report](const std::string& s) { report.line(s); };
  const int64_t B = config.data.batch_size;  // the global batch: B / world samples per process
  const int64_t local_B = B / world;
  // Incomplete last batches are dropped: batch norm needs more than one sample, and equal batches
  // keep the loss trajectory independent of where a run was resumed.
  ctx.steps_per_epoch = data.train.size() / B;
  if (ctx.steps_per_epoch == 0)
    throw std::runtime_error("data.batch_size " + std::to_string(B) + " exceeds the training set (" +
                             std::to_string(data.train.size()) + " samples)");

  method->prepare(ctx, options.resume);
  const std::vector<Phase> phases = method->phases();

  int64_t epoch = 0, step_in_epoch = 0;
  double loss_sum = 0.0, best_acc = -1.0;
  int64_t correct = 0, seen = 0;
  nlohmann::json part_sums = nlohmann::json::object();  // each loss part summed over this epoch's samples
  int64_t skipped_steps = 0;  // loss spikes skipped this epoch
  SpikeGuard guard(config.train.skip_spikes);
  std::string saved_phase;
  double elapsed_before = 0.0;
  if (options.resume) {
    load_checkpoint(last_path, *ctx.model, nullptr);
    epoch = state.at("epoch");
    step_in_epoch = state.at("step_in_epoch");
    ctx.global_step = state.at("global_step");
    ctx.phase_step = state.at("phase_step");
    loss_sum = state.at("loss_sum");
    skipped_steps = state.value("skipped_steps", int64_t{0});
    if (state.contains("spike_guard")) guard.load_state(state.at("spike_guard"));
    part_sums = state.value("loss_part_sums", nlohmann::json::object());
    correct = state.at("correct");
    seen = state.at("seen");
    best_acc = state.at("best_accuracy");
    saved_phase = state.at("phase");
    elapsed_before = state.value("seconds", 0.0);
    method->load_state(state.at("method"));
    report.line("resumed " + options.out_dir + " at epoch " + std::to_string(epoch + 1) + " step " +
                std::to_string(step_in_epoch));
  }
  const int64_t epochs = config.train.epochs;
  if (group) {
    broadcast_model(*ctx.model, *group);
    report.line("distributed: " + std::to_string(world) + " processes (" + group->backend() + "), " +
                std::to_string(local_B) + " samples of every batch of " + std::to_string(B) + " per process");
  }
  report.line("train: " + config.method + " " + spec.name + " on " + data.name + ", " + std::to_string(epochs) +
              " epochs x " + std::to_string(ctx.steps_per_epoch) + " steps, batch " + std::to_string(B) + ", " +
              std::to_string(threads) + " threads, " + device.str() + ", ReLUs " +
              std::to_string(layers::kept_relus(ctx.model->sites())) + "/" +
              std::to_string(layers::total_relus(ctx.model->sites())) + ", out " + options.out_dir);

  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::vector<double> base_lrs;
  size_t current_phase = phases.size();
  auto make_state = [&](const std::string& phase_name) {
    nlohmann::json s = {{"epoch", epoch},
                        {"step_in_epoch", step_in_epoch},
                        {"global_step", ctx.global_step},
                        {"phase_step", ctx.phase_step},
                        {"phase", phase_name},
                        {"loss_sum", loss_sum},
                        {"loss_part_sums", part_sums},
                        {"skipped_steps", skipped_steps},
                        {"spike_guard", guard.state()},
                        {"correct", correct},
                        {"seen", seen},
                        {"best_accuracy", best_acc},
                        {"seconds", elapsed_before + std::chrono::duration<double>(Clock::now() - t_start).count()},
                        {"method", method->state()},
                        {"model_spec", spec_to_json(spec)}};
    return s;
  };
  auto save_last = [&](const std::string& phase_name) {
    if (!primary) return;
    save_checkpoint(last_path, *ctx.model, optimizer.get(), {to_json(config), make_state(phase_name)});
  };

  RunResult result;
  result.out_dir = options.out_dir;
  int64_t steps_this_process = 0;
  auto last_checkpoint = Clock::now();
  bool resumed_inside_phase = options.resume;
  double last_acc = 0.0;
  std::unique_ptr<dist::GradientSync> grad_sync;
  auto append_metrics = [&](const nlohmann::json& j) {
    if (primary) append_jsonl(metrics_path, j);
  };

  BatchNormSnapshot batch_norm_stats(*ctx.model);
  for (; epoch < epochs; ++epoch) {
    size_t pi = 0;
    const Phase& phase = phase_of(phases, epoch, &pi);
    ctx.epoch = epoch;
    if (pi != current_phase) {
      const bool continuing = resumed_inside_phase && saved_phase == phase.name;
      if (!continuing) {
        ctx.phase_step = 0;
        guard.reset_mean();
        method->on_phase_begin(ctx, phase);
      }
      const auto groups = method->param_groups(ctx, phase);
      optimizer = make_optimizer(groups, phase.optim);
      base_lrs.clear();
      for (const auto& g : groups)
        if (!g.params.empty()) base_lrs.push_back(g.lr);
      if (continuing && checkpoint_has_optimizer(last_path)) load_checkpoint(last_path, *ctx.model, optimizer.get());
      ctx.optimizer = optimizer.get();
      current_phase = pi;
      if (group) {
        grad_sync.reset();
        std::vector<torch::Tensor> trainable;
        for (auto& p : ctx.model->parameters())
          if (p.requires_grad()) trainable.push_back(p);
        grad_sync = std::make_unique<dist::GradientSync>(*group, trainable);
      }
      if (!continuing || step_in_epoch == 0)
        report.line("phase " + phase.name + ": epochs " + std::to_string(phase.first_epoch + 1) + "-" +
                    std::to_string(phase.first_epoch + phase.epochs) + ", " + phase.optim.name + " lr " +
                    std::to_string(phase.optim.lr));
    }
    resumed_inside_phase = false;
    const int64_t phase_steps = phase.epochs * ctx.steps_per_epoch;
    const auto order = epoch_order(data.train.size(), config.train.seed, epoch);
    const auto t_epoch = Clock::now();
    const int64_t first_step = step_in_epoch;
    ctx.model->train();
    for (; step_in_epoch < ctx.steps_per_epoch; ++step_in_epoch) {
      const int64_t first = step_in_epoch * B + rank * local_B;
      auto idx = order.slice(0, first, first + local_B);
      auto x = make_batch(data, data.train, idx, /*train=*/true, batch_seed(config.train.seed, epoch, step_in_epoch),
                          rank * local_B)
                   .to(device);
      auto y = data.train.labels.index_select(0, idx).to(device);
      const double f = lr_factor(phase.optim, ctx.phase_step, phase_steps, ctx.steps_per_epoch);
      auto& groups = optimizer->param_groups();
      for (size_t g = 0; g < groups.size(); ++g) groups[g].options().set_lr(base_lrs[g] * f);

      if (guard.enabled()) batch_norm_stats.save();
      auto logits = ctx.model->forward(x);
      LossOutput lo = method->loss(ctx, x, y, logits);
      if (steps_this_process == options.spike_at_step) lo.loss = lo.loss * 1e6;
      optimizer->zero_grad();
      // Loss and correct predictions of the whole global batch (summed over processes).
      // Then each loss part, weighted the same way.
      std::vector<torch::Tensor> stats = {lo.loss.detach().to(torch::kDouble) * static_cast<double>(y.size(0)),
                                          logits.detach().argmax(1).eq(y).sum().to(torch::kDouble)};
      for (const auto& part : lo.parts)
        stats.push_back(part.second.detach().to(device, torch::kDouble).reshape({}) * static_cast<double>(y.size(0)));
      auto batch_stats = torch::stack(stats).cpu();
      std::unique_ptr<dist::Pending> stats_work;
      if (group) {
        stats_work = group->allreduce_sum_async(batch_stats);
        grad_sync->begin();
      }
      lo.loss.backward();
      if (group) {
        grad_sync->finish();
        stats_work->wait();
      }
      const double l = batch_stats[0].item<double>() / static_cast<double>(B);
      const bool skipped = guard.skip(l);
      if (guard.diverged() || (!guard.enabled() && !std::isfinite(l)))
        throw std::runtime_error("training diverged: loss is " + std::to_string(l) + " at epoch " +
                                 std::to_string(epoch + 1) + " step " + std::to_string(step_in_epoch + 1) +
                                 (guard.enabled() ? ", the " + std::to_string(guard.consecutive()) +
                                                        "th loss spike in a row (train.skip_spikes)"
                                                  : std::string()) +
                                 " (try a lower optim.lr)");
      // The batch counts either way (the lr schedule and the data order go on); a skipped one
      // leaves no update.
      ++ctx.global_step;
      ++ctx.phase_step;
      ++steps_this_process;
      if (skipped) {
        batch_norm_stats.restore();
        ++skipped_steps;
        report.line("epoch " + std::to_string(epoch + 1) + " step " + std::to_string(step_in_epoch + 1) +
                    ": loss " + format_number(l) + " against a running mean of " + format_number(guard.mean()) +
                    ": step skipped, batch-norm statistics restored (train.skip_spikes " +
                    format_number(config.train.skip_spikes) + ")");
      } else {
        if (phase.optim.grad_clip > 0) torch::nn::utils::clip_grad_norm_(ctx.model->parameters(), phase.optim.grad_clip);
        optimizer->step();
        method->after_step(ctx);
        loss_sum += l * B;
        for (size_t i = 0; i < lo.parts.size(); ++i) {
          auto& sum = part_sums[lo.parts[i].first];
          sum = (sum.is_null() ? 0.0 : sum.get<double>()) + batch_stats[2 + i].item<double>();
        }
        correct += static_cast<int64_t>(batch_stats[1].item<double>() + 0.5);
        seen += B;
      }

      const double secs = std::chrono::duration<double>(Clock::now() - t_epoch).count();
      const int64_t done = step_in_epoch + 1 - first_step;
      const double per_step = secs / std::max<int64_t>(1, done);
      const double eta = per_step * ((ctx.steps_per_epoch - step_in_epoch - 1) +
                                     (epochs - epoch - 1) * ctx.steps_per_epoch);
      report.step(epoch, epochs, step_in_epoch + 1, ctx.steps_per_epoch, loss_sum / std::max<int64_t>(1, seen),
                  done * B / std::max(1e-9, secs), eta, method->progress(ctx), config.train.log_every);

      if (options.stop_after_steps >= 0 && steps_this_process >= options.stop_after_steps) {
        ++step_in_epoch;
        save_last(phase.name);
        report.line("stopped after " + std::to_string(steps_this_process) + " steps (checkpoint saved)");
        result.completed = false;
        return result;
      }
      if (config.train.checkpoint_interval_s > 0 &&
          std::chrono::duration<double>(Clock::now() - last_checkpoint).count() >= config.train.checkpoint_interval_s &&
          step_in_epoch + 1 < ctx.steps_per_epoch) {
        ++step_in_epoch;
        save_last(phase.name);
        --step_in_epoch;
        last_checkpoint = Clock::now();
      }
    }

    // End of epoch: evaluate, record, checkpoint.
    const double epoch_secs = std::chrono::duration<double>(Clock::now() - t_epoch).count();
    nlohmann::json m = {{"type", "epoch"},
                        {"epoch", epoch + 1},
                        {"phase", phase.name},
                        {"train_loss", loss_sum / std::max<int64_t>(1, seen)},
                        {"train_accuracy", static_cast<double>(correct) / std::max<int64_t>(1, seen)},
                        {"loss_parts", epoch_means(part_sums, seen)},
                        {"skipped_steps", skipped_steps},
                        {"lr", optimizer->param_groups()[0].options().get_lr()},
                        {"seconds", epoch_secs},
                        {"kept_relus", layers::kept_relus(ctx.model->sites())},
                        {"total_relus", layers::total_relus(ctx.model->sites())}};
    if (group) {
      average_batch_norm_stats(*ctx.model, *group);
      check_masks_agree(*ctx.model, *group, epoch);
    }
    method->on_epoch_end(ctx, m);
    append_metrics(m);
    const bool last_epoch = epoch + 1 == epochs;
    const bool do_eval = last_epoch || (config.train.eval_every > 0 && (epoch + 1) % config.train.eval_every == 0);
    std::ostringstream line;
    line << "epoch " << epoch + 1 << "/" << epochs << " [" << phase.name << "] train loss " << std::fixed
         << std::setprecision(4) << m["train_loss"].get<double>() << " acc " << std::setprecision(2)
         << 100.0 * m["train_accuracy"].get<double>() << "%";
    bool improved = false;
    if (do_eval) {
      const EvalResult ev = evaluate(*ctx.model, data, data.test, device, config.data.eval_batch_size, group);
      last_acc = ev.accuracy;
      append_metrics({{"type", "eval"},
                                  {"epoch", epoch + 1},
                                  {"phase", phase.name},
                                  {"test_accuracy", ev.accuracy},
                                  {"test_loss", ev.loss},
                                  {"test_nonfinite", ev.nonfinite},
                                  {"kept_relus", m["kept_relus"]}});
      line << " | test loss " << std::setprecision(4) << ev.loss << " acc " << std::setprecision(2)
           << 100.0 * ev.accuracy << "%";
      if (ev.nonfinite > 0) line << " (" << ev.nonfinite << " with non-finite logits, counted wrong)";
      if (method->may_be_best(ctx, phase) && ev.accuracy > best_acc) {
        best_acc = ev.accuracy;
        improved = true;
      }
    }
    line << " | ReLUs " << m["kept_relus"].get<int64_t>() << " | " << std::setprecision(1) << epoch_secs << " s";
    report.line(line.str());

    ++epoch;
    step_in_epoch = 0;
    loss_sum = 0.0;
    part_sums = nlohmann::json::object();
    skipped_steps = 0;
    correct = 0;
    seen = 0;
    const CheckpointMeta meta{to_json(config), make_state(phase.name)};
    if (primary) {
      if (improved) save_checkpoint(best_path, *ctx.model, nullptr, meta);
      save_checkpoint(last_path, *ctx.model, optimizer.get(), meta);
    }
    last_checkpoint = Clock::now();
    --epoch;
  }

  result.completed = true;
  result.best_accuracy = best_acc;
  result.final_accuracy = last_acc;
  result.kept_relus = layers::kept_relus(ctx.model->sites());
  result.total_relus = layers::total_relus(ctx.model->sites());
  grad_sync.reset();
  // The other processes wait until rank 0's files (checkpoints, export) are complete.
  if (primary) result.summary = method->finish(ctx, best_path);
  dist::barrier();
  result.seconds = elapsed_before + std::chrono::duration<double>(Clock::now() - t_start).count();
  std::ostringstream done;
  done << "done: best test accuracy " << std::fixed << std::setprecision(2) << 100.0 * best_acc << "%, ReLUs "
       << result.kept_relus << "/" << result.total_relus << ", " << std::setprecision(0) << result.seconds
       << " s; checkpoints in " << (out / "checkpoints").string();
  report.line(done.str());
  return result;
}

nlohmann::json run_result_json(const Config& config, const RunResult& r) {
  if (config.method == "baseline") {
    return {{"method", "baseline"},
            {"accuracy", r.best_accuracy},
            {"final_accuracy", r.final_accuracy},
            {"relu_count", r.kept_relus},
            {"total_relus", r.total_relus},
            {"seconds", r.seconds},
            {"checkpoint", "checkpoints/best.pt"}};
  }
  const nlohmann::json& s = r.summary;
  std::string export_path;
  if (s.is_object() && s.contains("path") && s["path"].is_string())
    export_path = fs::path(s["path"].get<std::string>()).lexically_relative(r.out_dir).string();
  const int64_t relus =
      s.is_object() && s.contains("kept") && s["kept"].is_number_integer() ? s["kept"].get<int64_t>() : r.kept_relus;
  const double accuracy = s.is_object() && s.contains("accuracy") && s["accuracy"].is_number()
                              ? s["accuracy"].get<double>()
                              : (r.best_accuracy >= 0 ? r.best_accuracy : r.final_accuracy);
  return {{"method", config.method},
          {"budget", config.search.budget},
          {"relu_count", relus},
          {"total_relus", r.total_relus},
          {"accuracy", accuracy},
          {"best_accuracy", r.best_accuracy},
          {"final_accuracy", r.final_accuracy},
          {"seconds", r.seconds},
          {"export_path", export_path}};
}

nlohmann::json write_run_result(const Config& config, const RunResult& r) {
  nlohmann::json j = run_result_json(config, r);
  if (dist::is_primary()) write_file_atomic((fs::path(r.out_dir) / "result.json").string(), j.dump(2) + "\n");
  return j;
}

}  // namespace autorep::trainer
