#pragma once
/// Run configuration: JSON with sections `data`, `model`, `gate`, `search`, `optim`, `train`
/// and the `method` string. Every key has a default except the essentials; unknown keys and
/// wrong types are errors that name the key path; `--set a.b=v` overrides any key.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/data.h"

namespace autorep::trainer {

/// `model` section.
struct ModelOptions {
  std::string name = "cnn-small";  ///< cnn-small | resnet18 | resnet20 | wrn-22-8 | vgg16
  bool stem_relu = true;           ///< resnet18: ReLU after the stem convolution
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

/// `gate.dapa` section: distribution-aware polynomial fit (DESIGN.md §3).
struct DapaConfig {
  bool enabled = true;
  std::string sigma = "std";  ///< std (exact least-squares fit) | var (reference behaviour)
  double var_floor = 0.5;     ///< var mode: clip of the running variance used as sigma
  double w0_div = 5.0;        ///< var mode: stored c0 = w0 / w0_div
  double w2_div = 10.0;       ///< var mode: stored c2 = w2 / w2_div
  int64_t refit_every = 10;   ///< training steps between refits
  int64_t refit_until = 500;  ///< no refit at or after this training step
};

/// `gate` section: the ReLU/polynomial gate placed at every site by reduction methods.
struct GateConfig {
  std::string granularity = "pixel";  ///< pixel | channel | layer
  int64_t degree = 2;                 ///< polynomial degree, 1 or 2
  double scale1 = 1.0;                ///< s1 in p(x) = c0 + s1*c1*x + s2*c2*x^2
  double scale2 = 0.1;                ///< s2
  double threshold = 0.003;           ///< hysteresis threshold t
  DapaConfig dapa;
};

/// `search.kd` section: distillation from the teacher, T^2 * KL(softmax(t/T) || softmax(s/T)).
struct KdConfig {
  double temperature = 4.0;
  double weight = 1.0;  ///< weight of the KD term (CE keeps weight 1)
  /// Precision of the teacher's forward for the KD targets: "float32" (exact) or "bfloat16"
  /// (about 3x faster on CPUs with native bf16 and on GPUs; the student always trains in float32).
  std::string teacher_dtype = "float32";
};

/// `search` section: the reduction run (DESIGN.md §4).
struct SearchOptions {
  nlohmann::json budget = "3%";  ///< ReLU count (integer) or "N%" of the model's ReLUs
  std::string teacher;           ///< baseline checkpoint (best.pt) the student starts from
  int64_t search_epochs = 5;     ///< epochs of joint search; the rest of train.epochs finetune
  double lambda = 120.0;         ///< penalty weight on relu(rho - rho*)
  std::string lambda_mode = "constant";  ///< constant | adaptive
  double lambda_growth = 1.05;   ///< adaptive: factor per step while over budget
  double lambda_decay = 0.99;    ///< adaptive: factor per step while within budget
  double lambda_min = 1.0;
  double lambda_max = 1e4;
  double aux_lr = -1.0;          ///< learning rate of aux (-1: optim.lr of the search phase)
  OptimOptions search_optim{"adam", 1e-3, 0.9, false, 0.0, 0.9, 0.999, "cosine", 0.0, 1e-5, 5.0};
  /// Polynomial sites make freshly masked models fragile: the finetune clips gradients.
  OptimOptions finetune_optim{"sgd", 0.01, 0.9, true, 5e-4, 0.9, 0.999, "cosine", 0.0, 0.0, 5.0};
  KdConfig kd;
  double snl_l1 = 5.0;           ///< snl: initial weight of the L1 term (mean |alpha| over ReLUs)
  double snl_growth = 1.1;       ///< snl: L1 weight factor per epoch while over budget
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
  double skip_spikes = 0.0;             ///< skip a step whose loss exceeds this x the running mean (0: never)
};

/// The whole resolved configuration of a run.
struct Config {
  std::string method = "baseline";  ///< baseline | autorep | snl | uniform | random
  DataOptions data;
  ModelOptions model;
  GateConfig gate;
  SearchOptions search;
  OptimOptions optim;
  TrainOptions train;
};

/// All keys with their defaults, as JSON (the schema user configs are checked against).
nlohmann::json config_defaults();
nlohmann::json to_json(const Config& config);
/// A saved or current config as `--resume` and the sweep's skip check compare it: read back
/// through the parser, so a config written by an older autorep gets the keys added since with
/// their defaults (left as saved if it no longer parses), and without the keys that only affect
/// how a run runs (threads, device, checkpoint cadence, logging) and the settings its method
/// never reads (a baseline's `search` section; snl's polynomial settings `gate.degree`,
/// `gate.scale1`, `gate.scale2`, `gate.dapa`: its replacements are fixed identities).
nlohmann::json comparable_config(const nlohmann::json& config_json, const std::string& source = "config");
/// Builds a Config from a user JSON: every key must exist in config_defaults() with a
/// compatible type, else std::runtime_error "<source>: <key.path>: <what is wrong>".
Config config_from_json(const nlohmann::json& user, const std::string& source = "config");
/// Applies one `--set a.b=v` override to a user JSON (v parsed as JSON, else taken as string).
void apply_override(nlohmann::json& user, const std::string& assignment);
/// Reads a config file, applies overrides, checks and resolves it.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
/// Reads a JSON file with a clear error naming the file on failure.
nlohmann::json read_json_file(const std::string& path);

}  // namespace autorep::trainer
