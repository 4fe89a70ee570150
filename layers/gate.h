#pragma once
/// The ReLU/polynomial gate of DESIGN §3: one module per activation site that keeps or replaces
/// ReLUs (pixel, channel or layer granularity), with hysteresis on the mask, a straight-through
/// gradient to the auxiliary parameter and DaPa initialisation of the polynomial.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "layers/granularity.h"
#include "layers/site.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace autorep::layers {

/// Combines the per-batch moment sums of a gate across the processes of a data-parallel run:
/// called in every training forward with a float64 tensor [sum x (C), sum x^2 (C), count] (with
/// dapa.range_bound also [range (C), 1]) that it must replace by its sum over all processes, so
/// every process keeps the same running statistics (and DaPa fits the same coefficients) as one
/// process with the whole batch (the range: the mean of the processes' ranges).
using MomentReducer = std::function<void(torch::Tensor&)>;

/// Distribution-aware polynomial approximation (DaPa) of the replaced ReLUs.
struct DapaOptions {
  /// Refit the coefficients from the running statistics during the first training steps.
  TORCH_ARG(bool, enabled) = true;
  /// "std": exact least-squares fit of relu under N(mean, var) with sigma = sqrt(var),
  /// stored exactly (s1*c1 = w1, s2*c2 = w2).
  /// "var": the reference behaviour: sigma = max(var, var_floor) (the variance used as the
  /// scale), stored as (c0, c1, c2) = (w0/w0_div, w1/s1, w2/w2_div).
  TORCH_ARG(std::string, sigma) = "std";
  /// "std": fit under N(mean, (k*sigma)^2) with k = sigma_scale >= 1. A quadratic fitted to the
  /// data's own spread leaves relu's shape beyond about 2.5 sigma and grows like x^2 from there,
  /// so an input in the tail comes out further in the tail; in a residual stream of polynomial
  /// sites the tails compound from block to block. A wider fit keeps the polynomial close to relu
  /// k times further out (its curvature is k times smaller).
  TORCH_ARG(double, sigma_scale) = 3.0;
  /// "std", degree 2: the quadratic term is also capped, per channel, at |s2*c2| <= range_bound / R,
  /// with R the running mean of the batches' largest |x| at the channel's polynomial positions
  /// (`running_range`). With c1 near 1/2, p(R) stays near c0 + (1/2 + range_bound) * R, so an
  /// input at the edge of the observed range does not come out far beyond it: through a residual
  /// stream of polynomial sites the range grows additively instead of being squared block after
  /// block. 0: off (the bound of the fit's curvature alone, see cap_curvature).
  TORCH_ARG(double, range_bound) = 0.0;
  /// Lower clip of the running variance in "var" mode.
  TORCH_ARG(double, var_floor) = 0.5;
  /// Divisor of the constant term in "var" mode.
  TORCH_ARG(double, w0_div) = 5.0;
  /// Divisor of the quadratic term in "var" mode.
  TORCH_ARG(double, w2_div) = 10.0;
  /// Refit every this many training steps (forward calls in training mode)...
  TORCH_ARG(int64_t, refit_every) = 10;
  /// ...while the step counter is below this.
  TORCH_ARG(int64_t, refit_until) = 500;
  /// EMA momentum of the running per-channel mean/var: r = (1-m)*r + m*batch.
  TORCH_ARG(double, momentum) = 0.1;
  /// Training batches whose exact statistics start the running mean/var before the first step
  /// (the calibration pass of the reduction methods, see begin_calibration); 0: start from the
  /// N(0, 1) prior.
  TORCH_ARG(int64_t, calibration_batches) = 10;
};

/// Options of one gate. The shape is the per-sample input shape of its site.
struct GateOptions {
  GateOptions() = default;
  explicit GateOptions(std::vector<int64_t> shape) : shape_(std::move(shape)) {}
  /// Per-sample input shape: {C, H, W} or {F} (any {C, ...} works: trailing sizes are positions).
  TORCH_ARG(std::vector<int64_t>, shape);
  /// Pixel (aux/mask of the per-sample shape), Channel ([C]) or Layer ([1]).
  TORCH_ARG(Granularity, granularity) = Granularity::Pixel;
  /// Degree of the replacement polynomial: 1 or 2.
  TORCH_ARG(int64_t, degree) = 2;
  /// s1 in p(x) = c0 + s1*c1*x + s2*c2*x^2.
  TORCH_ARG(double, scale1) = 1.0;
  /// s2: a fixed factor 0.1 on the quadratic term makes an optimiser step move s2*c2 ten times
  /// less than c0, c1, which keeps x^2 (large for wide activations) from blowing up early.
  TORCH_ARG(double, scale2) = 0.1;
  /// Hysteresis threshold t of hysteresis_update().
  TORCH_ARG(double, threshold) = 0.003;
  /// Use the fused kernels (true) or the composite reference (false; for tests/debugging).
  TORCH_ARG(bool, fused) = true;
  TORCH_ARG(DapaOptions, dapa) = {};
};

/// Closed-form least-squares fit of relu(x) by w0 + w1*x + w2*x^2 under x ~ N(mean, sigma^2),
/// elementwise, with z = mean/sigma, φ/Φ the standard normal pdf/cdf:
///   degree 2: w2 = φ(z)/(2σ), w1 = Φ(z) − z·φ(z), w0 = σ·φ(z)·(z²+1)/2
///   degree 1: w2 = 0,         w1 = Φ(z),          w0 = σ·φ(z)
/// (both are the exact projections; DESIGN §3's formulas agree, verified in the tests).
struct DapaFit {
  torch::Tensor w0, w1, w2;
};
DapaFit dapa_fit(const torch::Tensor& mean, const torch::Tensor& sigma, int64_t degree);

/// y = mask*relu(x) + (1-mask)*p(x), p(x) = c0 + s1*c1*x + s2*c2*x^2 per channel.
/// Registered state: parameters `aux` (mask shape, init U(0,1)), `c0`, `c1`, `c2` ([C]);
/// buffers `mask` (mask shape, init 1), `running_mean`, `running_var` ([C], init 0 / 1) and
/// `step` (int64 scalar: training forward calls so far). Mask shape: per-sample shape (pixel),
/// [C] (channel) or [1] (layer). Coefficients start at the DaPa fit of the initial statistics.
///
/// In training mode each forward updates the running statistics (same pass as y), counts a
/// step and, if DaPa is enabled, refits the coefficients at the start of every step k with
/// k % refit_every == 0, 0 < k < refit_until (before they enter this step's graph).
class GateImpl : public torch::nn::Cloneable<GateImpl>, public ActivationSite {
 public:
  explicit GateImpl(GateOptions options);
  void reset() override;

  /// x: N×(shape) — N×C×H×W or N×F. Error if the per-sample shape differs from options.shape.
  torch::Tensor forward(const torch::Tensor& x);

  /// mask = mask*[aux > -t] + (1-mask)*[aux > t]. No-op while frozen.
  void hysteresis_update(double threshold);
  /// Overwrite c0, c1, c2 with the DaPa fit of the running statistics (no autograd).
  void refit();
  /// Calibration: from begin_calibration() to end_calibration() every forward, in either mode,
  /// adds its batch's exact per-channel sums (in double); end_calibration() sets running_mean and
  /// running_var to the exact mean and unbiased variance of all it saw and refits, so DaPa starts
  /// from the activations' real distribution rather than the N(0, 1) prior. Without any input
  /// seen, end_calibration() leaves the statistics as they were.
  void begin_calibration();
  void end_calibration();
  bool calibrating() const { return calibration_.defined(); }
  /// True when the last training forward refitted the coefficients: their optimiser state is
  /// stale (see reset_optimizer_state / refitted_coefficients).
  bool refitted_last_step() const { return refitted_last_step_; }
  /// Refits done by forward() since construction (not saved).
  int64_t refit_count() const { return refit_count_; }
  /// Training steps counted so far (the `step` buffer).
  int64_t step() const;

  /// Frozen masks: aux gets no gradient and hysteresis does nothing (not saved).
  void set_frozen(bool frozen);
  bool frozen() const { return frozen_; }
  /// Combines this gate's per-batch moment sums across processes (see MomentReducer); an empty
  /// function (the default) keeps them local.
  void set_moment_reducer(MomentReducer reducer) { moment_reducer_ = std::move(reducer); }

  int64_t kept_relus() const override;
  int64_t total_relus() const override;

  const GateOptions& options() const { return options_; }
  const torch::Tensor& aux() const { return aux_; }
  const torch::Tensor& mask() const { return mask_; }
  const torch::Tensor& c0() const { return c0_; }
  const torch::Tensor& c1() const { return c1_; }
  const torch::Tensor& c2() const { return c2_; }
  const torch::Tensor& running_mean() const { return running_mean_; }
  const torch::Tensor& running_var() const { return running_var_; }
  /// Per channel: the running mean of the training batches' largest |x| at polynomial positions
  /// (0 until a batch with a polynomial position was seen; kept only with dapa.range_bound > 0).
  const torch::Tensor& running_range() const { return running_range_; }
  /// Caps c2 at the curvature bound of cap_curvature() and, with dapa.range_bound, at the range
  /// bound (no autograd, no host sync; "std" degree-2 gates only, a no-op otherwise).
  void cap_curvature();
  /// The per-channel sigma the "std" fit and the curvature bound use: sqrt(running_var), at
  /// least sqrt(1e-5) as in batch norm (a dead channel still gets a finite fit); float64.
  torch::Tensor fit_sigma() const;
  /// c0, c1 and (degree 2) c2: the parameters a refit overwrites.
  std::vector<torch::Tensor> coefficients() const;

  /// What the last forward saw while probing (a spike's post-mortem): the largest distance of
  /// an input at a polynomial position from its channel's running mean, in running standard
  /// deviations, and the largest |output|.
  struct Probe {
    double input_sigmas = 0.0;
    int64_t channel = -1;        ///< where input_sigmas was seen
    double channel_sd = 0.0;     ///< that channel's running standard deviation
    double output_peak = 0.0;
  };
  /// While probing, every forward records its Probe (one extra pass over x and y: diagnostics
  /// only, never in the training steps).
  void set_probing(bool on) { probing_ = on; }
  const Probe& probe() const { return probe_; }

  void pretty_print(std::ostream& stream) const override;

 private:
  void record_probe(const torch::Tensor& x, const torch::Tensor& y);
  /// `range`: the batch's per-channel largest |x| at polynomial positions (undefined: not kept).
  void update_running_stats(const torch::Tensor& moments, int64_t count, torch::Tensor range);
  /// Folds a batch's range (undefined: nothing to do) into running_range.
  void update_range(const torch::Tensor& range);
  /// The batch's range for update_running_stats, undefined without dapa.range_bound.
  torch::Tensor batch_range(const torch::Tensor& x) const;

  GateOptions options_;
  torch::Tensor aux_, mask_, c0_, c1_, c2_, running_mean_, running_var_, running_range_, step_;
  bool frozen_ = false;
  MomentReducer moment_reducer_;
  torch::Tensor calibration_;  // [sum x (C), sum x^2 (C)] in double while calibrating
  int64_t calibration_count_ = 0;
  torch::Tensor calibration_range_;  // sum of the calibration batches' per-channel largest |x|
  int64_t calibration_range_batches_ = 0;
  bool refitted_last_step_ = false;
  int64_t refit_count_ = 0;
  bool probing_ = false;
  Probe probe_;
  // Host copy of the step buffer, trusted while the buffer is the same tensor at the same
  // version (avoids a device sync per forward; a load or .to() invalidates it).
  mutable int64_t step_cache_ = 0;
  mutable const void* step_cache_impl_ = nullptr;
  mutable int64_t step_cache_version_ = -1;
};
TORCH_MODULE(Gate);

/// Factory placing a Gate built from `prototype` (its shape replaced by the site's) at every site.
ActivationFactory gate_factory(GateOptions prototype);

/// Every Gate in `model` (including `model` itself), in modules() order.
std::vector<std::shared_ptr<GateImpl>> gates(torch::nn::Module& model);
/// Sum of all ReLU elements over `gates` (per sample).
int64_t total_relus(const std::vector<std::shared_ptr<GateImpl>>& gates);
/// hysteresis_update(threshold) on every gate of `model`; call after each optimiser step
/// (training only).
void hysteresis_update(torch::nn::Module& model, double threshold);
/// Same, with each gate's own options().threshold.
void hysteresis_update(torch::nn::Module& model);
/// The aux parameters of every gate (own parameter group / learning rate).
std::vector<torch::Tensor> aux_parameters(torch::nn::Module& model);
/// c0, c1 (and c2 for degree 2) of every gate.
std::vector<torch::Tensor> coefficient_parameters(torch::nn::Module& model);
/// Coefficients of the gates whose last training forward refitted them.
std::vector<torch::Tensor> refitted_coefficients(torch::nn::Module& model);
/// begin_calibration() / end_calibration() on every gate of `model`.
void begin_calibration(torch::nn::Module& model);
void end_calibration(torch::nn::Module& model);
/// Mask freezing for every gate of `model`.
void set_frozen(torch::nn::Module& model, bool frozen);

/// Installs `reducer` on every gate of `model` (an empty function removes it).
void set_moment_reducer(torch::nn::Module& model, const MomentReducer& reducer);

/// Drops the optimiser state (Adam moments and step, SGD momentum, ...) of `params`, so the
/// next step treats them as fresh. Parameters without state are ignored.
void reset_optimizer_state(torch::optim::Optimizer& optimizer, const std::vector<torch::Tensor>& params);

}  // namespace autorep::layers
