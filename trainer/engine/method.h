#pragma once
/// A training method (baseline, autorep, snl, uniform, random, ...) as a set of hooks the
/// training loop calls: which activation sits at each site, the phases and their optimisers,
/// the loss, what happens after each optimiser step and at phase and epoch boundaries. The
/// methods themselves and their registry live in trainer/methods; the engine knows only this.

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "layers/site.h"
#include "trainer/engine/config.h"
#include "trainer/models/net.h"

namespace torch::optim {
class Optimizer;
}

namespace autorep::trainer::engine {

namespace dist {
class Group;
}

/// What a phase does; its name is what metrics.jsonl and checkpoints record.
enum class PhaseKind {
  Train,     ///< "train": a baseline's whole run
  Search,    ///< "search": weights and masks move together
  Finetune,  ///< "finetune": masks are fixed, the network adapts
};
/// "train", "search", "finetune".
std::string phase_name(PhaseKind kind);

/// One phase of a run: a contiguous range of epochs trained with one optimiser and schedule.
struct Phase {
  PhaseKind kind = PhaseKind::Train;
  int64_t first_epoch = 0;  ///< 0-based
  int64_t epochs = 0;
  OptimOptions optim;
  std::string name() const { return phase_name(kind); }
};

/// The phase that trains `epoch` (its position in `phases` in *index); every epoch of a run
/// belongs to exactly one.
const Phase& phase_at(const std::vector<Phase>& phases, int64_t epoch, size_t* index);

/// A set of parameters with its own learning rate and weight decay.
struct ParamGroup {
  std::vector<torch::Tensor> params;
  double lr = 0.0;
  double weight_decay = 0.0;
};


/// What the training loop shares with the method.
struct TrainContext {
  const Config* config = nullptr;
  models::Net model;
  torch::Device device{torch::kCPU};
  const data::DataSplits* data = nullptr;
  torch::optim::Optimizer* optimizer = nullptr;
  std::string out_dir;
  int64_t epoch = 0;
  int64_t global_step = 0;  ///< optimiser steps taken so far in the run
  int64_t phase_step = 0;   ///< optimiser steps taken so far in the current phase
  int64_t steps_per_epoch = 0;
  /// The run's process group (null in a one-process run): what a method reduces across processes.
  dist::Group* group = nullptr;
  /// Appends a line to the run's log (and the console).
  std::function<void(const std::string&)> log;
};

/// Loss of one batch, with its named parts (scalar tensors, each already weighted as it enters
/// `loss`): the trainer averages them over the epoch into the metrics' `loss_parts`.
struct LossOutput {
  torch::Tensor loss;
  std::vector<std::pair<std::string, torch::Tensor>> parts;
  /// Names of parts the spike guard leaves out of the loss it judges: terms whose weight the
  /// method raises between steps (the fairness multipliers' dual step), whose growth is the
  /// schedule working, not divergence. A non-finite loss is judged whatever its parts.
  std::vector<std::string> unjudged;
};

class Method {
 public:
  virtual ~Method() = default;
  /// The activation placed at each site of the trained model.
  virtual layers::ActivationFactory factory() const = 0;
  /// Phases of the run, covering epochs 0 .. train.epochs-1 in order.
  virtual std::vector<Phase> phases() const = 0;
  /// The model the run trains, given the one its config describes (DeepReDuce's reshaping
  /// narrows it or lowers its resolution). Called once, before the model is built.
  virtual models::ModelSpec model_spec(models::ModelSpec from_config) { return from_config; }
  /// Called once after the model is built (fresh or resumed), before any state is loaded.
  virtual void prepare(TrainContext& ctx, bool resuming) {}
  /// Called whenever the loop enters a phase, before its optimiser is built: afresh
  /// (`resumed` false: e.g. project the masks) or when a resumed run continues inside it
  /// (`resumed` true: restore what must hold in the phase, e.g. frozen masks).
  virtual void begin_phase(TrainContext& ctx, const Phase& phase, bool resumed) {}
  /// Parameter groups of a phase (default: every model parameter with the phase's lr and wd).
  /// Has no side effects.
  virtual std::vector<ParamGroup> param_groups(TrainContext& ctx, const Phase& phase) const;
  /// Loss of a training batch; `logits` is the student's output.
  virtual LossOutput loss(TrainContext& ctx, const torch::Tensor& x, const torch::Tensor& y,
                          const torch::Tensor& logits);
  /// Called before the optimiser step of a step that is taken (not for one the spike guard skips).
  virtual void before_update(TrainContext& ctx) {}
  /// Called right after each optimiser step.
  virtual void after_step(TrainContext& ctx) {}
  /// Called at the end of each training epoch (before evaluation); adds method-specific
  /// numbers to the epoch's metrics line.
  virtual void on_epoch_end(TrainContext& ctx, nlohmann::json& metrics) {}
  /// Short text appended to the progress line (e.g. kept ReLUs against the budget).
  virtual std::string progress(TrainContext& ctx) const { return ""; }
  /// Whether a checkpoint of this epoch may become best.pt (e.g. only once masks are final).
  virtual bool may_be_best(const TrainContext& ctx, const Phase& phase) const { return true; }
  /// Method state that must survive a resume (a reduction's resolved budget is its "budget").
  virtual nlohmann::json state() const { return nlohmann::json::object(); }
  /// The network whose per-class accuracy this run's is compared with (a reduction's teacher),
  /// on the run's device; null for none. Valid after prepare().
  virtual models::NetImpl* reference_model() { return nullptr; }
  virtual void load_state(const nlohmann::json& state) {}
};

/// Cross-entropy with the configured label smoothing: the batch mean, or with `per_sample` one
/// value per sample.
torch::Tensor classification_loss(const Config& config, const torch::Tensor& logits, const torch::Tensor& y,
                                  bool per_sample = false);

}  // namespace autorep::trainer::engine
