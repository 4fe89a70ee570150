#pragma once
/// Run configuration: JSON with sections `data`, `model`, `gate`, `search`, `optim`, `train`
/// and the `method` string. Every key has a default except the essentials; unknown keys and
/// wrong types are errors that name the key path; `--set a.b=v` overrides any key.
///
/// The engine knows the sections every run shares. The methods (trainer/methods) add what is
/// theirs through a ConfigSchema: their names, their own `search` keys with defaults and checks,
/// and the keys they never read; methods::run_config() is the schema of every registered method.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "layers/gate.h"
#include "search/budget.h"
#include "search/fairness.h"
#include "trainer/data/dataset.h"

namespace autorep::trainer::engine {

/// `model` section.
struct ModelOptions {
  std::string name = "cnn-small";  ///< a name of models::model_names()
  bool stem_relu = true;           ///< resnet18: ReLU after the stem convolution
  double width = 1.0;              ///< resnet18/resnet20/wrn-22-8: channel multiplier
  int64_t stem_stride = 1;         ///< resnet18/resnet20/wrn-22-8: stride of the stem convolution
};

/// `optim` section: the optimiser and learning-rate schedule of a training phase.
struct OptimOptions {
  std::string name = "sgd";  ///< sgd | adam
  double lr = 0.1;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 5e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  std::string schedule = "cosine";  ///< cosine | constant
  double warmup_epochs = 0.0;       ///< linear warm-up from 0 over this many epochs
  double min_lr = 0.0;              ///< cosine floor
  double grad_clip = 0.0;           ///< clip the global gradient norm to this (0: off)
};

/// `search.kd` section: distillation from the teacher, T^2 * KL(softmax(t/T) || softmax(s/T)).
struct KdConfig {
  double temperature = 4.0;
  double weight = 1.0;  ///< weight of the KD term (CE keeps weight 1)
  /// Precision of the teacher's forward for the KD targets: "float32" (exact) or "bfloat16"
  /// (about 3x faster on CPUs with native bf16 and on GPUs; the student always trains in float32).
  std::string teacher_dtype = "float32";
};

/// `search` section: what every reduction run shares (DESIGN.md §4). Keys a method adds (e.g.
/// autorep's `lambda`, snl's `snl_l1`) are kept in `method_keys` and read by that method.
struct SearchOptions {
  search::Budget budget;         ///< ReLU count or "N%" of the model's ReLUs (default "3%")
  std::string teacher;           ///< baseline checkpoint (best.pt) the student starts from
  int64_t search_epochs = 5;     ///< epochs of joint search; the rest of train.epochs finetune
  double aux_lr = 0.01;          ///< learning rate of aux (-1: the search optimiser's lr)
  OptimOptions search_optim{"adam", 1e-3, 0.9, false, 0.0, 0.9, 0.999, "cosine", 0.0, 1e-5, 5.0};
  /// Polynomial sites make freshly masked models fragile: the finetune clips gradients.
  OptimOptions finetune_optim{"sgd", 0.01, 0.9, true, 5e-4, 0.9, 0.999, "cosine", 0.0, 0.0, 5.0};
  KdConfig kd;
  /// `search.fairness`: the group-fair finetune (search/fairness.h).
  search::FairnessOptions fairness;
  /// The methods' own keys of this section with their values (every registered method's, so one
  /// config serves a sweep over methods).
  nlohmann::json method_keys = nlohmann::json::object();
};

/// `train` section.
struct TrainOptions {
  int64_t epochs = 10;
  uint64_t seed = 0;
  double label_smoothing = 0.0;
  int64_t threads = 0;                  ///< 0: all cores
  std::string device = "auto";          ///< auto | cpu | cuda
  double checkpoint_interval_s = 60.0;  ///< also checkpoint mid-epoch this often (0: epoch ends only)
  int64_t log_every = 50;               ///< plain progress line every N steps when not on a terminal
  int64_t eval_every = 1;               ///< evaluate every N epochs (and always after the last)
  double skip_spikes = 10.0;            ///< skip a step whose loss exceeds this x the running mean (0: never)
  /// When the run diverges (skip_spikes spikes in a row), go back to the start of the epoch with
  /// the learning rate halved, at most this many times (0: stop at the first divergence).
  int64_t spike_rollbacks = 3;
  /// Run the student and teacher in channels_last memory (weights and batches): faster
  /// convolutions on the CPU's oneDNN path, but not bitwise the NCHW run and, with LibTorch
  /// 1.13's CPU kernels, less exact gradients (README, `train.channels_last`).
  bool channels_last = false;
};

/// The whole resolved configuration of a run.
struct Config {
  std::string method = "baseline";  ///< a name of the method registry
  data::DataOptions data;
  ModelOptions model;
  layers::GateOptions gate;  ///< the `gate` section (shape left empty: each site sets its own)
  SearchOptions search;
  OptimOptions optim;
  TrainOptions train;
};

/// What one method adds to the config schema.
struct MethodSchema {
  std::string name;
  /// Its own `search` keys with their defaults (e.g. {"lambda": 120.0}).
  nlohmann::json search_keys = nlohmann::json::object();
  /// Key paths it never reads ("search" for a baseline; "gate.degree" ... for snl): left out when
  /// two configs of a run are compared for --resume and the sweep's skip check.
  std::vector<std::string> unused_keys;
  /// Checks its settings in a parsed config; throws "<source>: <key>: <why>".
  std::function<void(const Config&, const std::string& source)> validate;
};

/// The methods a config may name.
struct ConfigSchema {
  std::vector<MethodSchema> methods;
  std::vector<std::string> method_names() const;
  /// The method's schema, nullptr when the name is unknown.
  const MethodSchema* find(const std::string& name) const;
};

/// All keys with their defaults, as JSON (the schema user configs are checked against).
nlohmann::json config_defaults(const ConfigSchema& schema);
nlohmann::json to_json(const Config& config);
/// Builds a Config from a user JSON: every key must exist in config_defaults() with a
/// compatible type, else std::runtime_error "<source>: <key.path>: <what is wrong>"; the
/// budget is parsed (search::Budget) here, before any data loads.
Config config_from_json(const nlohmann::json& user, const ConfigSchema& schema, const std::string& source = "config");
/// A saved or current config as `--resume` and the sweep's skip check compare it: read back
/// through the parser, so a config written by an older autorep gets the keys added since with
/// their defaults (left as saved if it no longer parses), and without the keys that only affect
/// how a run runs (threads, device, checkpoint cadence, logging) and the keys its method never
/// reads (MethodSchema::unused_keys).
nlohmann::json comparable_config(const nlohmann::json& config_json, const ConfigSchema& schema,
                                 const std::string& source = "config");
/// Applies one `--set a.b=v` override to a user JSON (v parsed as JSON, else taken as string).
void apply_override(nlohmann::json& user, const std::string& assignment);
/// Reads a config file, applies overrides, checks and resolves it.
Config load_config(const std::string& path, const std::vector<std::string>& overrides, const ConfigSchema& schema);
/// Reads a JSON file with a clear error naming the file on failure.
nlohmann::json read_json_file(const std::string& path);

}  // namespace autorep::trainer::engine
