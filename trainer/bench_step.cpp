#include "trainer/bench_step.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <iomanip>

#include "layers/gate.h"
#include "search/objective.h"
#include "trainer/config.h"
#include "trainer/models.h"
#include "trainer/reduction.h"
#include "trainer/train.h"

namespace autorep::trainer {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

int run_step_bench(const StepBenchOptions& o, std::ostream& out) {
  const torch::Device device = resolve_device(o.device);
  torch::manual_seed(0);
  const ModelSpec spec{o.model, o.input, o.classes, true};
  const Config defaults;

  Net baseline = build_model(spec, layers::relu_factory());
  Net teacher = build_model(spec, layers::relu_factory());
  Net student = build_model(spec, layers::gate_factory(gate_options(defaults.gate)));
  for (auto* m : {&baseline, &teacher, &student}) (*m)->to(device);
  teacher->eval();
  teacher = kd_teacher(teacher, o.teacher_dtype, device);
  baseline->train();
  student->train();

  torch::optim::SGD sgd(baseline->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(5e-4));
  std::vector<torch::Tensor> aux = layers::aux_parameters(*student);
  std::vector<torch::Tensor> coeffs = layers::coefficient_parameters(*student);
  std::vector<torch::Tensor> weights = weight_parameters(*student);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(weights, std::make_unique<torch::optim::AdamOptions>(1e-3));
  groups.emplace_back(aux, std::make_unique<torch::optim::AdamOptions>(1e-3));
  groups.emplace_back(coeffs, std::make_unique<torch::optim::AdamOptions>(1e-3));
  torch::optim::Adam adam(groups, torch::optim::AdamOptions(1e-3));
  const auto gates = layers::gates(*student);
  const double rho_target = 0.03;

  auto x = torch::randn({o.batch, o.input[0], o.input[1], o.input[2]}, device);
  auto y = torch::randint(0, o.classes, {o.batch}, torch::TensorOptions().dtype(torch::kLong).device(device));

  auto baseline_step = [&] {
    auto loss = torch::nn::functional::cross_entropy(baseline->forward(x), y);
    sgd.zero_grad();
    loss.backward();
    sgd.step();
  };
  auto search_step = [&] {
    auto logits = student->forward(x);
    layers::reset_optimizer_state(adam, layers::refitted_coefficients(*student));
    const torch::Tensor t = teacher_logits(*teacher, x);
    auto loss = torch::nn::functional::cross_entropy(logits, y) + search::kd_loss(logits, t, 4.0) +
                search::budget_penalty(search::relu_density(gates), rho_target, 120.0);
    adam.zero_grad();
    loss.backward();
    adam.step();
    layers::hysteresis_update(*student);
  };

  using Clock = std::chrono::steady_clock;
  std::vector<double> tb, ts;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    for (int which = 0; which < 2; ++which) {
      sync(device);
      const auto t0 = Clock::now();
      which == 0 ? baseline_step() : search_step();
      sync(device);
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (i >= o.warmup) (which == 0 ? tb : ts).push_back(ms);
    }
  }
  const double b = median(tb), s = median(ts);
  out << "bench step: " << o.model << " input " << o.input[0] << "x" << o.input[1] << "x" << o.input[2] << " batch "
      << o.batch << " on " << device.str() << ", " << torch::get_num_threads() << " threads, teacher "
      << o.teacher_dtype << ", median of " << o.iters << "\n";
  out << std::fixed << std::setprecision(1) << "  baseline step (fwd+bwd+SGD):                       " << b << " ms\n"
      << "  search step (gated fwd+bwd, teacher fwd, KD, penalty, Adam, hysteresis): " << s << " ms\n";
  out << std::setprecision(3) << "search_over_baseline=" << s / b << "\n";
  return 0;
}

}  // namespace autorep::trainer
