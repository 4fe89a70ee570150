#include "trainer/methods/reduction.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "layers/curvature.h"
#include "layers/snl_gate.h"
#include "layers/util/text.h"
#include "search/snl.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/distributed.h"
#include "trainer/models/registry.h"

namespace autorep::trainer::methods {

using engine::LossOutput;
using engine::ParamGroup;
using engine::Phase;
using engine::PhaseKind;
using engine::TrainContext;

std::vector<torch::Tensor> weight_parameters(models::NetImpl& model) {
  std::vector<torch::Tensor> gate_params = layers::aux_parameters(model);
  for (auto& c : layers::coefficient_parameters(model)) gate_params.push_back(c);
  std::vector<torch::Tensor> out;
  for (auto& p : model.parameters()) {
    bool is_gate = false;
    for (auto& g : gate_params) is_gate = is_gate || g.is_same(p);
    if (!is_gate) out.push_back(p);
  }
  return out;
}

models::Net load_teacher(const engine::Config& config, const models::ModelSpec& student) {
  const std::string& path = config.search.teacher;
  if (path.empty())
    throw std::runtime_error("search.teacher: method " + config.method +
                             " needs a teacher checkpoint (a baseline run's checkpoints/best.pt)");
  if (!std::filesystem::exists(path))
    throw std::runtime_error("search.teacher: " + path + ": no such file (train a baseline first: "
                             "autorep train --config configs/fashion-mnist-resnet20.json)");
  engine::CheckpointMeta meta;
  models::ModelSpec ts;
  try {
    meta = engine::read_checkpoint_meta(path);
    if (!meta.state.contains("model_spec")) throw std::runtime_error(path + ": checkpoint has no model description");
    ts = models::spec_from_json(meta.state.at("model_spec"));
  } catch (const std::exception& e) {
    throw std::runtime_error("search.teacher: " + std::string(e.what()));
  }
  if (ts.name != student.name || ts.input_shape != student.input_shape || ts.classes != student.classes ||
      ts.stem_relu != student.stem_relu || ts.width != student.width || ts.stem_stride != student.stem_stride)
    throw std::runtime_error("search.teacher: " + path + " is a " + ts.name + " for input " +
                             util::shape_text(ts.input_shape) + " with " + std::to_string(ts.classes) +
                             " classes; this run trains a " + student.name +
                             " on its data (model.name, model.width, model.stem_stride and data must match the teacher)");
  const std::string method = meta.config.value("method", std::string("baseline"));
  if (method != "baseline")
    throw std::runtime_error("search.teacher: " + path + " is a " + method +
                             " run; the teacher must be an all-ReLU baseline run");
  models::Net teacher = models::build_model(ts, layers::relu_factory());
  try {
    engine::load_checkpoint(path, *teacher, nullptr);
  } catch (const std::exception& e) {
    throw std::runtime_error("search.teacher: " + std::string(e.what()));
  }
  teacher->eval();
  return teacher;
}

void init_from_teacher(models::NetImpl& student, models::NetImpl& teacher) {
  torch::NoGradGuard no_grad;
  auto sp = student.named_parameters(), sb = student.named_buffers();
  for (const auto& kv : teacher.named_parameters()) {
    auto* dst = sp.find(kv.key());
    TORCH_INTERNAL_ASSERT(dst != nullptr, "teacher parameter ", kv.key(), " missing in the student");
    dst->copy_(kv.value());
  }
  for (const auto& kv : teacher.named_buffers()) {
    auto* dst = sb.find(kv.key());
    TORCH_INTERNAL_ASSERT(dst != nullptr, "teacher buffer ", kv.key(), " missing in the student");
    dst->copy_(kv.value());
  }
}

std::shared_ptr<const models::FoldedNet> kd_teacher(models::NetImpl& teacher, const std::string& dtype,
                                                    const torch::Device& device, bool channels_last) {
  TORCH_CHECK(dtype == "float32" || dtype == "bfloat16", "kd_teacher: unknown dtype ", dtype);
  const auto type = dtype == "float32" ? torch::kFloat : torch::kBFloat16;
  // On the CPU the teacher's forward runs in channels_last whatever the student's layout: its
  // convolutions are faster there (resnet20, batch 128: 25 against 29 ms) and, with no backward,
  // as exact as in NCHW.
  return std::make_shared<const models::FoldedNet>(teacher, type, device, channels_last || device.is_cpu());
}

torch::Tensor teacher_logits(const models::FoldedNet& teacher, const torch::Tensor& x) {
  return teacher.forward(x).to(torch::kFloat);
}

bool cpu_has_native_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  // Every CPU with AMX-BF16 also has AVX512-BF16.
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") != 0;
#else
  return false;
#endif
}

layers::ActivationFactory ReductionMethod::factory() const { return layers::gate_factory(config_.gate); }

std::vector<Phase> ReductionMethod::phases() const {
  const auto& s = config_.search;
  return {Phase{PhaseKind::Search, 0, s.search_epochs, s.search_optim},
          Phase{PhaseKind::Finetune, s.search_epochs, config_.train.epochs - s.search_epochs, s.finetune_optim}};
}

void ReductionMethod::prepare(TrainContext& ctx, bool resuming) {
  teacher_ = load_teacher(config_, ctx.model->spec());
  if (!resuming) init_from_teacher(*ctx.model, *teacher_);
  teacher_->to(ctx.device);
  teacher_->eval();
  const std::string& dtype = config_.search.kd.teacher_dtype;
  kd_teacher_ = kd_teacher(*teacher_, dtype, ctx.device, config_.train.channels_last);
  if (dtype == "bfloat16" && ctx.device.is_cpu() && !cpu_has_native_bf16())
    ctx.log("note: search.kd.teacher_dtype bfloat16 on a CPU without native bfloat16: the teacher forward is "
            "emulated and slower than float32");
  gates_ = layers::gates(*ctx.model);
  TORCH_INTERNAL_ASSERT(gates_.size() == ctx.model->sites().size());
  if (!resuming) calibrate_gates(ctx);
  total_ = layers::total_relus(gates_);
  budget_ = config_.search.budget.resolve(total_);
  if (config_.search.fairness.enabled && ctx.data != nullptr) {
    const auto& groups = ctx.data->groups;
    fairness_ = std::make_unique<search::GroupFairness>(static_cast<int64_t>(groups.names.size()), config_.search.fairness);
    group_of_class_ = torch::tensor(groups.of_class, torch::kLong).to(ctx.device);
    ctx.log("fairness: " + std::to_string(groups.names.size()) + " groups (" +
            (groups.by_class ? std::string("the classes") : std::string("data.groups")) + "), mu " +
            util::short_number(config_.search.fairness.mu) + ", tolerance " +
            util::short_number(config_.search.fairness.tolerance) + ", in the " +
            (config_.search.fairness.search ? "search and the finetune" : "finetune"));
  }
  ctx.log("budget: " + std::to_string(budget_) + " of " + std::to_string(total_) + " ReLUs (" +
          config_.search.budget.json().dump() + "), granularity " +
          layers::granularity_name(config_.gate.granularity()) + ", teacher " + config_.search.teacher +
          " (KD targets in " + config_.search.kd.teacher_dtype + ")");
}

// The student is the teacher's copy with every mask kept, so its gates see the teacher's
// activations: their exact statistics over the first training images replace the N(0, 1) prior
// the running statistics start from, and the first DaPa fit (used by every polynomial until the
// first refit, and by fixed-mask methods from step 0) fits the real distribution.
void ReductionMethod::calibrate_gates(TrainContext& ctx) {
  const auto& dapa = config_.gate.dapa();
  // No data (e.g. `autorep bench step`, which times steps on random batches): nothing to calibrate on.
  if (gates_.empty() || !dapa.enabled() || dapa.calibration_batches() == 0 || ctx.data == nullptr ||
      ctx.data->train.size() == 0)
    return;
  const auto& data = *ctx.data;
  const int64_t n = std::min(data.train.size(), dapa.calibration_batches() * config_.data.batch_size);
  torch::NoGradGuard no_grad;
  const bool was_training = ctx.model->is_training();
  ctx.model->eval();
  layers::begin_calibration(*ctx.model);
  for (int64_t start = 0; start < n; start += config_.data.eval_batch_size) {
    auto idx = torch::arange(start, std::min(n, start + config_.data.eval_batch_size), torch::kLong);
    ctx.model->forward(data::make_batch(data, data.train, idx, /*train=*/false, 0).to(ctx.device));
  }
  layers::end_calibration(*ctx.model);
  ctx.model->train(was_training);
  double min_std = INFINITY, max_std = 0;
  for (const auto& g : gates_) {
    const auto sd = g->running_var().sqrt();
    min_std = std::min(min_std, sd.min().item<double>());
    max_std = std::max(max_std, sd.max().item<double>());
  }
  ctx.log("calibration: gate statistics from the teacher's activations on " + std::to_string(n) +
          " training images (channel std " + util::short_number(min_std) + " .. " + util::short_number(max_std) + ")");
}

void ReductionMethod::begin_phase(TrainContext& ctx, const Phase& phase, bool resumed) {
  if (phase.kind != PhaseKind::Finetune) return;
  search::snl_set_relaxed(gates_, false);
  layers::set_frozen(*ctx.model, true);
  masks_final_ = true;
}

std::vector<ParamGroup> ReductionMethod::param_groups(TrainContext& ctx, const Phase& phase) const {
  if (phase.kind == PhaseKind::Finetune) {
    ParamGroup weights{weight_parameters(*ctx.model), phase.optim.lr, phase.optim.weight_decay};
    ParamGroup coeffs{layers::coefficient_parameters(*ctx.model), phase.optim.lr, 0.0};
    return {weights, coeffs};
  }
  return search_groups(ctx, phase);
}

std::vector<ParamGroup> ReductionMethod::search_groups(TrainContext& ctx, const Phase& phase) const {
  return Method::param_groups(ctx, phase);
}

LossOutput ReductionMethod::loss(TrainContext& ctx, const torch::Tensor& x, const torch::Tensor& y,
                                 const torch::Tensor& logits) {
  LossOutput out;
  const double w = config_.search.kd.weight;
  if (!fair_now()) {
    auto ce = engine::classification_loss(config_, logits, y);
    auto kd = search::kd_loss(logits, teacher_logits(*kd_teacher_, x), config_.search.kd.temperature);
    out.loss = ce + w * kd;
    out.parts = {{"ce", ce.detach()}, {"kd", (w * kd).detach()}};
  } else {
    // The same CE + KD per sample, so each group's mean loss can enter the penalty.
    auto ce = engine::classification_loss(config_, logits, y, /*per_sample=*/true);
    auto kd = search::kd_loss_per_sample(logits, teacher_logits(*kd_teacher_, x), config_.search.kd.temperature);
    const auto per_sample = ce + w * kd;
    const auto penalty = fairness_->penalty(per_sample, group_of_class_.index_select(0, y));
    out.loss = per_sample.mean() + penalty;
    out.parts = {{"ce", ce.mean().detach()}, {"kd", (w * kd.mean()).detach()}, {"fairness", penalty.detach()}};
    out.unjudged = {"fairness"};  // its multipliers grow by design (dual ascent)
  }
  add_penalty(ctx, out);
  return out;
}

void ReductionMethod::after_step(TrainContext&) { layers::cap_curvature(gates_); }

nlohmann::json ReductionMethod::state() const {
  nlohmann::json s = {{"budget", budget_}};
  if (fairness_) s["fairness"] = fairness_->state();
  return s;
}

void ReductionMethod::load_state(const nlohmann::json& s) {
  if (fairness_ && s.contains("fairness")) fairness_->load_state(s.at("fairness"));
}

void ReductionMethod::before_update(TrainContext& ctx) {
  // Only a step that is taken counts in the multipliers' next step.
  if (fair_now()) fairness_->commit();
  // A DaPa refit in this step's forward overwrote coefficients: their optimiser moments are stale.
  layers::reset_optimizer_state(*ctx.optimizer, layers::refitted_coefficients(*ctx.model));
}

void ReductionMethod::on_epoch_end(TrainContext& ctx, nlohmann::json& m) {
  nlohmann::json sites = nlohmann::json::object();
  for (const auto& s : ctx.model->sites()) sites[s.name] = s.activation().kept_relus();
  m["kept_per_site"] = sites;
  m["budget"] = budget_;
  m["rho"] = static_cast<double>(layers::kept_relus(ctx.model->sites())) / static_cast<double>(total_);
  m["rho_target"] = rho_target();
  if (fair_now()) {
    // Every process adds its batches' violations: the multipliers stay the same everywhere.
    auto sums = fairness_->epoch_sums();
    if (ctx.group != nullptr) ctx.group->allreduce_sum(sums);
    const auto violation = search::GroupFairness::mean_violations(sums);
    fairness_->dual_step(sums);
    m["fairness"] = {{"groups", ctx.data->groups.names},
                     {"mean_violation", violation},
                     {"multipliers", fairness_->multipliers()}};
  }
}

std::string ReductionMethod::progress(TrainContext& ctx) const {
  return "ReLUs " + std::to_string(layers::kept_relus(ctx.model->sites())) + "/" + std::to_string(budget_);
}

}  // namespace autorep::trainer::methods
