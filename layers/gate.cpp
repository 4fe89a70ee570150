#include "layers/gate.h"

#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <type_traits>
#include <utility>

#include "layers/curvature.h"
#include "layers/gate_function.h"
#include "layers/gate_state_cpu.h"

namespace autorep::layers {
namespace {

std::string shape_string(c10::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// Optimiser state is keyed by the TensorImpl address: a string in LibTorch 1.x, a void* in 2.x.
template <typename Map>
void erase_state(Map& state, const torch::Tensor& p) {
  using Key = typename std::decay_t<Map>::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    state.erase(c10::guts::to_string(p.unsafeGetTensorImpl()));
  } else {
    state.erase(static_cast<Key>(p.unsafeGetTensorImpl()));
  }
}

// Per-channel [sum x, sum x^2] of x (N×C×...) in double, and the number of values per channel.
torch::Tensor channel_moments(const torch::Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  const auto xd = x.detach().to(torch::kDouble);
  return torch::stack({xd.sum(dims), (xd * xd).sum(dims)});
}

// Per-channel largest |x| of x (N×C×...) where `keep` (broadcast against x) is false; float64 on x's device.
torch::Tensor channel_range(const torch::Tensor& x, const torch::Tensor& keep = {}) {
  const int64_t c = x.size(1);
  auto a = x.detach().abs();
  if (keep.defined()) a = torch::where(keep, torch::zeros_like(a), a);
  return a.transpose(0, 1).reshape({c, -1}).amax(1).to(torch::kDouble);
}

// Mean and unbiased variance (as batch norm keeps it) from [sum x, sum x^2] over n values (a
// number, or a one-element tensor on the sums' device, which spares a host read).
template <typename N>
std::pair<torch::Tensor, torch::Tensor> mean_and_var(const torch::Tensor& sums, const N& n) {
  const auto mean = sums[0] / n;
  return {mean, ((sums[1] - sums[0] * mean) / (n - 1)).clamp_min(0)};
}

// running ← (1 − momentum)·running + momentum·batch, in running's dtype; where `enough` is given
// (a device-side flag), only where it holds, so the blend needs no host read.
void blend_running(torch::Tensor& running, const torch::Tensor& batch, double momentum,
                   const torch::Tensor& enough = {}) {
  auto blended = running * (1 - momentum) + batch.to(running.options()) * momentum;
  running.copy_(enough.defined() ? torch::where(enough, blended, running) : blended);
}

}  // namespace

DapaFit dapa_fit(const torch::Tensor& mean, const torch::Tensor& sigma, int64_t degree) {
  TORCH_CHECK(degree == 1 || degree == 2, "dapa_fit: degree must be 1 or 2, got ", degree);
  TORCH_CHECK((sigma > 0).all().item<bool>(), "dapa_fit: sigma must be positive");
  const auto z = mean / sigma;
  const auto pdf = torch::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI);
  const auto cdf = 0.5 * torch::erfc(-z / std::sqrt(2.0));
  DapaFit f;
  if (degree == 2) {
    f.w2 = pdf / (2 * sigma);
    f.w1 = cdf - z * pdf;
    f.w0 = sigma * pdf * (z * z + 1) / 2;
  } else {
    f.w2 = torch::zeros_like(mean);
    f.w1 = cdf;
    f.w0 = sigma * pdf;
  }
  return f;
}

GateImpl::GateImpl(GateOptions options) : options_(std::move(options)) { reset(); }

void GateImpl::reset() {
  const auto& s = options_.shape();
  TORCH_CHECK(!s.empty(), "gate: shape must be the per-sample input shape {C,H,W} or {F}, got []");
  for (auto d : s) TORCH_CHECK(d > 0, "gate: shape ", shape_string(s), " has a non-positive size");
  TORCH_CHECK(options_.degree() == 1 || options_.degree() == 2, "gate: degree must be 1 or 2, got ",
              options_.degree());
  const auto& dp = options_.dapa();
  TORCH_CHECK(dp.sigma() == "std" || dp.sigma() == "var", "gate: dapa.sigma '", dp.sigma(),
              "' is not one of std, var");
  TORCH_CHECK(dp.refit_every() >= 1, "gate: dapa.refit_every must be >= 1, got ", dp.refit_every());
  TORCH_CHECK(dp.var_floor() > 0, "gate: dapa.var_floor must be > 0, got ", dp.var_floor());

  const int64_t c = s[0];
  const std::vector<int64_t> mshape = mask_shape(options_.granularity(), s);
  aux_ = register_parameter("aux", torch::rand(mshape));
  mask_ = register_buffer("mask", torch::ones(mshape));
  c0_ = register_parameter("c0", torch::zeros({c}));
  c1_ = register_parameter("c1", torch::zeros({c}));
  c2_ = register_parameter("c2", torch::zeros({c}), /*requires_grad=*/options_.degree() == 2);
  running_mean_ = register_buffer("running_mean", torch::zeros({c}));
  running_var_ = register_buffer("running_var", torch::ones({c}));
  running_range_ = register_buffer("running_range", torch::zeros({c}));
  step_ = register_buffer("step", torch::zeros({}, torch::kLong));
  step_cache_impl_ = nullptr;
  refit();
  if (frozen_) aux_.set_requires_grad(false);
}

int64_t GateImpl::step() const {
  const auto version = static_cast<int64_t>(step_._version());
  if (step_cache_impl_ != step_.unsafeGetTensorImpl() || step_cache_version_ != version) {
    step_cache_ = step_.item<int64_t>();
    step_cache_impl_ = step_.unsafeGetTensorImpl();
    step_cache_version_ = version;
  }
  return step_cache_;
}

torch::Tensor GateImpl::fit_sigma() const { return running_var_.to(torch::kDouble).clamp_min(1e-5).sqrt(); }

void GateImpl::refit() {
  torch::NoGradGuard no_grad;
  const auto& dp = options_.dapa();
  const auto mean = running_mean_.to(torch::kDouble);
  const auto var = running_var_.to(torch::kDouble);
  const double s1 = options_.scale1(), s2 = options_.scale2();
  if (dp.sigma() == "std") {
    // 1e-5 as in batch norm: a dead channel still gets a finite fit.
    const auto f = dapa_fit(mean, dp.sigma_scale() * fit_sigma(), options_.degree());
    c0_.copy_(f.w0);
    c1_.copy_(f.w1 / s1);
    c2_.copy_(f.w2 / s2);
    if (dp.range_bound() > 0) cap_curvature();
  } else {
    const auto f = dapa_fit(mean, var.clamp_min(dp.var_floor()), options_.degree());
    c0_.copy_(f.w0 / dp.w0_div());
    c1_.copy_(f.w1 / s1);
    c2_.copy_(f.w2 / dp.w2_div());
  }
}

void GateImpl::begin_calibration() {
  calibration_ = torch::zeros({2, options_.shape()[0]}, torch::TensorOptions().dtype(torch::kDouble));
  calibration_count_ = 0;
  calibration_range_ = torch::Tensor();
  calibration_range_batches_ = 0;
}

void GateImpl::end_calibration() {
  TORCH_CHECK(calibrating(), "gate: end_calibration() without begin_calibration()");
  const auto sums = calibration_;
  const int64_t n = calibration_count_;
  calibration_ = torch::Tensor();
  const auto range_sum = std::exchange(calibration_range_, torch::Tensor());
  const int64_t range_batches = std::exchange(calibration_range_batches_, 0);
  if (n < 2) return;
  torch::NoGradGuard no_grad;
  const auto [mean, var] = mean_and_var(sums, n);
  running_mean_.copy_(mean);
  running_var_.copy_(var);
  if (range_sum.defined()) running_range_.copy_(range_sum / static_cast<double>(range_batches));
  refit();
}

void GateImpl::update_running_stats(const torch::Tensor& moments, int64_t count, torch::Tensor range) {
  torch::NoGradGuard no_grad;
  auto m = moments.to(torch::kDouble);
  if (const auto& reduce = moment_reducer_) {
    // Sums and count of every process's batch: the statistics of the whole global batch; with a
    // range, the processes' ranges and a 1 each (their mean: every process keeps the same range).
    const int64_t c = m.size(1);
    std::vector<torch::Tensor> parts{m.reshape({-1}), torch::full({1}, static_cast<double>(count), m.options())};
    if (range.defined()) {
      parts.push_back(range.to(m.options()));
      parts.push_back(torch::ones({1}, m.options()));
    }
    auto packed = torch::cat(parts);
    reduce(packed);
    m = packed.slice(0, 0, 2 * c).view({2, c});
    if (range.defined()) range = packed.slice(0, 2 * c + 1, 3 * c + 1) / packed.slice(0, 3 * c + 1, 3 * c + 2);
    update_range(range);
    // The global count stays on the device (no host read per gate and step): with fewer than two
    // values in the whole global batch the statistics are left as they are.
    const auto n = packed.slice(0, 2 * c, 2 * c + 1);
    const auto [mean, var] = mean_and_var(m, n);
    const auto enough = n >= 2;
    blend_running(running_mean_, mean, options_.dapa().momentum(), enough);
    blend_running(running_var_, var, options_.dapa().momentum(), enough);
    return;
  }
  update_range(range);
  if (count < 2) return;
  if (state_cpu::applies({&running_mean_, &running_var_}, running_mean_.scalar_type()) && m.is_contiguous() &&
      m.device().is_cpu()) {
    state_cpu::blend_moments(m, count, options_.dapa().momentum(), running_mean_, running_var_);
    return;
  }
  const auto [mean, var] = mean_and_var(m, count);
  blend_running(running_mean_, mean, options_.dapa().momentum());
  blend_running(running_var_, var, options_.dapa().momentum());
}

void GateImpl::update_range(const torch::Tensor& range) {
  if (!range.defined()) return;
  const auto batch = range.to(running_range_.options());
  // The first batch seen sets the range (the buffer starts at 0, "nothing seen").
  const double mom = options_.dapa().momentum();
  running_range_.copy_(torch::where(running_range_ > 0, running_range_ * (1 - mom) + batch * mom, batch));
}

torch::Tensor GateImpl::forward(const torch::Tensor& x) {
  const auto& s = options_.shape();
  TORCH_CHECK(x.dim() == static_cast<int64_t>(s.size()) + 1 && x.sizes().slice(1) == c10::IntArrayRef(s),
              "gate: input of shape ", x.sizes(), " has per-sample shape ",
              (x.dim() >= 1 ? shape_string(x.sizes().slice(1)) : std::string("[]")),
              " but this gate was built for per-sample shape ", shape_string(s));
  const double s1 = options_.scale1(), s2 = options_.scale2();
  const int64_t deg = options_.degree();
  const auto aux = frozen_ ? aux_.detach() : aux_;
  if (calibrating()) {
    torch::NoGradGuard no_grad;
    calibration_.add_(channel_moments(x).cpu());
    calibration_count_ += x.numel() / std::max<int64_t>(s[0], 1);
    if (options_.dapa().range_bound() > 0) {
      // The teacher's range at every position: which will be polynomial is not known yet.
      const auto r = channel_range(x).cpu();
      calibration_range_ = calibration_range_.defined() ? calibration_range_ + r : r;
      ++calibration_range_batches_;
    }
  }
  if (!is_training()) {
    auto y = options_.fused() ? gate_fused(x, aux, mask_, c0_, c1_, c2_, s1, s2, deg)
                              : gate_composite(x, aux, mask_, c0_, c1_, c2_, s1, s2, deg);
    if (probing_) record_probe(x, y);
    return y;
  }
  const auto& dp = options_.dapa();
  const int64_t k = step();
  refitted_last_step_ = dp.enabled() && k > 0 && k < dp.refit_until() && k % dp.refit_every() == 0;
  if (refitted_last_step_) {
    refit();
    ++refit_count_;
  }
  torch::Tensor y, moments;
  if (options_.fused()) {
    y = gate_fused(x, aux, mask_, c0_, c1_, c2_, s1, s2, deg, &moments);
  } else {
    y = gate_composite(x, aux, mask_, c0_, c1_, c2_, s1, s2, deg);
    torch::NoGradGuard no_grad;
    moments = channel_moments(x);
  }
  update_running_stats(moments, x.numel() / std::max<int64_t>(s[0], 1), batch_range(x));
  {
    torch::NoGradGuard no_grad;
    step_.add_(1);
  }
  // Keep the host copy in step (no device read next time).
  step_cache_ = k + 1;
  step_cache_impl_ = step_.unsafeGetTensorImpl();
  step_cache_version_ = static_cast<int64_t>(step_._version());
  if (probing_) record_probe(x, y);
  return y;
}

torch::Tensor GateImpl::batch_range(const torch::Tensor& x) const {
  const auto& dp = options_.dapa();
  if (dp.range_bound() <= 0 || options_.degree() < 2 || dp.sigma() != "std") return {};
  torch::NoGradGuard no_grad;
  // Only where the polynomial applies: a kept ReLU's input does not pass through p.
  return channel_range(x, broadcast_mask(mask_, x) > 0.5);
}

void GateImpl::cap_curvature() {
  const auto& o = options_;
  if (o.degree() < 2 || o.dapa().sigma() != "std") return;
  torch::NoGradGuard no_grad;
  // φ(0) / (2 k σ) for s2*c2, i.e. φ(0) / (2 k σ s2) for c2.
  if (o.dapa().range_bound() <= 0 && state_cpu::applies({&c2_, &running_var_}, c2_.scalar_type())) {
    state_cpu::cap_c2(c2_, running_var_, 2.0 * o.dapa().sigma_scale() * o.scale2());
    return;
  }
  auto limit = (1.0 / std::sqrt(2.0 * M_PI)) /
               (2.0 * o.dapa().sigma_scale() * o.scale2() * fit_sigma().to(c2_.scalar_type()));
  if (o.dapa().range_bound() > 0) {
    const auto range = running_range_.to(c2_.scalar_type());
    const auto by_range = o.dapa().range_bound() / (o.scale2() * range.clamp_min(1e-12));
    limit = torch::where(range > 0, torch::min(limit, by_range), limit);
  }
  c2_.copy_(torch::max(torch::min(c2_, limit), -limit));
}

void GateImpl::record_probe(const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard no_grad;
  const int64_t c = options_.shape()[0];
  std::vector<int64_t> channel_view(x.dim(), 1);
  channel_view[1] = c;
  const auto xd = x.detach().to(torch::kDouble);
  const auto mean = running_mean_.to(torch::kDouble).reshape(channel_view);
  const auto sd = running_var_.to(torch::kDouble).clamp_min(1e-10).sqrt().reshape(channel_view);
  auto z = ((xd - mean) / sd).abs();
  // Only where the polynomial applies: a kept ReLU cannot amplify.
  z = torch::where(broadcast_mask(mask_, x).to(x.device()) > 0.5, torch::zeros_like(z), z);
  probe_ = Probe();
  if (z.numel() > 0) {
    const auto per_channel = z.transpose(0, 1).reshape({c, -1}).amax(1);
    probe_.channel = per_channel.argmax().item<int64_t>();
    probe_.input_sigmas = per_channel[probe_.channel].item<double>();
    probe_.channel_sd = sd.reshape({c})[probe_.channel].item<double>();
  }
  probe_.output_peak = y.numel() > 0 ? y.detach().abs().amax().item<double>() : 0.0;
}

void GateImpl::hysteresis_update(double threshold) {
  if (frozen_) return;
  torch::NoGradGuard no_grad;
  if (state_cpu::applies({&mask_, &aux_}, mask_.scalar_type())) {
    state_cpu::hysteresis(mask_, aux_, threshold);
    return;
  }
  const auto down = (aux_ > -threshold).to(mask_.scalar_type());
  const auto up = (aux_ > threshold).to(mask_.scalar_type());
  mask_.copy_(mask_ * down + (1 - mask_) * up);
}

void GateImpl::set_frozen(bool frozen) {
  frozen_ = frozen;
  aux_.set_requires_grad(!frozen);
}

std::vector<torch::Tensor> GateImpl::coefficients() const {
  if (options_.degree() >= 2) return {c0_, c1_, c2_};
  return {c0_, c1_};
}

int64_t GateImpl::total_relus() const {
  int64_t n = 1;
  for (auto d : options_.shape()) n *= d;
  return n;
}

int64_t GateImpl::kept_relus() const {
  const double kept = mask_.sum().item<double>();
  const int64_t per = elements_per_entry(options_.granularity(), options_.shape());
  return static_cast<int64_t>(std::llround(kept)) * per;
}

void GateImpl::pretty_print(std::ostream& stream) const {
  stream << "autorep::layers::Gate(shape=" << shape_string(options_.shape())
         << ", granularity=" << granularity_name(options_.granularity()) << ", degree=" << options_.degree()
         << ", dapa=" << (options_.dapa().enabled() ? options_.dapa().sigma() : std::string("off"))
         << ")";
}

ActivationFactory gate_factory(GateOptions prototype) {
  return [prototype](const std::string&, const std::vector<int64_t>& shape) {
    GateOptions o = prototype;
    o.shape(shape);
    return torch::nn::AnyModule(Gate(o));
  };
}

std::vector<std::shared_ptr<GateImpl>> gates(torch::nn::Module& model) {
  std::vector<std::shared_ptr<GateImpl>> out;
  if (auto* self = dynamic_cast<GateImpl*>(&model)) {
    // The model itself is a gate: reach its shared_ptr when it has one.
    try {
      out.push_back(std::dynamic_pointer_cast<GateImpl>(self->shared_from_this()));
    } catch (const std::bad_weak_ptr&) {
      TORCH_CHECK(false, "gates(): a Gate must be held by a Gate holder / shared_ptr");
    }
  }
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto g = std::dynamic_pointer_cast<GateImpl>(m)) out.push_back(g);
  }
  return out;
}

void hysteresis_update(torch::nn::Module& model, double threshold) {
  for (const auto& g : gates(model)) g->hysteresis_update(threshold);
}

void hysteresis_update(torch::nn::Module& model) {
  for (const auto& g : gates(model)) g->hysteresis_update(g->options().threshold());
}

std::vector<torch::Tensor> aux_parameters(torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  for (const auto& g : gates(model)) out.push_back(g->aux());
  return out;
}

std::vector<torch::Tensor> coefficient_parameters(torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  for (const auto& g : gates(model)) {
    for (const auto& c : g->coefficients()) out.push_back(c);
  }
  return out;
}

std::vector<torch::Tensor> refitted_coefficients(torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  for (const auto& g : gates(model)) {
    if (!g->refitted_last_step()) continue;
    for (const auto& c : g->coefficients()) out.push_back(c);
  }
  return out;
}

int64_t total_relus(const std::vector<std::shared_ptr<GateImpl>>& gates) {
  int64_t n = 0;
  for (const auto& g : gates) n += g->total_relus();
  return n;
}

void begin_calibration(torch::nn::Module& model) {
  for (const auto& g : gates(model)) g->begin_calibration();
}

void end_calibration(torch::nn::Module& model) {
  for (const auto& g : gates(model)) g->end_calibration();
}

void set_frozen(torch::nn::Module& model, bool frozen) {
  for (const auto& g : gates(model)) g->set_frozen(frozen);
}

void cap_curvature(torch::nn::Module& model) { cap_curvature(gates(model)); }

void cap_curvature(const std::vector<std::shared_ptr<GateImpl>>& gates) {
  for (const auto& g : gates) g->cap_curvature();
}

void set_moment_reducer(torch::nn::Module& model, const MomentReducer& reducer) {
  for (const auto& g : gates(model)) g->set_moment_reducer(reducer);
}

void reset_optimizer_state(torch::optim::Optimizer& optimizer, const std::vector<torch::Tensor>& params) {
  auto& state = optimizer.state();
  for (const auto& p : params) erase_state(state, p);
}

}  // namespace autorep::layers
