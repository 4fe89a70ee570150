#include "trainer/reduction.h"

#include <torch/torch.h>

#include <filesystem>
#include <iomanip>
#include <sstream>

#include "search/budget.h"
#include "search/magnitude.h"
#include "search/objective.h"
#include "search/projection.h"
#include "search/snl.h"
#include "trainer/data.h"
#include "trainer/export_run.h"
#include "trainer/train.h"

namespace autorep::trainer {

layers::GateOptions gate_options(const GateConfig& c) {
  layers::DapaOptions d;
  d.enabled(c.dapa.enabled)
      .sigma(c.dapa.sigma)
      .var_floor(c.dapa.var_floor)
      .w0_div(c.dapa.w0_div)
      .w2_div(c.dapa.w2_div)
      .refit_every(c.dapa.refit_every)
      .refit_until(c.dapa.refit_until);
  layers::GateOptions o;
  o.granularity(c.granularity).degree(c.degree).scale1(c.scale1).scale2(c.scale2).threshold(c.threshold).dapa(d);
  return o;
}

std::vector<torch::Tensor> weight_parameters(NetImpl& model) {
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

Net load_teacher(const Config& config, const ModelSpec& student) {
  const std::string& path = config.search.teacher;
  if (path.empty())
    throw std::runtime_error("search.teacher: method " + config.method +
                             " needs a teacher checkpoint (a baseline run's checkpoints/best.pt)");
  if (!std::filesystem::exists(path))
    throw std::runtime_error("search.teacher: " + path + ": no such file (train a baseline first: "
                             "autorep train --config configs/fashion-mnist-resnet20.json)");
  LoadedModel t;
  try {
    t = load_model(path);
  } catch (const std::exception& e) {
    throw std::runtime_error("search.teacher: " + std::string(e.what()));
  }
  const ModelSpec& ts = t.model->spec();
  if (ts.name != student.name || ts.input_shape != student.input_shape || ts.classes != student.classes ||
      ts.stem_relu != student.stem_relu)
    throw std::runtime_error("search.teacher: " + path + " is a " + ts.name + " for input " +
                             std::to_string(ts.input_shape.size() == 3 ? ts.input_shape[0] : 0) + "x" +
                             std::to_string(ts.input_shape.size() == 3 ? ts.input_shape[1] : 0) + "x" +
                             std::to_string(ts.input_shape.size() == 3 ? ts.input_shape[2] : 0) + " with " +
                             std::to_string(ts.classes) + " classes; this run trains a " + student.name +
                             " on its data (model.name and data must match the teacher)");
  if (t.config.method != "baseline")
    throw std::runtime_error("search.teacher: " + path + " is a " + t.config.method +
                             " run; the teacher must be an all-ReLU baseline run");
  return t.model;
}

namespace {

// Copies every parameter and buffer of the teacher into the student (same names; the student's
// gate parameters have no counterpart and keep their initial values).
void init_from_teacher(NetImpl& student, NetImpl& teacher) {
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

}  // namespace

Net kd_teacher(const Net& teacher, const std::string& dtype, const torch::Device& device) {
  if (dtype == "float32") return teacher;
  TORCH_CHECK(dtype == "bfloat16", "kd_teacher: unknown dtype ", dtype);
  Net copy = build_model(teacher->spec(), layers::relu_factory());
  init_from_teacher(*copy, *teacher);
  copy->to(device, torch::kBFloat16);
  copy->eval();
  return copy;
}

torch::Tensor teacher_logits(NetImpl& teacher, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  const auto dtype = teacher.parameters().front().scalar_type();
  return teacher.forward(x.to(dtype)).to(torch::kFloat);
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

namespace {

class ReductionMethod : public Method {
 public:
  explicit ReductionMethod(const Config& config) : config_(config) {}

  layers::ActivationFactory factory() const override { return layers::gate_factory(gate_options(config_.gate)); }

  /// search.search_epochs of search, then finetune for the rest of train.epochs.
  std::vector<Phase> phases() const override {
    const auto& s = config_.search;
    return {Phase{"search", 0, s.search_epochs, s.search_optim},
            Phase{"finetune", s.search_epochs, config_.train.epochs - s.search_epochs, s.finetune_optim}};
  }

  void prepare(TrainContext& ctx, bool resuming) override {
    teacher_ = load_teacher(config_, ctx.model->spec());
    if (!resuming) init_from_teacher(*ctx.model, *teacher_);
    teacher_->to(ctx.device);
    teacher_->eval();
    const std::string& dtype = config_.search.kd.teacher_dtype;
    kd_teacher_ = kd_teacher(teacher_, dtype, ctx.device);
    if (dtype == "bfloat16" && ctx.device.is_cpu() && !cpu_has_native_bf16())
      ctx.log("note: search.kd.teacher_dtype bfloat16 on a CPU without native bfloat16: the teacher forward is "
              "emulated and slower than float32");
    gates_ = layers::gates(*ctx.model);
    TORCH_INTERNAL_ASSERT(gates_.size() == ctx.model->sites().size());
    total_ = search::total_gate_relus(gates_);
    budget_ = search::resolve_budget(config_.search.budget, total_);
    ctx.log("budget: " + std::to_string(budget_) + " of " + std::to_string(total_) + " ReLUs (" +
            config_.search.budget.dump() + "), granularity " + config_.gate.granularity + ", teacher " +
            config_.search.teacher + " (KD targets in " + config_.search.kd.teacher_dtype + ")");
  }

  std::vector<ParamGroup> param_groups(TrainContext& ctx, const Phase& phase) override {
    if (phase.name == "finetune") {
      search::snl_set_relaxed(gates_, false);
      layers::set_frozen(*ctx.model, true);
      masks_final_ = true;
      ParamGroup weights{weight_parameters(*ctx.model), phase.optim.lr, phase.optim.weight_decay};
      ParamGroup coeffs{layers::coefficient_parameters(*ctx.model), phase.optim.lr, 0.0};
      return {weights, coeffs};
    }
    return search_groups(ctx, phase);
  }

  LossOutput loss(TrainContext& ctx, const torch::Tensor& x, const torch::Tensor& y,
                  const torch::Tensor& logits) override {
    // A DaPa refit in this forward overwrote coefficients: their optimiser moments are stale.
    layers::reset_optimizer_state(*ctx.optimizer, layers::refitted_coefficients(*ctx.model));
    LossOutput out;
    auto ce = classification_loss(config_, logits, y);
    auto kd = search::kd_loss(logits, teacher_logits(*kd_teacher_, x), config_.search.kd.temperature);
    out.loss = ce + config_.search.kd.weight * kd;
    out.parts = {{"ce", ce.detach()}, {"kd", (config_.search.kd.weight * kd).detach()}};
    add_penalty(ctx, out);
    return out;
  }

  bool may_be_best(const TrainContext&, const Phase& phase) const override { return phase.name == "finetune"; }

  void on_epoch_end(TrainContext& ctx, nlohmann::json& m) override {
    nlohmann::json sites = nlohmann::json::object();
    for (const auto& s : ctx.model->sites()) sites[s.name] = s.activation().kept_relus();
    m["kept_per_site"] = sites;
    m["budget"] = budget_;
    m["rho"] = static_cast<double>(layers::kept_relus(ctx.model->sites())) / static_cast<double>(total_);
    m["rho_target"] = static_cast<double>(budget_) / static_cast<double>(total_);
  }

  std::string progress(TrainContext& ctx) const override {
    return "ReLUs " + std::to_string(layers::kept_relus(ctx.model->sites())) + "/" + std::to_string(budget_);
  }

  nlohmann::json state() const override { return {{"budget", budget_}}; }

  // The export describes best.pt (the model `autorep verify` is checked against).
  nlohmann::json finish(TrainContext& ctx, const std::string& best_checkpoint) override {
    const std::string path = (std::filesystem::path(ctx.out_dir) / "export" / "mask.json").string();
    nlohmann::json summary = export_checkpoint(best_checkpoint, path);
    ctx.log("export: " + path + " (" + std::to_string(summary.value("kept", int64_t{0})) + " of " +
            std::to_string(summary.value("total", int64_t{0})) + " ReLUs kept, budget " + std::to_string(budget_) + ")");
    return summary;
  }

 protected:
  virtual std::vector<ParamGroup> search_groups(TrainContext& ctx, const Phase& phase) {
    return Method::param_groups(ctx, phase);
  }
  virtual void add_penalty(TrainContext& ctx, LossOutput& out) {}
  double aux_lr(const Phase& phase) const { return config_.search.aux_lr > 0 ? config_.search.aux_lr : phase.optim.lr; }

  Config config_;
  Net teacher_;
  Net kd_teacher_;  ///< teacher_, or its bfloat16 copy (search.kd.teacher_dtype)
  search::GateList gates_;
  int64_t total_ = 0;
  int64_t budget_ = 0;
  bool masks_final_ = false;
};

// AutoReP: joint search of weights, aux and coefficients under the budget penalty, projection to
// exactly the budget, finetune with masks frozen.
class AutorepMethod : public ReductionMethod {
 public:
  explicit AutorepMethod(const Config& config)
      : ReductionMethod(config),
        lambda_(config.search.lambda_mode, config.search.lambda, config.search.lambda_growth,
                config.search.lambda_decay, config.search.lambda_min, config.search.lambda_max) {}

  void on_phase_begin(TrainContext& ctx, const Phase& phase) override {
    if (phase.name != "finetune") return;
    const int64_t before = layers::kept_relus(ctx.model->sites());
    const int64_t kept = search::project_to_budget(gates_, budget_);
    ctx.log("projection: the search ended at " + std::to_string(before) + " ReLUs; kept the " +
            std::to_string(kept) + " with the largest aux (budget " + std::to_string(budget_) + ")");
  }

  void after_step(TrainContext& ctx) override {
    if (masks_final_) return;
    layers::hysteresis_update(*ctx.model);
    lambda_.update(last_rho_, rho_target());
  }

  void on_epoch_end(TrainContext& ctx, nlohmann::json& m) override {
    ReductionMethod::on_epoch_end(ctx, m);
    m["lambda"] = lambda_.value();
  }

  nlohmann::json state() const override {
    auto s = ReductionMethod::state();
    s["lambda"] = lambda_.state();
    return s;
  }
  void load_state(const nlohmann::json& s) override { lambda_.load_state(s.at("lambda")); }

 protected:
  std::vector<ParamGroup> search_groups(TrainContext& ctx, const Phase& phase) override {
    return {ParamGroup{weight_parameters(*ctx.model), phase.optim.lr, phase.optim.weight_decay},
            ParamGroup{layers::aux_parameters(*ctx.model), aux_lr(phase), 0.0},
            ParamGroup{layers::coefficient_parameters(*ctx.model), phase.optim.lr, 0.0}};
  }

  void add_penalty(TrainContext& ctx, LossOutput& out) override {
    if (masks_final_) return;
    auto rho = search::relu_density(gates_);
    last_rho_ = rho.item<double>();
    auto penalty = search::budget_penalty(rho, rho_target(), lambda_.value());
    out.loss = out.loss + penalty;
    out.parts.emplace_back("penalty", penalty.detach());
  }

 private:
  double rho_target() const { return static_cast<double>(budget_) / static_cast<double>(total_); }
  search::LambdaSchedule lambda_;
  double last_rho_ = 1.0;
};

// Baselines that fix the masks once at the budget and only finetune: `random` and `uniform`.
// They finetune for all train.epochs with the finetune optimiser (as many epochs as a search run
// trains in total, so the comparison does not favour autorep).
class FixedMaskMethod : public ReductionMethod {
 public:
  using ReductionMethod::ReductionMethod;

  std::vector<Phase> phases() const override {
    return {Phase{"finetune", 0, config_.train.epochs, config_.search.finetune_optim}};
  }

  void on_phase_begin(TrainContext& ctx, const Phase& phase) override {
    const int64_t kept = choose_masks(ctx);
    ctx.log(config_.method + " masks: kept " + std::to_string(kept) + " of " + std::to_string(total_) +
            " ReLUs (budget " + std::to_string(budget_) + ")");
  }

 protected:
  virtual int64_t choose_masks(TrainContext& ctx) = 0;
};

class RandomMethod : public FixedMaskMethod {
 public:
  using FixedMaskMethod::FixedMaskMethod;

 protected:
  int64_t choose_masks(TrainContext&) override { return search::random_masks(gates_, budget_, config_.train.seed); }
};

class UniformMethod : public FixedMaskMethod {
 public:
  using FixedMaskMethod::FixedMaskMethod;

 protected:
  // Ranks each site's ReLUs by the teacher's mean |pre-activation| over training images.
  int64_t choose_masks(TrainContext& ctx) override {
    Net recorder = build_model(ctx.model->spec(), search::magnitude_recorder_factory());
    init_from_teacher(*recorder, *teacher_);
    recorder->to(ctx.device);
    recorder->eval();
    const auto& data = *ctx.data;
    const int64_t n = std::min<int64_t>(data.train.size(), 2048);
    {
      torch::NoGradGuard no_grad;
      for (int64_t start = 0; start < n; start += config_.data.eval_batch_size) {
        auto idx = torch::arange(start, std::min(n, start + config_.data.eval_batch_size), torch::kLong);
        recorder->forward(make_batch(data, data.train, idx, /*train=*/false, 0).to(ctx.device));
      }
    }
    std::vector<torch::Tensor> scores;
    for (const auto& s : recorder->sites()) {
      auto* rec = dynamic_cast<search::MagnitudeRecorderImpl*>(s.module.get());
      TORCH_INTERNAL_ASSERT(rec != nullptr);
      scores.push_back(search::reduce_to_granularity(rec->mean_magnitude(), config_.gate.granularity));
    }
    return search::uniform_masks(gates_, scores, budget_);
  }
};

// SNL: relaxed slopes alpha*relu(x) + (1-alpha)*x under an L1 penalty whose weight grows by
// search.snl_growth per epoch while more ReLUs than the budget are alive; then the budget's worth
// of largest slopes keep their ReLU, the rest become the identity, and the model finetunes.
class SnlMethod : public ReductionMethod {
 public:
  explicit SnlMethod(const Config& config) : ReductionMethod(config), l1_weight_(config.search.snl_l1) {}

  layers::ActivationFactory factory() const override {
    return search::snl_gate_factory(gate_options(config_.gate));
  }

  void on_phase_begin(TrainContext& ctx, const Phase& phase) override {
    if (phase.name != "finetune") return;
    std::vector<torch::Tensor> alpha;
    for (const auto& g : gates_) alpha.push_back(g->aux());
    const int64_t alive = search::snl_alive(gates_);
    const int64_t kept = search::keep_top_scores(gates_, alpha, budget_);
    ctx.log("snl threshold: " + std::to_string(alive) + " slopes alive; kept the " + std::to_string(kept) +
            " largest (budget " + std::to_string(budget_) + "), the rest become the identity");
  }

  void after_step(TrainContext&) override {
    if (!masks_final_) search::snl_clamp(gates_);
  }

  void on_epoch_end(TrainContext& ctx, nlohmann::json& m) override {
    ReductionMethod::on_epoch_end(ctx, m);
    m["l1_weight"] = l1_weight_;
    if (masks_final_) return;
    const int64_t alive = search::snl_alive(gates_);
    m["alive"] = alive;
    if (alive > budget_) l1_weight_ *= config_.search.snl_growth;
  }

  std::string progress(TrainContext& ctx) const override {
    if (masks_final_) return ReductionMethod::progress(ctx);
    return "alive " + std::to_string(search::snl_alive(gates_)) + "/" + std::to_string(budget_);
  }

  nlohmann::json state() const override {
    auto s = ReductionMethod::state();
    s["l1_weight"] = l1_weight_;
    return s;
  }
  void load_state(const nlohmann::json& s) override { l1_weight_ = s.at("l1_weight").get<double>(); }

 protected:
  std::vector<ParamGroup> search_groups(TrainContext& ctx, const Phase& phase) override {
    search::snl_set_relaxed(gates_, true);
    return {ParamGroup{weight_parameters(*ctx.model), phase.optim.lr, phase.optim.weight_decay},
            ParamGroup{layers::aux_parameters(*ctx.model), aux_lr(phase), 0.0}};
  }

  void add_penalty(TrainContext&, LossOutput& out) override {
    if (masks_final_) return;
    auto l1 = search::snl_l1(gates_);
    auto weighted = l1_weight_ * l1;
    out.loss = out.loss + weighted;
    out.parts.emplace_back("l1", weighted.detach());
  }

 private:
  double l1_weight_;
};

}  // namespace

std::unique_ptr<Method> make_reduction_method(const Config& config) {
  if (config.method == "autorep") return std::make_unique<AutorepMethod>(config);
  if (config.method == "snl") return std::make_unique<SnlMethod>(config);
  if (config.method == "random") return std::make_unique<RandomMethod>(config);
  if (config.method == "uniform") return std::make_unique<UniformMethod>(config);
  return nullptr;
}

}  // namespace autorep::trainer
