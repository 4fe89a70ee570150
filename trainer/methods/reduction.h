#pragma once
/// What the ReLU-reduction methods (autorep, snl, uniform, random) share: a gate at every site,
/// a teacher to start from and distil, masks brought to an exact budget, and a finetune with
/// masks frozen. Each method derives from ReductionMethod in its own file.

#include <memory>
#include <string>
#include <vector>

#include "layers/gate.h"
#include "search/fairness.h"
#include "search/objective.h"
#include "trainer/engine/method.h"
#include "trainer/models/folded.h"
#include "trainer/models/net.h"

namespace autorep::trainer::methods {

/// The network weights of a gated model: every parameter that is not a gate's aux, c0, c1, c2.
std::vector<torch::Tensor> weight_parameters(models::NetImpl& model);

/// Loads the teacher checkpoint of a reduction run (an all-ReLU baseline) and checks it matches
/// the student spec. Throws naming search.teacher for a missing, unreadable or incompatible
/// checkpoint.
models::Net load_teacher(const engine::Config& config, const models::ModelSpec& student);

/// Copies every parameter and buffer of the teacher into the student (same names; the
/// student's gate parameters have no counterpart and keep their initial values).
void init_from_teacher(models::NetImpl& student, models::NetImpl& teacher);

/// The network that computes the KD targets: `teacher` with its batch norms folded
/// (models::FoldedNet) in search.kd.teacher_dtype ("float32" or "bfloat16") on `device`, in
/// channels_last memory on the CPU or with `channels_last` (train.channels_last). The teacher
/// is not changed.
std::shared_ptr<const models::FoldedNet> kd_teacher(models::NetImpl& teacher, const std::string& dtype,
                                                    const torch::Device& device, bool channels_last = false);

/// The teacher's logits for `x` as float32, without autograd (`x` is cast to the teacher's dtype).
torch::Tensor teacher_logits(const models::FoldedNet& teacher, const torch::Tensor& x);

/// True when this CPU computes bfloat16 natively (AVX512-BF16; AMX CPUs have it too), so a
/// bfloat16 teacher is faster than a float32 one; without it the bfloat16 forward is emulated
/// and slower.
bool cpu_has_native_bf16();

/// search.search_epochs of search, then finetune for the rest of train.epochs; the loss is
/// CE + KD from the teacher plus the method's penalty while masks can still move.
class ReductionMethod : public engine::Method {
 public:
  explicit ReductionMethod(const engine::Config& config) : config_(config) {}

  layers::ActivationFactory factory() const override;
  std::vector<engine::Phase> phases() const override;
  /// Loads the teacher (and the student's start from it), resolves the budget once.
  void prepare(engine::TrainContext& ctx, bool resuming) override;
  /// Entering the finetune: masks frozen for good.
  void begin_phase(engine::TrainContext& ctx, const engine::Phase& phase, bool resumed) override;
  std::vector<engine::ParamGroup> param_groups(engine::TrainContext& ctx, const engine::Phase& phase) const override;
  engine::LossOutput loss(engine::TrainContext& ctx, const torch::Tensor& x, const torch::Tensor& y,
                          const torch::Tensor& logits) override;
  bool may_be_best(const engine::TrainContext&, const engine::Phase& phase) const override {
    return phase.kind == engine::PhaseKind::Finetune;
  }
  void before_update(engine::TrainContext& ctx) override;
  /// Keeps every polynomial's curvature within its widest fit (layers::cap_curvature).
  void after_step(engine::TrainContext& ctx) override;
  void on_epoch_end(engine::TrainContext& ctx, nlohmann::json& m) override;
  std::string progress(engine::TrainContext& ctx) const override;
  /// {"budget"} and, with search.fairness, {"fairness": multipliers and the epoch's record}.
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;
  models::NetImpl* reference_model() override { return teacher_.get(); }

 protected:
  /// Parameter groups of the search phase (default: every parameter with the phase's settings).
  virtual std::vector<engine::ParamGroup> search_groups(engine::TrainContext& ctx, const engine::Phase& phase) const;
  /// Adds the method's penalty while masks move.
  virtual void add_penalty(engine::TrainContext& ctx, engine::LossOutput& out) {}
  double aux_lr(const engine::Phase& phase) const {
    return config_.search.aux_lr > 0 ? config_.search.aux_lr : phase.optim.lr;
  }
  /// Calibration pass of the gates (gate.dapa.calibration_batches) before the first step.
  void calibrate_gates(engine::TrainContext& ctx);
  double rho_target() const { return static_cast<double>(budget_) / static_cast<double>(total_); }

  engine::Config config_;
  models::Net teacher_;
  std::shared_ptr<const models::FoldedNet> kd_teacher_;  ///< teacher_ folded (search.kd.teacher_dtype)
  search::GateList gates_;
  int64_t total_ = 0;
  int64_t budget_ = 0;       ///< search.budget resolved against total_ (in the run's state)
  bool masks_final_ = false;  ///< true from the finetune on
  /// search.fairness: the multipliers (null when off) and each class's group on the device.
  std::unique_ptr<search::GroupFairness> fairness_;
  torch::Tensor group_of_class_;

 private:
  /// Whether the fairness penalty applies now (search.fairness on, and the finetune or
  /// search.fairness.search).
  bool fair_now() const { return fairness_ && (masks_final_ || config_.search.fairness.search); }
};

}  // namespace autorep::trainer::methods
