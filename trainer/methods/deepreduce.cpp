// DeepReDuce (DESIGN.md §10): stage criticality, ReLU culling, thinning and reshaping, then a KD
// finetune of the chosen network. Sites are gates at layer granularity: a kept site is a ReLU,
// a culled or thinned one the identity (0 + 1·x + 0·x², exported as that polynomial) or, with
// search.deepreduce.replacement "polynomial", a trained DaPa polynomial.
#include "trainer/methods/deepreduce.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>

#include "layers/util/atomic_file.h"
#include "layers/util/json_check.h"
#include "layers/util/text.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/distributed.h"
#include "trainer/methods/reduction.h"
#include "trainer/methods/registry.h"
#include "trainer/methods/run_model.h"
#include "trainer/models/registry.h"

namespace autorep::trainer::methods::deepreduce {

namespace fs = std::filesystem;
using engine::Phase;
using engine::PhaseKind;
using engine::TrainContext;

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Options, profile_epochs, replacement, widths, stem_strides, fixed,
                                                keep_stages, thinned)

Options options_of(const engine::Config& config) {
  return config.search.method_keys.value("deepreduce", nlohmann::json(Options{})).get<Options>();
}

std::vector<StageCount> stage_counts(const models::ModelSpec& spec) {
  return stage_counts(*models::build_model(spec, layers::relu_factory()));
}

std::vector<StageCount> stage_counts(const models::NetImpl& net) {
  std::vector<StageCount> out;
  for (const auto& st : net.stages()) {
    StageCount c{st.name, 0, 0};
    for (size_t k = 0; k < st.sites.size(); ++k) {
      const int64_t n = net.sites()[st.sites[k]].elements();
      c.relus += n;
      if (!st.thinned[k]) c.thinned += n;
    }
    out.push_back(c);
  }
  return out;
}

std::vector<std::string> Plan::kept_names(const std::vector<StageCount>& stages) const {
  std::vector<std::string> names;
  for (size_t s = 0; s < kept.size(); ++s)
    if (kept[s]) names.push_back(stages[s].name);
  return names;
}

std::string Plan::describe(const std::vector<StageCount>& stages) const {
  const std::vector<std::string> names = kept_names(stages);
  std::string text = names.empty() ? std::string("all stages culled (linear)") : "keep " + util::join(names, "+");
  if (thinned && !names.empty()) text += ", thinned";
  if (width != 1.0) text += ", width " + util::short_number(width);
  if (stem_stride != 1) text += ", stem stride " + std::to_string(stem_stride);
  return text;
}

nlohmann::json Plan::to_json(const std::vector<StageCount>& stages) const {
  return {{"keep_stages", kept_names(stages)}, {"thinned", thinned},  {"width", width},
          {"stem_stride", stem_stride}, {"relus", relus}, {"network", describe(stages)}};
}

std::vector<bool> Plan::site_kept(const models::NetImpl& net) const {
  std::vector<bool> out(net.sites().size(), false);
  const auto& stages = net.stages();
  TORCH_CHECK(stages.size() == kept.size(), "deepreduce: plan for ", kept.size(), " stages, model has ", stages.size());
  for (size_t s = 0; s < stages.size(); ++s)
    for (size_t k = 0; k < stages[s].sites.size(); ++k)
      out[stages[s].sites[k]] = kept[s] && !(thinned && stages[s].thinned[k]);
  return out;
}

std::vector<size_t> Profile::cull_order() const {
  std::vector<size_t> order(stages.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return stages[a].criticality < stages[b].criticality; });
  return order;
}

nlohmann::json to_json(const Profile& p) {
  nlohmann::json stages = nlohmann::json::array();
  for (const auto& s : p.stages)
    stages.push_back({{"name", s.name}, {"relus", s.relus}, {"accuracy", s.accuracy}, {"criticality", s.criticality}});
  std::vector<std::string> order;
  for (size_t i : p.cull_order()) order.push_back(p.stages[i].name);
  return {{"linear_accuracy", p.linear_accuracy}, {"stages", stages}, {"cull_order", order}};
}

Profile profile_from_json(const nlohmann::json& j) {
  Profile p;
  p.linear_accuracy = j.at("linear_accuracy").get<double>();
  for (const auto& s : j.at("stages"))
    p.stages.push_back({s.at("name").get<std::string>(), s.at("relus").get<int64_t>(), s.at("accuracy").get<double>(),
                        s.at("criticality").get<double>()});
  return p;
}

std::vector<Plan> candidates(const models::ModelSpec& full, const std::vector<size_t>& cull_order,
                             const Options& options) {
  std::vector<Plan> out;
  std::set<std::vector<bool>> linear_seen;  // the all-culled network is one network at any reshape
  for (const double width : options.widths) {
    for (const int64_t stride : options.stem_strides) {
      if ((width != 1.0 || stride != 1) && !models::model_reshapes(full.name)) continue;
      models::ModelSpec spec = full;
      spec.width = full.width * width;
      spec.stem_stride = full.stem_stride * stride;
      const auto counts = stage_counts(spec);
      TORCH_CHECK(counts.size() == cull_order.size(), "deepreduce: the profile has ", cull_order.size(),
                  " stages, model ", full.name, " has ", counts.size());
      for (size_t culled = 0; culled <= counts.size(); ++culled) {
        std::vector<bool> kept(counts.size(), true);
        for (size_t c = 0; c < culled; ++c) kept[cull_order[c]] = false;
        int64_t unthinned = -1;
        for (const bool thin : {false, true}) {
          if (culled == counts.size() && (thin || !linear_seen.insert(kept).second)) continue;
          Plan p{kept, thin, spec.width, spec.stem_stride, 0};
          for (size_t s = 0; s < counts.size(); ++s)
            if (kept[s]) p.relus += thin ? counts[s].thinned : counts[s].relus;
          if (thin && p.relus == unthinned) continue;  // one-site stages: thinning drops nothing
          unthinned = p.relus;
          out.push_back(p);
        }
      }
    }
  }
  return out;
}

size_t choose(const std::vector<Plan>& list, int64_t budget) {
  size_t best = list.size();
  for (size_t i = 0; i < list.size(); ++i)
    if (list[i].relus <= budget && (best == list.size() || list[i].relus > list[best].relus)) best = i;
  TORCH_CHECK(best < list.size(), "deepreduce: no candidate network within ", budget, " ReLUs");
  return best;
}

namespace {

// What a profile depends on: the teacher file, and every setting of the short KD runs.
nlohmann::json profile_key(const engine::Config& config) {
  std::error_code ec;
  const fs::path teacher = fs::absolute(config.search.teacher).lexically_normal();
  const auto size = fs::file_size(teacher, ec);
  const auto time = fs::last_write_time(teacher, ec).time_since_epoch().count();
  const Options o = options_of(config);
  nlohmann::json all = engine::to_json(config);
  all["gate"].erase("granularity");  // deepreduce's sites are whole layers whatever the config says
  all["gate"].erase("threshold");
  return {{"teacher", teacher.string()}, {"teacher_bytes", ec ? 0 : size}, {"teacher_time", time},
          {"profile_epochs", o.profile_epochs}, {"replacement", o.replacement}, {"data", all.at("data")},
          {"model", all.at("model")}, {"gate", all.at("gate")}, {"finetune_optim", all.at("search").at("finetune_optim")},
          {"kd", all.at("search").at("kd")}, {"seed", config.train.seed}};
}

std::string profile_file(const engine::Config& config) { return (fs::path(profile_dir(config)) / "profile.json").string(); }

// The profile run of one network: only `stage`'s ReLUs kept ("" = none), the rest as the
// config's replacement, for profile_epochs.
engine::Config profile_run_config(const engine::Config& config, const std::string& stage) {
  engine::Config sub = config;
  sub.method = "deepreduce";
  sub.train.epochs = options_of(config).profile_epochs;
  nlohmann::json o = sub.search.method_keys.value("deepreduce", nlohmann::json(Options{}));
  o["fixed"] = true;
  o["keep_stages"] = stage.empty() ? std::vector<std::string>{} : std::vector<std::string>{stage};
  o["thinned"] = false;
  sub.search.method_keys["deepreduce"] = o;
  return sub;
}

}  // namespace

std::string profile_dir(const engine::Config& config) {
  const fs::path teacher = fs::absolute(config.search.teacher).lexically_normal();
  const fs::path folder = teacher.parent_path();
  const fs::path run = folder.filename() == "checkpoints" ? folder.parent_path() : folder;
  return (run / "deepreduce-profile").string();
}

bool read_profile(const engine::Config& config, Profile* out) {
  const std::string path = profile_file(config);
  if (!fs::exists(path)) return false;
  try {
    const nlohmann::json j = engine::read_json_file(path);
    if (j.value("key", nlohmann::json()) != profile_key(config) || !j.contains("profile")) return false;
    *out = profile_from_json(j.at("profile"));
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

Profile ensure_profile(const engine::Config& config, bool quiet) {
  Profile profile;
  if (read_profile(config, &profile)) return profile;
  const std::string dir = profile_dir(config);
  models::ModelSpec spec;
  {
    // The stages of the teacher's model (the profile is of the full-size network).
    const auto meta = engine::read_checkpoint_meta(config.search.teacher);
    spec = models::spec_from_json(meta.state.at("model_spec"));
  }
  const auto counts = stage_counts(spec);
  auto say = [&](const std::string& line) {
    if (!quiet && engine::dist::is_primary()) std::cerr << line << std::endl;
  };
  say("deepreduce: criticality profile of " + config.search.teacher + " in " + dir + " (" +
      std::to_string(counts.size() + 1) + " networks x " + std::to_string(options_of(config).profile_epochs) +
      " epochs)");
  auto accuracy_of = [&](const std::string& name, const std::string& stage) {
    engine::RunOptions ro;
    ro.out_dir = (fs::path(dir) / name).string();
    ro.resume = fs::exists(fs::path(ro.out_dir) / "checkpoints" / "last.pt");
    ro.quiet = quiet;
    const engine::RunResult r = train(profile_run_config(config, stage), ro);
    const double acc = r.best_val_accuracy >= 0 ? r.best_val_accuracy : r.best_accuracy;
    say("deepreduce: profile " + name + ": accuracy " + util::fixed(100.0 * acc, 2) + "%");
    return acc;
  };
  profile.linear_accuracy = accuracy_of("linear", "");
  for (const auto& c : counts) {
    const double acc = accuracy_of("stage-" + c.name, c.name);
    profile.stages.push_back({c.name, c.relus, acc, (acc - profile.linear_accuracy) / static_cast<double>(c.relus)});
  }
  if (engine::dist::is_primary())
    util::write_file_atomic(profile_file(config),
                            nlohmann::json{{"key", profile_key(config)}, {"profile", to_json(profile)}}.dump(2) + "\n");
  engine::dist::barrier();
  return profile;
}

namespace {

class DeepReduceMethod : public ReductionMethod {
 public:
  explicit DeepReduceMethod(const engine::Config& config) : ReductionMethod(config), options_(options_of(config)) {}

  layers::ActivationFactory factory() const override {
    layers::GateOptions g = config_.gate;
    g.granularity(layers::Granularity::Layer);
    if (!polynomial()) g.dapa().enabled(false);
    return layers::gate_factory(g);
  }

  std::vector<Phase> phases() const override {
    return {Phase{PhaseKind::Finetune, 0, config_.train.epochs, config_.search.finetune_optim}};
  }

  models::ModelSpec model_spec(models::ModelSpec spec) override {
    full_spec_ = spec;
    stages_ = stage_counts(spec);
    full_total_ = 0;
    for (const auto& s : stages_) full_total_ += s.relus;
    if (options_.fixed) {
      plan_ = fixed_plan();
    } else {
      Profile profile;
      if (!read_profile(config_, &profile))
        throw std::runtime_error("deepreduce: no criticality profile for " + config_.search.teacher + " in " +
                                 profile_dir(config_) + " (autorep train makes it first)");
      const auto list = candidates(spec, profile.cull_order(), options_);
      plan_ = list[choose(list, config_.search.budget.resolve(full_total_))];
    }
    spec.width = plan_.width;
    spec.stem_stride = plan_.stem_stride;
    return spec;
  }

  void prepare(TrainContext& ctx, bool resuming) override {
    teacher_ = load_teacher(config_, full_spec_);
    const bool same_shape = plan_.width == full_spec_.width && plan_.stem_stride == full_spec_.stem_stride;
    if (!resuming && same_shape) init_from_teacher(*ctx.model, *teacher_);
    teacher_->to(ctx.device);
    teacher_->eval();
    kd_teacher_ = kd_teacher(*teacher_, config_.search.kd.teacher_dtype, ctx.device, config_.train.channels_last);
    gates_ = layers::gates(*ctx.model);
    total_ = full_total_;
    budget_ = options_.fixed ? plan_.relus : config_.search.budget.resolve(full_total_);
    const std::vector<bool> kept = plan_.site_kept(*ctx.model);
    if (!resuming) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < gates_.size(); ++i) {
        gates_[i]->mask().fill_(kept[i] ? 1.0 : 0.0);
        if (!polynomial()) {  // the identity: 0 + 1·x + 0·x²
          gates_[i]->c0().zero_();
          gates_[i]->c1().fill_(1.0 / gates_[i]->options().scale1());
          gates_[i]->c2().zero_();
        }
      }
      if (polynomial()) calibrate_gates(ctx);
    }
    if (!polynomial())
      for (auto& c : layers::coefficient_parameters(*ctx.model)) c.requires_grad_(false);
    for (auto& a : layers::aux_parameters(*ctx.model)) a.requires_grad_(false);
    const int64_t relus = plan_.relus;
    if (!resuming) {  // a resumed run's masks come from its checkpoint, after this
      const int64_t built = layers::kept_relus(ctx.model->sites());
      TORCH_CHECK(built == relus, "deepreduce: the built network keeps ", built, " ReLUs, its plan ", relus);
    }
    ctx.log("deepreduce: " + plan_.describe(stages_) + ": " + std::to_string(relus) + " ReLUs (budget " +
            std::to_string(budget_) + " of " + std::to_string(full_total_) + "), " +
            (same_shape ? "weights from the teacher" : "trained from scratch (reshaped)") + ", replaced sites " +
            (polynomial() ? "DaPa polynomials" : "the identity"));
  }

  std::vector<engine::ParamGroup> param_groups(TrainContext& ctx, const Phase& phase) const override {
    std::vector<engine::ParamGroup> groups = {{weight_parameters(*ctx.model), phase.optim.lr, phase.optim.weight_decay}};
    if (polynomial()) groups.push_back({layers::coefficient_parameters(*ctx.model), phase.optim.lr, 0.0});
    return groups;
  }

  nlohmann::json state() const override {
    auto s = ReductionMethod::state();
    s["plan"] = plan_.to_json(stages_);
    return s;
  }

 private:
  bool polynomial() const { return options_.replacement == "polynomial"; }

  Plan fixed_plan() const {
    Plan p;
    p.kept.assign(stages_.size(), false);
    for (const auto& name : options_.keep_stages) {
      size_t s = 0;
      while (s < stages_.size() && stages_[s].name != name) ++s;
      if (s == stages_.size()) {
        std::vector<std::string> names;
        for (const auto& st : stages_) names.push_back(st.name);
        throw std::runtime_error("search.deepreduce.keep_stages: " + full_spec_.name + " has no stage \"" + name +
                                 "\" (its stages: " + util::join(names) + ")");
      }
      p.kept[s] = true;
    }
    p.thinned = options_.thinned;
    p.width = full_spec_.width;
    p.stem_stride = full_spec_.stem_stride;
    for (size_t s = 0; s < stages_.size(); ++s)
      if (p.kept[s]) p.relus += p.thinned ? stages_[s].thinned : stages_[s].relus;
    return p;
  }

  Options options_;
  models::ModelSpec full_spec_;
  std::vector<StageCount> stages_;
  int64_t full_total_ = 0;
  Plan plan_;
};

}  // namespace

}  // namespace autorep::trainer::methods::deepreduce

namespace autorep::trainer::methods {

MethodEntry deepreduce_method() {
  using deepreduce::Options;
  MethodEntry e;
  e.name = "deepreduce";
  e.summary = "DeepReDuce: cull the least critical stages, thin and reshape; the network with the most ReLUs "
              "within the budget, KD-trained (layer granularity)";
  e.schema.search_keys = {{"deepreduce", Options{}}};
  // No search phase; sites are whole layers.
  e.schema.unused_keys = {"search.search_epochs", "search.search_optim", "search.aux_lr", "gate.granularity",
                          "gate.threshold"};
  e.schema.validate = [](const engine::Config& c, const std::string& source) {
    Options o;
    try {
      o = deepreduce::options_of(c);
    } catch (const nlohmann::json::exception& ex) {
      util::json_fail(source, "search.deepreduce", ex.what());
    }
    if (o.profile_epochs < 1) util::json_fail(source, "search.deepreduce.profile_epochs", "must be >= 1");
    util::check_one_of(source, "search.deepreduce.replacement", o.replacement, {"identity", "polynomial"});
    if (o.widths.empty()) util::json_fail(source, "search.deepreduce.widths", "must list at least one width");
    for (double w : o.widths)
      if (!(w > 0 && w <= 1)) util::json_fail(source, "search.deepreduce.widths", "each width must be in (0, 1]");
    if (o.stem_strides.empty()) util::json_fail(source, "search.deepreduce.stem_strides", "must list at least one stride");
    for (int64_t s : o.stem_strides)
      if (s < 1 || s > 8) util::json_fail(source, "search.deepreduce.stem_strides", "each stride must be 1 to 8");
  };
  e.make = [](const engine::Config& c) { return std::make_unique<deepreduce::DeepReduceMethod>(c); };
  e.before_training = [](const engine::Config& c, const engine::RunOptions& o) {
    if (c.method == "deepreduce" && !deepreduce::options_of(c).fixed) deepreduce::ensure_profile(c, o.quiet);
  };
  return e;
}

}  // namespace autorep::trainer::methods
