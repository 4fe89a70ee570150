#include "trainer/engine/step.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "layers/gate.h"
#include "layers/util/text.h"
#include "trainer/engine/interrupt.h"
#include "trainer/engine/optim.h"

namespace autorep::trainer::engine {

namespace {

// The first named tensor of `named` that is not finite, or "".
std::string first_nonfinite(const torch::OrderedDict<std::string, torch::Tensor>& named) {
  for (const auto& kv : named) {
    if (kv.value().defined() && !torch::isfinite(kv.value()).all().item<bool>()) return kv.key();
  }
  return "";
}

}  // namespace

std::string describe_divergence(models::NetImpl& model, const LossOutput& loss, const torch::Tensor& logits) {
  torch::NoGradGuard no_grad;
  std::string out = "loss parts:";
  for (const auto& part : loss.parts) out += " " + part.first + " " + util::short_number(part.second.item<double>());
  const auto bad_logits = (~torch::isfinite(logits.detach())).any(1).sum().item<int64_t>();
  if (bad_logits > 0) out += "; " + std::to_string(bad_logits) + " samples with non-finite logits";
  const auto params = model.named_parameters();
  const std::string bad_param = first_nonfinite(params);
  if (!bad_param.empty()) {
    out += "; parameter " + bad_param + " is not finite (the previous step broke it)";
  } else if (bad_logits > 0) {
    out += " (every parameter is finite: this batch's activations overflowed";
    out += model.sites().empty() ? std::string(")") : std::string(", e.g. through polynomial sites)");
  }
  out += ". train.skip_spikes skips single outlier batches; if every step spikes, lower the phase's learning "
         "rate (optim, search.search_optim or search.finetune_optim lr)";
  return out;
}

std::string describe_spike(models::NetImpl& model, const torch::Tensor& x) {
  std::vector<std::pair<std::string, layers::GateImpl*>> probed;
  for (const auto& site : model.sites())
    if (auto* g = dynamic_cast<layers::GateImpl*>(site.module.get())) probed.emplace_back(site.name, g);
  if (probed.empty()) return "";
  for (auto& p : probed) p.second->set_probing(true);
  {
    torch::NoGradGuard no_grad;
    model.forward(x);
  }
  const std::pair<std::string, layers::GateImpl*>* first = nullptr;
  const std::pair<std::string, layers::GateImpl*>* peak = nullptr;
  for (const auto& p : probed) {
    p.second->set_probing(false);
    const auto& pr = p.second->probe();
    if (first == nullptr && pr.input_sigmas > 20.0) first = &p;
    if (peak == nullptr || pr.input_sigmas > peak->second->probe().input_sigmas) peak = &p;
  }
  auto describe = [](const std::pair<std::string, layers::GateImpl*>& p) {
    const auto& pr = p.second->probe();
    return p.first + " (channel " + std::to_string(pr.channel) + ", running sd " + util::short_number(pr.channel_sd) +
           ": input " + util::short_number(pr.input_sigmas) + " sd from its mean, output up to " +
           util::short_number(pr.output_peak) + ")";
  };
  std::string out = "largest polynomial input at " + describe(*peak);
  if (first != nullptr && first != peak) out += ", first beyond 20 sd at " + describe(*first);
  return out;
}

StepOutcome train_step(const StepEnv& env, const Phase& phase, const torch::Tensor& x, const torch::Tensor& y,
                       int64_t step_in_epoch, double loss_factor) {
  TrainContext& ctx = *env.ctx;
  SpikeGuard& guard = *env.guard;
  auto& optimizer = *ctx.optimizer;
  if (guard.enabled()) env.running_stats->save();
  auto logits = ctx.model->forward(x);
  LossOutput lo = env.method->loss(ctx, x, y, logits);
  if (loss_factor != 1.0) lo.loss = lo.loss * loss_factor;
  optimizer.zero_grad();
  // Loss and correct predictions of the whole global batch (summed over processes), then each
  // loss part weighted the same way.
  std::vector<torch::Tensor> stats = {lo.loss.detach().to(torch::kDouble) * static_cast<double>(y.size(0)),
                                      logits.detach().argmax(1).eq(y).sum().to(torch::kDouble)};
  for (const auto& part : lo.parts)
    stats.push_back(part.second.detach().to(ctx.device, torch::kDouble).reshape({}) * static_cast<double>(y.size(0)));
  // Riding on the same all-reduce: whether any process was asked to stop (SIGINT/SIGTERM), so
  // every process stops after the same step.
  stats.push_back(torch::full({}, interrupt::requested() != 0 ? 1.0 : 0.0,
                              torch::TensorOptions().dtype(torch::kDouble).device(ctx.device)));
  StepOutcome out;
  out.batch_stats = torch::stack(stats).cpu();
  for (const auto& part : lo.parts) out.part_names.push_back(part.first);
  std::unique_ptr<dist::Pending> stats_work;
  if (env.group) {
    stats_work = env.group->allreduce_sum_async(out.batch_stats);
    env.sync->begin();
  }
  lo.loss.backward();
  if (env.group) {
    env.sync->finish();
    stats_work->wait();
  }
  out.loss = out.batch_stats[0].item<double>() / static_cast<double>(env.global_batch);
  out.stop_requested = out.batch_stats[-1].item<double>() > 0.0;
  out.judged_loss = out.loss;
  for (size_t i = 0; i < lo.parts.size(); ++i)
    if (std::find(lo.unjudged.begin(), lo.unjudged.end(), lo.parts[i].first) != lo.unjudged.end())
      out.judged_loss -= out.batch_stats[static_cast<int64_t>(i) + 2].item<double>() / static_cast<double>(env.global_batch);
  if (!std::isfinite(out.loss)) out.judged_loss = out.loss;
  out.skipped = guard.skip(out.judged_loss);
  if (guard.diverged() || (!guard.enabled() && !std::isfinite(out.loss)))
    throw Diverged("training diverged: loss is " + util::short_number(out.loss) + " at epoch " +
                             std::to_string(ctx.epoch + 1) + " step " + std::to_string(step_in_epoch + 1) +
                             (guard.enabled() ? ", the " + std::to_string(guard.consecutive()) +
                                                    "th loss spike in a row (train.skip_spikes)"
                                              : std::string()) +
                             "; " + describe_divergence(*ctx.model, lo, logits));
  // The batch counts either way (the lr schedule and the data order go on); a skipped one
  // leaves no update.
  ++ctx.global_step;
  ++ctx.phase_step;
  if (out.skipped) {
    out.spike_detail = describe_spike(*ctx.model, x);
    env.running_stats->restore();
    return out;
  }
  env.method->before_update(ctx);
  if (phase.optim.grad_clip > 0) clip_gradients(ctx.model->parameters(), phase.optim.grad_clip);
  optimizer.step();
  env.method->after_step(ctx);
  return out;
}

}  // namespace autorep::trainer::engine
