#include "trainer/engine/loop.h"

#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <iomanip>
#include <sstream>
#include <thread>

#include "layers/gate.h"
#include "layers/util/atomic_file.h"  // append_line
#include "layers/util/text.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/device.h"
#include "trainer/engine/distributed.h"
#include "trainer/engine/epoch_eval.h"
#include "trainer/engine/optim.h"
#include "trainer/engine/replicas.h"
#include "trainer/engine/run_folder.h"
#include "trainer/engine/reporter.h"
#include "trainer/engine/interrupt.h"
#include "trainer/engine/spike_guard.h"
#include "trainer/engine/step.h"
#include "trainer/models/registry.h"

namespace autorep::trainer::engine {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// One run from its folder to its last checkpoint. Only rank 0 of a multi-process run writes
// files and prints; every process trains.
class TrainingRun {
 public:
  TrainingRun(const Config& config, Method& method, const RunOptions& options)
      : config_(config),
        method_(method),
        options_(options),
        out_(options.out_dir),
        last_path_((out_ / "checkpoints" / "last.pt").string()),
        rollback_path_((out_ / "checkpoints" / "rollback.pt").string()),
        best_path_((out_ / "checkpoints" / "best.pt").string()),
        metrics_path_((out_ / "metrics.jsonl").string()),
        group_(dist::current()),
        primary_(dist::is_primary()),
        world_(group_ ? group_->size() : 1),
        rank_(group_ ? group_->rank() : 0),
        guard_(config.train.skip_spikes) {}

  RunResult run() {
    open_folder();
    Reporter report(primary_ ? (out_ / "log.txt").string() : std::string(), options_.quiet || !primary_);
    report_ = &report;
    build();
    result_.out_dir = options_.out_dir;
    result_.best_checkpoint = best_path_;
    last_checkpoint_ = Clock::now();
    bool resumed_inside_phase = options_.resume;
    StepSnapshot running_stats(*ctx_.model);
    running_stats_ = &running_stats;
    while (epoch_ < config_.train.epochs) {
      size_t pi = 0;
      const Phase& phase = phase_at(phases_, epoch_, &pi);
      ctx_.epoch = epoch_;
      if (pi != current_phase_) enter_phase(phase, pi, resumed_inside_phase && saved_phase_ == phase.name());
      resumed_inside_phase = false;
      try {
        if (!train_epoch(phase)) return result_;
      } catch (const Diverged& d) {
        roll_back(d);  // or rethrows: no rollback left
        resumed_inside_phase = true;
        continue;
      }
      end_epoch(phase);
      ++epoch_;
    }
    return finish();
  }

 private:
  // Checks the folder against --resume and writes config.json (run_folder.h).
  void open_folder() { state_ = open_run_folder(config_, options_, last_path_, primary_, world_); }

  // Threads, device, data, model, the method's preparation and the resumed position.
  void build() {
    // Processes sharing a machine share its cores.
    int64_t thread_request = config_.train.threads;
    if (group_ && thread_request == 0)
      thread_request =
          std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / group_->local_size());
    threads_ = configure_threads(thread_request);
    device_ = resolve_device(config_.train.device);
    if (group_ && device_.is_cuda())
      device_ = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(group_->local_rank()));
    torch::manual_seed(config_.train.seed);

    const auto t_data = Clock::now();
    data_ = data::load_dataset(config_.data);
    report_->line("data: " + data_.name + " train " + std::to_string(data_.train.size()) + " val " +
                  std::to_string(data_.val.size()) + " test " + std::to_string(data_.test.size()) + " (" +
                  std::to_string(std::chrono::duration<double>(Clock::now() - t_data).count()).substr(0, 4) + " s)");
    if (data_.subsampled > 0)
      report_->line("data.class_fraction: " + std::to_string(data_.subsampled) + " training images left out");
    if (data_.val.size() == 0)
      report_->line("note: no validation split (data.val_split 0): best.pt is selected on test accuracy");

    spec_ = method_.model_spec(model_spec(config_, data_.input_shape, data_.classes));
    ctx_.config = &config_;
    ctx_.model = models::build_model(spec_, method_.factory());
    ctx_.model->to(device_);
    set_memory_format(*ctx_.model, config_.train.channels_last);
    ctx_.device = device_;
    ctx_.data = &data_;
    ctx_.out_dir = options_.out_dir;
    ctx_.group = group_;
    ctx_.log = [this](const std::string& s) { report_->line(s); };
    // Gates combine their batch statistics across processes.
    if (group_) layers::set_moment_reducer(*ctx_.model, [g = group_](torch::Tensor& t) { g->allreduce_sum(t); });
    batch_ = config_.data.batch_size;  // the global batch: batch_ / world_ samples per process
    local_batch_ = batch_ / world_;
    // Incomplete last batches are dropped: batch norm needs more than one sample, and equal batches
    // keep the loss trajectory independent of where a run was resumed.
    ctx_.steps_per_epoch = data_.train.size() / batch_;
    if (ctx_.steps_per_epoch == 0)
      throw std::runtime_error("data.batch_size " + std::to_string(batch_) + " exceeds the training set (" +
                               std::to_string(data_.train.size()) + " samples)");

    method_.prepare(ctx_, options_.resume);
    evaluator_ = std::make_unique<EpochEvaluator>(data_, device_, config_.data.eval_batch_size, group_);
    if (models::NetImpl* reference = method_.reference_model()) report_->line(evaluator_->set_reference(*reference));
    phases_ = method_.phases();
    current_phase_ = phases_.size();
    if (options_.resume) restore();
    if (group_) {
      broadcast_model(*ctx_.model, *group_);
      report_->line("distributed: " + std::to_string(world_) + " processes (" + group_->backend() + "), " +
                    std::to_string(local_batch_) + " samples of every batch of " + std::to_string(batch_) +
                    " per process");
    }
    report_->line("train: " + config_.method + " " + spec_.name + " on " + data_.name + ", " +
                  std::to_string(config_.train.epochs) + " epochs x " + std::to_string(ctx_.steps_per_epoch) +
                  " steps, batch " + std::to_string(batch_) + ", " + std::to_string(threads_) + " threads, " +
                  device_.str() + ", ReLUs " + std::to_string(layers::kept_relus(ctx_.model->sites())) + "/" +
                  std::to_string(layers::total_relus(ctx_.model->sites())) + ", out " + options_.out_dir);
  }

  // train.spike_rollbacks: the run diverged (`d`); back to the last epoch's end (rollback.pt,
  // through last.pt, exactly as --resume) with the learning rate halved, or `d` when no rollback
  // is left (or there is no epoch end to go back to yet).
  void roll_back(const Diverged& d) {
    if (rollbacks_ >= config_.train.spike_rollbacks || !fs::exists(rollback_path_)) throw d;
    const int64_t rollbacks = rollbacks_ + 1;
    const double lr_scale = lr_scale_ * 0.5;
    const int64_t from_epoch = epoch_, from_step = step_in_epoch_;
    state_ = put_back(rollback_path_, last_path_, primary_);
    restore(/*rolling_back=*/true);
    current_phase_ = phases_.size();  // the phase is entered again from the checkpoint
    guard_.reset_consecutive();       // the checkpoint may sit inside the run of spikes
    rollbacks_ = rollbacks;
    lr_scale_ = lr_scale;
    const auto record = rollback_record(rollbacks, lr_scale, from_epoch, from_step, epoch_);
    report_->line(rollback_line(record, config_.train.spike_rollbacks, d.what()));
    append_metrics(record);
  }

  // The position in state_ (last.pt's). A rollback keeps this process's wall time and says so
  // itself (its line, not "resumed").
  void restore(bool rolling_back = false) {
    load_checkpoint(last_path_, *ctx_.model, nullptr, RngState::restore);
    const auto& s = state_;
    epoch_ = s.at("epoch");
    step_in_epoch_ = s.at("step_in_epoch");
    ctx_.global_step = s.at("global_step");
    ctx_.phase_step = s.at("phase_step");
    loss_sum_ = s.at("loss_sum");
    skipped_steps_ = s.value("skipped_steps", int64_t{0});
    run_skipped_steps_ = s.value("run_skipped_steps", skipped_steps_);
    if (s.contains("spike_guard")) guard_.load_state(s.at("spike_guard"));
    part_sums_ = s.value("loss_part_sums", nlohmann::json::object());
    correct_ = s.at("correct");
    seen_ = s.at("seen");
    best_acc_ = s.at("best_accuracy");
    best_test_acc_ = s.value("best_test_accuracy", best_acc_);
    best_val_acc_ = s.value("best_val_accuracy", -1.0);
    best_class_report_ = s.value("best_per_class", nlohmann::json());
    rollbacks_ = s.value("rollbacks", int64_t{0});
    lr_scale_ = s.value("lr_scale", 1.0);
    saved_phase_ = s.at("phase");
    if (!rolling_back) elapsed_before_ = s.value("seconds", 0.0);
    method_.load_state(s.at("method"));
    if (!rolling_back)
      report_->line("resumed " + options_.out_dir + " at epoch " + std::to_string(epoch_ + 1) + " step " +
                    std::to_string(step_in_epoch_));
  }

  // The phase's hooks, optimiser (with its saved state when continuing) and gradient buckets.
  void enter_phase(const Phase& phase, size_t index, bool continuing) {
    if (!continuing) {
      ctx_.phase_step = 0;
      guard_.reset_mean();
    }
    method_.begin_phase(ctx_, phase, continuing);
    const auto groups = method_.param_groups(ctx_, phase);
    optimizer_ = make_optimizer(groups, phase.optim);
    base_lrs_.clear();
    for (const auto& g : groups)
      if (!g.params.empty()) base_lrs_.push_back(g.lr);
    if (continuing && checkpoint_has_optimizer(last_path_))
      load_checkpoint(last_path_, *ctx_.model, optimizer_.get(), RngState::restore);
    ctx_.optimizer = optimizer_.get();
    current_phase_ = index;
    if (group_) {
      grad_sync_.reset();
      std::vector<torch::Tensor> trainable;
      for (auto& p : ctx_.model->parameters())
        if (p.requires_grad()) trainable.push_back(p);
      grad_sync_ = std::make_unique<dist::GradientSync>(*group_, trainable);
    }
    if (!continuing || step_in_epoch_ == 0)
      report_->line("phase " + phase.name() + ": epochs " + std::to_string(phase.first_epoch + 1) + "-" +
                    std::to_string(phase.first_epoch + phase.epochs) + ", " + phase.optim.name + " lr " +
                    std::to_string(phase.optim.lr));
  }

  nlohmann::json make_state(const std::string& phase_name) const {
    return {{"epoch", epoch_},
            {"step_in_epoch", step_in_epoch_},
            {"global_step", ctx_.global_step},
            {"phase_step", ctx_.phase_step},
            {"phase", phase_name},
            {"loss_sum", loss_sum_},
            {"loss_part_sums", part_sums_},
            {"skipped_steps", skipped_steps_},
            {"run_skipped_steps", run_skipped_steps_},
            {"spike_guard", guard_.state()},
            {"correct", correct_},
            {"seen", seen_},
            {"best_accuracy", best_acc_},
            {"best_test_accuracy", best_test_acc_},
            {"best_val_accuracy", best_val_acc_},
            {"best_per_class", best_class_report_},
            {"rollbacks", rollbacks_},
            {"lr_scale", lr_scale_},
            {"seconds", elapsed_before_ + std::chrono::duration<double>(Clock::now() - t_start_).count()},
            {"method", method_.state()},
            {"model_spec", models::spec_to_json(spec_)},
            {"normalisation", {{"mean", data_.mean}, {"std", data_.std}}}};
  }

  void save_last(const std::string& phase_name) {
    if (!primary_) return;
    save_checkpoint(last_path_, *ctx_.model, optimizer_.get(), {to_json(config_), make_state(phase_name)});
  }

  // SIGINT/SIGTERM in any process (all of them see it in the same step's statistics): last.pt
  // after this step, then out with the signal's exit status.
  [[noreturn]] void stop_on_signal(const Phase& phase) {
    ++step_in_epoch_;
    save_last(phase.name());
    const int own = interrupt::requested();  // 0: only another process was signalled
    const std::string message = (own != 0 ? std::string("stopped by ") + interrupt::name(own)
                                          : std::string("stopped because another process was signalled")) +
                                stopped_at(epoch_, step_in_epoch_, ctx_.steps_per_epoch, last_path_, options_.out_dir);
    report_->line(message);
    throw interrupt::Interrupted(own != 0 ? own : SIGTERM, message);
  }

  // The steps of one epoch; false when the run stops early (stop_after_steps).
  bool train_epoch(const Phase& phase) {
    const int64_t phase_steps = phase.epochs * ctx_.steps_per_epoch;
    const auto order = data::epoch_order(data_.train.size(), config_.train.seed, epoch_);
    t_epoch_ = Clock::now();
    const int64_t first_step = step_in_epoch_;
    const StepEnv env{&ctx_, &method_, &guard_, running_stats_, batch_, group_, grad_sync_.get()};
    ctx_.model->train();
    for (; step_in_epoch_ < ctx_.steps_per_epoch; ++step_in_epoch_) {
      const auto t_step = Clock::now();
      const int64_t first = step_in_epoch_ * batch_ + rank_ * local_batch_;
      auto idx = order.slice(0, first, first + local_batch_);
      const auto seed = data::batch_seed(config_.train.seed, epoch_, step_in_epoch_);
      auto x = in_format_of(*ctx_.model, data::make_batch(data_, data_.train, idx, true, seed, rank_ * local_batch_).to(device_));
      auto y = data_.train.labels.index_select(0, idx).to(device_);
      const double f = lr_factor(phase.optim, ctx_.phase_step, phase_steps, ctx_.steps_per_epoch);
      auto& groups = optimizer_->param_groups();
      for (size_t g = 0; g < groups.size(); ++g) groups[g].options().set_lr(base_lrs_[g] * f * lr_scale_);

      const bool spike = options_.spike_at_step >= 0 && steps_this_process_ >= options_.spike_at_step &&
                         steps_this_process_ < options_.spike_at_step + options_.spike_steps;
      const double loss_factor = spike ? 1e6 : 1.0;
      const StepOutcome s = train_step(env, phase, x, y, step_in_epoch_, loss_factor);
      ++steps_this_process_;
      if (s.skipped) {
        ++skipped_steps_;
        ++run_skipped_steps_;
        report_->line("epoch " + std::to_string(epoch_ + 1) + " step " + std::to_string(step_in_epoch_ + 1) +
                      ": loss " + util::short_number(s.judged_loss) + " against a running mean of " +
                      util::short_number(guard_.mean()) +
                      ": step skipped, batch-norm statistics restored (train.skip_spikes " +
                      util::short_number(config_.train.skip_spikes) + ")" +
                      (s.spike_detail.empty() ? "" : "; " + s.spike_detail));
      } else {
        // One device read for the whole row (train_step has already waited for the loss).
        const auto stats = s.batch_stats.to(torch::kCPU, torch::kDouble);
        const auto* v = stats.data_ptr<double>();
        loss_sum_ += s.loss * batch_;
        for (size_t i = 0; i < s.part_names.size(); ++i) {
          auto& sum = part_sums_[s.part_names[i]];
          sum = (sum.is_null() ? 0.0 : sum.get<double>()) + v[2 + i];
        }
        correct_ += static_cast<int64_t>(v[1] + 0.5);
        seen_ += batch_;
      }

      const double secs = std::chrono::duration<double>(Clock::now() - t_epoch_).count();
      const int64_t done = step_in_epoch_ + 1 - first_step;
      const double per_step = secs / std::max<int64_t>(1, done);
      const double eta = per_step * ((ctx_.steps_per_epoch - step_in_epoch_ - 1) +
                                     (config_.train.epochs - epoch_ - 1) * ctx_.steps_per_epoch);
      report_->step(epoch_, config_.train.epochs, step_in_epoch_ + 1, ctx_.steps_per_epoch,
                    loss_sum_ / std::max<int64_t>(1, seen_), done * batch_ / std::max(1e-9, secs), eta,
                    [this] { return method_.progress(ctx_); }, config_.train.log_every);
      result_.step_seconds += std::chrono::duration<double>(Clock::now() - t_step).count();
      ++result_.steps_timed;

      if (s.stop_requested) stop_on_signal(phase);
      if (options_.stop_after_steps >= 0 && steps_this_process_ >= options_.stop_after_steps) {
        ++step_in_epoch_;
        save_last(phase.name());
        report_->line("stopped after " + std::to_string(steps_this_process_) + " steps (checkpoint saved)");
        result_.completed = false;
        return false;
      }
      if (config_.train.checkpoint_interval_s > 0 &&
          std::chrono::duration<double>(Clock::now() - last_checkpoint_).count() >=
              config_.train.checkpoint_interval_s &&
          step_in_epoch_ + 1 < ctx_.steps_per_epoch) {
        ++step_in_epoch_;
        save_last(phase.name());
        --step_in_epoch_;
        last_checkpoint_ = Clock::now();
      }
    }
    return true;
  }

  // End of epoch: metrics, evaluation, best.pt and last.pt.
  void end_epoch(const Phase& phase) {
    const double epoch_secs = std::chrono::duration<double>(Clock::now() - t_epoch_).count();
    nlohmann::json m = {{"type", "epoch"},
                        {"epoch", epoch_ + 1},
                        {"phase", phase.name()},
                        {"train_loss", loss_sum_ / std::max<int64_t>(1, seen_)},
                        {"train_accuracy", static_cast<double>(correct_) / std::max<int64_t>(1, seen_)},
                        {"loss_parts", epoch_means(part_sums_, seen_)},
                        {"skipped_steps", skipped_steps_},
                        {"lr", optimizer_->param_groups()[0].options().get_lr()},
                        {"seconds", epoch_secs},
                        {"kept_relus", layers::kept_relus(ctx_.model->sites())},
                        {"total_relus", layers::total_relus(ctx_.model->sites())}};
    if (group_) {
      average_batch_norm_stats(*ctx_.model, *group_);
      check_masks_agree(*ctx_.model, *group_, epoch_);
    }
    method_.on_epoch_end(ctx_, m);
    append_metrics(m);
    const bool last_epoch = epoch_ + 1 == config_.train.epochs;
    const bool do_eval =
        last_epoch || (config_.train.eval_every > 0 && (epoch_ + 1) % config_.train.eval_every == 0);
    std::ostringstream line;
    line << "epoch " << epoch_ + 1 << "/" << config_.train.epochs << " [" << phase.name() << "] train loss "
         << std::fixed << std::setprecision(4) << m["train_loss"].get<double>() << " acc " << std::setprecision(2)
         << 100.0 * m["train_accuracy"].get<double>() << "%";
    bool improved = false;
    // A rollback point must not already be broken: an epoch whose validation images (the
    // training side's data; never the test set) gave non-finite logits is not one.
    bool healthy = true;
    if (do_eval) {
      const auto ev = evaluator_->run(*ctx_.model);
      if (ev.has_val) healthy = ev.val.nonfinite == 0;
      last_acc_ = ev.test.accuracy;
      nlohmann::json record = {{"type", "eval"}, {"epoch", epoch_ + 1}, {"phase", phase.name()}};
      record.update(ev.fields);
      record["kept_relus"] = m["kept_relus"];
      append_metrics(record);
      line << ev.text;
      // best.pt is chosen on validation accuracy when there is a validation split.
      const double score = ev.has_val ? ev.val.accuracy : ev.test.accuracy;
      if (method_.may_be_best(ctx_, phase) && score > best_acc_) {
        best_acc_ = score;
        best_test_acc_ = ev.test.accuracy;
        best_val_acc_ = ev.has_val ? ev.val.accuracy : -1.0;
        best_class_report_ = ev.test_report;
        improved = true;
      }
    }
    line << " | ReLUs " << m["kept_relus"].get<int64_t>() << " | " << std::setprecision(1) << epoch_secs << " s";
    report_->line(line.str());

    // The checkpoints record the position at the start of the next epoch.
    ++epoch_;
    step_in_epoch_ = 0;
    loss_sum_ = 0.0;
    part_sums_ = nlohmann::json::object();
    skipped_steps_ = 0;
    correct_ = 0;
    seen_ = 0;
    const CheckpointMeta meta{to_json(config_), make_state(phase.name())};
    if (primary_) {
      if (improved) save_checkpoint(best_path_, *ctx_.model, nullptr, meta);
      save_checkpoint(last_path_, *ctx_.model, optimizer_.get(), meta);
      // Where a divergence goes back to (train.spike_rollbacks): the last healthy epoch's end.
      if (config_.train.spike_rollbacks > 0 && healthy) {
        save_checkpoint(rollback_path_, *ctx_.model, optimizer_.get(), meta);
      }
    }
    last_checkpoint_ = Clock::now();
    --epoch_;
  }

  RunResult finish() {
    result_.completed = true;
    result_.best_accuracy = best_test_acc_;
    result_.best_val_accuracy = best_val_acc_;
    result_.class_report = best_class_report_;
    result_.teacher_class_report = evaluator_->reference_report();
    result_.final_accuracy = last_acc_;
    result_.skipped_steps = run_skipped_steps_;
    result_.rollbacks = rollbacks_;
    result_.method_state = method_.state();
    result_.kept_relus = layers::kept_relus(ctx_.model->sites());
    result_.total_relus = layers::total_relus(ctx_.model->sites());
    grad_sync_.reset();
    result_.seconds = elapsed_before_ + std::chrono::duration<double>(Clock::now() - t_start_).count();
    report_->line(done_line(result_, (out_ / "checkpoints").string()));
    return result_;
  }

  void append_metrics(const nlohmann::json& j) { if (primary_) util::append_line(metrics_path_, j.dump()); }

  const Config& config_;
  Method& method_;
  const RunOptions& options_;
  const Clock::time_point t_start_ = Clock::now();
  const fs::path out_;
  const std::string last_path_, rollback_path_, best_path_, metrics_path_;
  dist::Group* const group_;
  const bool primary_;
  const int64_t world_, rank_;
  Reporter* report_ = nullptr;
  StepSnapshot* running_stats_ = nullptr;

  nlohmann::json state_;  // of the checkpoint resumed from
  int64_t threads_ = 0;
  int64_t rollbacks_ = 0;  ///< train.spike_rollbacks taken so far
  double lr_scale_ = 1.0;  ///< 0.5 per rollback, on every learning rate
  torch::Device device_{torch::kCPU};
  data::DataSplits data_;
  models::ModelSpec spec_;
  TrainContext ctx_;
  int64_t batch_ = 0, local_batch_ = 0;
  std::vector<Phase> phases_;
  size_t current_phase_ = 0;

  // Position and this epoch's accumulators (saved in every checkpoint).
  int64_t epoch_ = 0, step_in_epoch_ = 0;
  double loss_sum_ = 0.0;
  double best_acc_ = -1.0;       // what best.pt is selected on: validation accuracy, else test accuracy
  double best_test_acc_ = -1.0;  // test accuracy of best.pt
  double best_val_acc_ = -1.0;   // validation accuracy of best.pt (-1: no validation split)
  nlohmann::json best_class_report_;  // per-class test accuracy of best.pt (class_report)
  std::unique_ptr<EpochEvaluator> evaluator_;
  int64_t correct_ = 0, seen_ = 0;
  nlohmann::json part_sums_ = nlohmann::json::object();  // each loss part summed over this epoch's samples
  int64_t skipped_steps_ = 0;                            // loss spikes skipped this epoch
  int64_t run_skipped_steps_ = 0;                        // ... and over the whole run
  SpikeGuard guard_;
  std::string saved_phase_;
  double elapsed_before_ = 0.0;

  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::vector<double> base_lrs_;
  std::unique_ptr<dist::GradientSync> grad_sync_;
  RunResult result_;
  int64_t steps_this_process_ = 0;
  Clock::time_point last_checkpoint_, t_epoch_;
  double last_acc_ = 0.0;
};

}  // namespace

RunResult run_training(const Config& config, Method& method, const RunOptions& options) {
  TORCH_CHECK(!options.out_dir.empty(), "no output directory given");
  return TrainingRun(config, method, options).run();
}

}  // namespace autorep::trainer::engine
