// SNL (Selective Network Linearization): relaxed slopes alpha*relu(x) + (1-alpha)*x under an L1
// penalty whose weight grows by search.snl_growth per epoch while more ReLUs than the budget are
// alive; then the budget's worth of largest slopes keep their ReLU, the rest become the
// identity, and the model finetunes.
#include <torch/torch.h>

#include "layers/snl_gate.h"
#include "search/projection.h"
#include "search/snl.h"
#include "trainer/methods/reduction.h"
#include "trainer/methods/registry.h"

namespace autorep::trainer::methods {

namespace {

using engine::Phase;
using engine::PhaseKind;
using engine::TrainContext;

/// snl's own keys of the `search` section.
struct SnlOptions {
  double snl_l1 = 5.0;      ///< initial weight of the L1 term (mean |alpha| over ReLUs)
  double snl_growth = 1.1;  ///< L1 weight factor per epoch while over budget
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(SnlOptions, snl_l1, snl_growth)

class SnlMethod : public ReductionMethod {
 public:
  explicit SnlMethod(const engine::Config& config)
      : ReductionMethod(config), options_(config.search.method_keys.get<SnlOptions>()), l1_weight_(options_.snl_l1) {}

  layers::ActivationFactory factory() const override { return layers::snl_gate_factory(config_.gate); }

  void begin_phase(TrainContext& ctx, const Phase& phase, bool resumed) override {
    if (phase.kind == PhaseKind::Search) search::snl_set_relaxed(gates_, true);
    if (phase.kind == PhaseKind::Finetune && !resumed) {
      std::vector<torch::Tensor> alpha;
      for (const auto& g : gates_) alpha.push_back(g->aux());
      const int64_t alive = search::snl_alive(gates_);
      const int64_t kept = search::keep_top_scores(gates_, alpha, budget_);
      ctx.log("snl threshold: " + std::to_string(alive) + " slopes alive; kept the " + std::to_string(kept) +
              " largest (budget " + std::to_string(budget_) + "), the rest become the identity");
    }
    ReductionMethod::begin_phase(ctx, phase, resumed);
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
    if (alive > budget_) l1_weight_ *= options_.snl_growth;
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
  void load_state(const nlohmann::json& s) override {
    ReductionMethod::load_state(s);
    l1_weight_ = s.at("l1_weight").get<double>();
  }

 protected:
  std::vector<engine::ParamGroup> search_groups(TrainContext& ctx, const Phase& phase) const override {
    return {engine::ParamGroup{weight_parameters(*ctx.model), phase.optim.lr, phase.optim.weight_decay},
            engine::ParamGroup{layers::aux_parameters(*ctx.model), aux_lr(phase), 0.0}};
  }

  void add_penalty(TrainContext&, engine::LossOutput& out) override {
    if (masks_final_) return;
    auto l1 = search::snl_l1(gates_);
    auto weighted = l1_weight_ * l1;
    out.loss = out.loss + weighted;
    out.parts.emplace_back("l1", weighted.detach());
  }

 private:
  SnlOptions options_;
  double l1_weight_;
};

}  // namespace

MethodEntry snl_method() {
  MethodEntry e;
  e.name = "snl";
  e.summary = "SNL: slopes under a growing L1 penalty, the largest kept, the rest become the identity";
  e.schema.search_keys = SnlOptions{};
  // Its replacements are fixed identities: the polynomial settings are never read.
  e.schema.unused_keys = {"gate.degree", "gate.scale1", "gate.scale2", "gate.dapa"};
  e.make = [](const engine::Config& c) { return std::make_unique<SnlMethod>(c); };
  return e;
}

}  // namespace autorep::trainer::methods
