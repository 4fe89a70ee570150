#include "trainer/engine/optim.h"

#include <torch/torch.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "trainer/engine/optim_kernels.h"

namespace autorep::trainer::engine {

namespace {

// Optimiser state is keyed by the TensorImpl address: a string in LibTorch 1.x, a void* in 2.x.
template <typename Map>
typename Map::key_type state_key(const Map&, const torch::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    return c10::guts::to_string(p.unsafeGetTensorImpl());
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

// torch::optim::Adam with the per-parameter update as one pass on the CPU: LibTorch 1.13 makes
// eight or nine ATen calls per parameter and step (and allocates three temporaries), which for
// the many small tensors of a gated model (aux, coefficients, batch-norm affines) cost more than
// the arithmetic. Same options, same state (AdamParamState, same keys), so checkpoints written
// by either load into the other; amsgrad, sparse gradients and non-CPU or non-contiguous
// tensors take LibTorch's own update.
class CpuFusedAdam : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;

  torch::Tensor step(LossClosure closure = nullptr) override {
    if (!all_fusable()) return torch::optim::Adam::step(std::move(closure));
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure != nullptr) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (auto& group : param_groups_) {
      const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
      // Not a structured binding: C++17 lambdas (the dispatch below) cannot capture those.
      const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        const auto key = state_key(state_, p);
        auto it = state_.find(key);
        if (it == state_.end()) {
          auto s = std::make_unique<torch::optim::AdamParamState>();
          s->step(0);
          s->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
          s->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
          it = state_.emplace(key, std::move(s)).first;
        }
        auto& s = static_cast<torch::optim::AdamParamState&>(*it->second);
        s.step(s.step() + 1);
        const double bc1 = 1 - std::pow(beta1, s.step()), bc2 = 1 - std::pow(beta2, s.step());
        const torch::Tensor grad = p.grad();
        // The loop walks the four tensors' memory in step: state loaded from a checkpoint may
        // come in another layout than the parameter's.
        if (s.exp_avg().strides() != p.strides()) s.exp_avg(laid_out_like(p, s.exp_avg()));
        if (s.exp_avg_sq().strides() != p.strides()) s.exp_avg_sq(laid_out_like(p, s.exp_avg_sq()));
        AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "adam_update", [&] {
          kernels::adam_update(p.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), s.exp_avg().data_ptr<scalar_t>(),
                               s.exp_avg_sq().data_ptr<scalar_t>(), p.numel(), beta1, beta2, o.weight_decay(),
                               std::sqrt(bc2), o.eps(), o.lr() / bc1);
        });
        // Written through raw pointers: bump the version counters as in-place ATen calls do.
        for (const auto* t : {&p, &s.exp_avg(), &s.exp_avg_sq()}) t->unsafeGetTensorImpl()->bump_version();
      }
    }
    return loss;
  }

 private:
  static torch::Tensor laid_out_like(const torch::Tensor& p, const torch::Tensor& t) {
    return torch::empty_like(p, torch::MemoryFormat::Preserve).copy_(t);
  }

  // Every parameter with a gradient: float32/float64 on the CPU, dense (contiguous in some
  // order, e.g. channels_last) with its gradient laid out the same, and its group without
  // amsgrad (checked per step: cheap next to the update).
  bool all_fusable() const {
    for (const auto& group : param_groups_) {
      if (static_cast<const torch::optim::AdamOptions&>(group.options()).amsgrad()) return false;
      for (const auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        const auto& g = p.grad();
        if (!p.device().is_cpu() || g.is_sparse() || !p.is_non_overlapping_and_dense() ||
            g.strides() != p.strides() || g.scalar_type() != p.scalar_type() ||
            (p.scalar_type() != torch::kFloat && p.scalar_type() != torch::kDouble))
          return false;
      }
    }
    return true;
  }
};

}  // namespace

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
  return std::make_unique<CpuFusedAdam>(pg, torch::optim::AdamOptions(o.lr));
}

double clip_gradients(const std::vector<torch::Tensor>& params, double max_norm) {
  std::vector<torch::Tensor> grads;
  bool fused = true;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    const auto& g = p.grad();
    fused = fused && g.device().is_cpu() && !g.is_sparse() && g.is_non_overlapping_and_dense() &&
            (g.scalar_type() == torch::kFloat || g.scalar_type() == torch::kDouble);
    grads.push_back(g);
  }
  if (grads.empty()) return 0.0;
  if (!fused) return torch::nn::utils::clip_grad_norm_(params, max_norm);
  // One pass per gradient over its memory (dense: every element once, in some order).
  double squares = 0;
  for (const auto& g : grads) {
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "clip_gradients_norm", [&] {
      const scalar_t* v = g.data_ptr<scalar_t>();
      double s = 0;
      for (int64_t i = 0, n = g.numel(); i < n; ++i) s += static_cast<double>(v[i]) * static_cast<double>(v[i]);
      squares += s;
    });
  }
  const double total = std::sqrt(squares);
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0) {
    torch::NoGradGuard no_grad;
    for (auto& g : grads) g.mul_(coef);
  }
  return total;
}

double lr_factor(const OptimOptions& o, int64_t step, int64_t total_steps, int64_t steps_per_epoch) {
  const double warm = o.warmup_epochs * steps_per_epoch;
  if (warm > 0 && step < warm) return (step + 1) / warm;
  if (o.schedule == "constant") return 1.0;
  const double span = std::max(1.0, total_steps - warm);
  const double t = std::min(1.0, (step - warm) / span);
  const double floor = o.min_lr / o.lr;
  return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * t));
}

}  // namespace autorep::trainer::engine
