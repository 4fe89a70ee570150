// AutoReP: joint search of weights, aux and coefficients under the budget penalty, projection to
// exactly the budget, finetune with masks frozen (DESIGN.md §4).
#include <torch/torch.h>

#include "layers/util/json_check.h"
#include "search/objective.h"
#include "search/projection.h"
#include "trainer/methods/reduction.h"
#include "trainer/methods/registry.h"

namespace autorep::trainer::methods {

namespace {

using engine::Phase;
using engine::PhaseKind;
using engine::TrainContext;

/// autorep's own keys of the `search` section.
struct AutorepOptions {
  double lambda = 120.0;                 ///< penalty weight on relu(rho - rho*)
  std::string lambda_mode = "constant";  ///< constant | adaptive
  double lambda_growth = 1.05;           ///< adaptive: factor per step while over budget
  double lambda_decay = 0.99;            ///< adaptive: factor per step while within budget
  double lambda_min = 1.0;
  double lambda_max = 1e4;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(AutorepOptions, lambda, lambda_mode, lambda_growth, lambda_decay,
                                                lambda_min, lambda_max)

AutorepOptions options_of(const engine::Config& config) { return config.search.method_keys.get<AutorepOptions>(); }

class AutorepMethod : public ReductionMethod {
 public:
  explicit AutorepMethod(const engine::Config& config)
      : ReductionMethod(config),
        options_(options_of(config)),
        lambda_(options_.lambda_mode, options_.lambda, options_.lambda_growth, options_.lambda_decay,
                options_.lambda_min, options_.lambda_max) {}

  void begin_phase(TrainContext& ctx, const Phase& phase, bool resumed) override {
    if (phase.kind == PhaseKind::Finetune && !resumed) {
      const int64_t before = layers::kept_relus(ctx.model->sites());
      search_end_kept_ = before;
      const int64_t kept = search::project_to_budget(gates_, budget_);
      ctx.log("projection: the search ended at " + std::to_string(before) + " ReLUs; kept the " +
              std::to_string(kept) + " with the largest aux (budget " + std::to_string(budget_) + ")");
    }
    ReductionMethod::begin_phase(ctx, phase, resumed);
  }

  void after_step(TrainContext& ctx) override {
    ReductionMethod::after_step(ctx);
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
    if (search_end_kept_ >= 0) s["search_end_kept"] = search_end_kept_;
    return s;
  }
  void load_state(const nlohmann::json& s) override {
    ReductionMethod::load_state(s);
    lambda_.load_state(s.at("lambda"));
    search_end_kept_ = s.value("search_end_kept", int64_t{-1});
  }

 protected:
  std::vector<engine::ParamGroup> search_groups(TrainContext& ctx, const Phase& phase) const override {
    return {engine::ParamGroup{weight_parameters(*ctx.model), phase.optim.lr, phase.optim.weight_decay},
            engine::ParamGroup{layers::aux_parameters(*ctx.model), aux_lr(phase), 0.0},
            engine::ParamGroup{layers::coefficient_parameters(*ctx.model), phase.optim.lr, 0.0}};
  }

  void add_penalty(TrainContext& ctx, engine::LossOutput& out) override {
    if (masks_final_) return;
    auto rho = search::relu_density(gates_);
    last_rho_ = rho.item<double>();
    auto penalty = search::budget_penalty(rho, rho_target(), lambda_.value());
    out.loss = out.loss + penalty;
    out.parts.emplace_back("penalty", penalty.detach());
  }

 private:
  AutorepOptions options_;
  search::LambdaSchedule lambda_;
  double last_rho_ = 1.0;
  int64_t search_end_kept_ = -1;  ///< ReLUs kept when the search ended (before the projection)
};

}  // namespace

MethodEntry autorep_method() {
  MethodEntry e;
  e.name = "autorep";
  e.summary = "AutoReP: learned masks under a budget penalty, projected to the exact budget, then finetuned";
  e.schema.search_keys = AutorepOptions{};
  e.schema.validate = [](const engine::Config& c, const std::string& source) {
    util::check_one_of(source, "search.lambda_mode", options_of(c).lambda_mode, {"constant", "adaptive"});
  };
  e.make = [](const engine::Config& c) { return std::make_unique<AutorepMethod>(c); };
  return e;
}

}  // namespace autorep::trainer::methods
