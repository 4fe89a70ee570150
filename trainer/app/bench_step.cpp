#include "trainer/app/bench_step.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <unistd.h>

#include "layers/gate.h"
#include "search/objective.h"
#include "trainer/engine/config.h"
#include "trainer/models/net.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/device.h"
#include "trainer/engine/optim.h"
#include "trainer/engine/spike_guard.h"
#include "trainer/engine/step.h"
#include "trainer/engine/loop.h"

#include "trainer/app/common.h"

namespace autorep::trainer::app {

namespace {

namespace fs = std::filesystem;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

// A step as `autorep train` takes it for `config`'s method: the method's hooks, loss, optimiser
// settings, gradient clipping and spike guard (engine::train_step).
class MethodStep {
 public:
  MethodStep(const Config& config, const ModelSpec& spec, const torch::Device& device)
      : config_(config), method_(make_method(config_)), guard_(config_.train.skip_spikes) {
    ctx_.config = &config_;
    ctx_.model = build_model(spec, method_->factory());
    ctx_.model->to(device);
    ctx_.device = device;
    ctx_.steps_per_epoch = 1;
    ctx_.log = [](const std::string&) {};
    method_->prepare(ctx_, /*resuming=*/false);
    phase_ = method_->phases().front();
    method_->begin_phase(ctx_, phase_, /*resumed=*/false);
    optimizer_ = make_optimizer(method_->param_groups(ctx_, phase_), phase_.optim);
    ctx_.optimizer = optimizer_.get();
    running_stats_ = std::make_unique<StepSnapshot>(*ctx_.model);
    ctx_.model->train();
  }
  models::NetImpl& model() { return *ctx_.model; }
  /// Every 4-d parameter (the convolutions' weights) in channels_last memory.
  void to_channels_last() { engine::set_memory_format(*ctx_.model, true); }
  const Phase& phase() const { return phase_; }
  void step(const torch::Tensor& x, const torch::Tensor& y) {
    const StepEnv env{&ctx_, method_.get(), &guard_, running_stats_.get(), x.size(0), nullptr, nullptr};
    train_step(env, phase_, x, y, 0);
  }

 private:
  Config config_;
  std::unique_ptr<Method> method_;
  TrainContext ctx_;
  Phase phase_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  SpikeGuard guard_;
  std::unique_ptr<StepSnapshot> running_stats_;
};

}  // namespace

int run_step_bench(const StepBenchOptions& o, std::ostream& out) {
  const torch::Device device = resolve_device(o.device);
  torch::manual_seed(0);
  const ModelSpec spec{o.model, o.input, o.classes, true};

  Config base;  // the shipped defaults of every key
  base.method = "baseline";
  base.model.name = o.model;
  base.train.device = o.device;
  MethodStep baseline(base, spec, device);
  // The channels_last path starts from the same weights (same seed).
  std::unique_ptr<MethodStep> channels_last;
  if (o.conv_paths) {
    TORCH_CHECK(!device.is_cuda(), "bench step: --conv-paths compares CPU convolution paths (use --device cpu)");
    torch::manual_seed(0);
    channels_last = std::make_unique<MethodStep>(base, spec, device);
    channels_last->to_channels_last();
  }

  // The reduction run distils from a baseline checkpoint: this one is the baseline model itself.
  const fs::path dir = fs::temp_directory_path() / ("autorep-bench-step-" + std::to_string(::getpid()));
  const std::string teacher_path = (dir / "teacher.pt").string();
  save_checkpoint(teacher_path, baseline.model(), nullptr, {to_json(base), {{"model_spec", spec_to_json(spec)}}});
  Config red = base;
  red.method = "autorep";
  red.search.teacher = teacher_path;
  red.search.kd.teacher_dtype = o.teacher_dtype;
  std::unique_ptr<MethodStep> search;
  try {
    search = std::make_unique<MethodStep>(red, spec, device);
  } catch (...) {
    fs::remove_all(dir);
    throw;
  }
  fs::remove_all(dir);

  auto x = torch::randn({o.batch, o.input[0], o.input[1], o.input[2]}, device);
  auto y = torch::randint(0, o.classes, {o.batch}, torch::TensorOptions().dtype(torch::kLong).device(device));
  // The batch in channels_last memory only when that path is timed.
  const auto x_cl = o.conv_paths ? x.contiguous(at::MemoryFormat::ChannelsLast) : torch::Tensor();
  // Logits of both paths from the same weights, before any step changes them.
  double diff_cl = 0;
  if (o.conv_paths) {
    torch::NoGradGuard no_grad;
    diff_cl = (channels_last->model().forward(x_cl) - baseline.model().forward(x)).abs().max().item<double>();
  }
  std::vector<std::function<void()>> steps{[&] { baseline.step(x, y); }, [&] { search->step(x, y); }};
  if (o.conv_paths) steps.push_back([&] { channels_last->step(x_cl, y); });

  using Clock = std::chrono::steady_clock;
  std::vector<std::vector<double>> times(steps.size());
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    for (size_t which = 0; which < steps.size(); ++which) {
      sync(device);
      const auto t0 = Clock::now();
      steps[which]();
      sync(device);
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (i >= o.warmup) times[which].push_back(ms);
    }
  }
  const double b = median(times[0]), s = median(times[1]);
  out << "bench step: " << o.model << " input " << o.input[0] << "x" << o.input[1] << "x" << o.input[2] << " batch "
      << o.batch << " on " << device.str() << ", " << torch::get_num_threads() << " threads, teacher "
      << o.teacher_dtype << ", median of " << o.iters << "\n";
  out << std::fixed << std::setprecision(1) << "  baseline step (method baseline, " << baseline.phase().optim.name
      << "):  " << b << " ms\n"
      << "  search step (method autorep, " << search->phase().optim.name
      << ", the step autorep train takes): " << s << " ms\n";
  out << std::setprecision(0) << "throughput: baseline " << 1e3 * static_cast<double>(o.batch) / b
      << " images/s, search " << 1e3 * static_cast<double>(o.batch) / s << " images/s\n";
  if (o.conv_paths) {
    const double cl = median(times[2]);
    out << std::setprecision(1) << "  baseline step, channels_last weights and batch (oneDNN "
        << (at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() ? "on" : "off") << "): " << cl
        << " ms (logits differ by at most " << std::scientific << std::setprecision(1) << diff_cl << std::fixed
        << ")\n";
    out << std::setprecision(3) << "channels_last_over_default=" << cl / b << "\n";
  }
  out << std::setprecision(3) << "search_over_baseline=" << s / b << "\n";
  return 0;
}

}  // namespace autorep::trainer::app
