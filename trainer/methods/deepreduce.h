#pragma once
/// DeepReDuce (Jha et al., ICML 2021; DESIGN.md §10): ReLUs removed by whole stages and layers.
/// A criticality profile of the teacher ranks the model's stages; candidate networks cull the
/// least critical stages, thin the survivors (every other ReLU layer) and, for small budgets,
/// reshape the network (narrower channels, a strided stem); the candidate with the most ReLUs
/// within the budget is trained with KD from the teacher. The method itself is in deepreduce.cpp;
/// this header is what `autorep deepreduce-frontier` and the tests use.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/engine/config.h"
#include "trainer/models/net.h"

namespace autorep::trainer::methods::deepreduce {

/// The `search.deepreduce` keys.
struct Options {
  int64_t profile_epochs = 1;  ///< KD epochs of each network of the criticality profile
  /// What a culled or thinned site computes: "identity" (the paper) or "polynomial" (the DaPa
  /// polynomial, trained with the weights: an extension beyond the paper).
  std::string replacement = "identity";
  std::vector<double> widths{1.0, 0.5, 0.25};  ///< reshaping: channel multipliers tried, in order
  std::vector<int64_t> stem_strides{1, 2};    ///< reshaping: stem strides tried, in order
  /// A fixed network instead of the budget's choice: the stages that keep their ReLUs (the
  /// profile trains these; a user may too). Empty with `fixed` false: chosen by search.budget.
  bool fixed = false;
  std::vector<std::string> keep_stages;
  bool thinned = false;  ///< fixed network: thin the kept stages
};
Options options_of(const engine::Config& config);

/// ReLUs of one stage, in full and when thinned.
struct StageCount {
  std::string name;
  int64_t relus = 0;
  int64_t thinned = 0;
};
/// Per stage of `net` (counted on its sites' shapes).
std::vector<StageCount> stage_counts(const models::NetImpl& net);
/// Per stage of the model `spec` describes.
std::vector<StageCount> stage_counts(const models::ModelSpec& spec);

/// One candidate network.
struct Plan {
  std::vector<bool> kept;  ///< per stage: keeps its ReLUs (false: culled)
  bool thinned = false;    ///< the kept stages are thinned
  double width = 1.0;
  int64_t stem_stride = 1;
  int64_t relus = 0;  ///< ReLUs per sample, exactly
  /// The names of the stages it keeps.
  std::vector<std::string> kept_names(const std::vector<StageCount>& stages) const;
  /// e.g. "keep layer2+layer3, thinned, width 0.5".
  std::string describe(const std::vector<StageCount>& stages) const;
  nlohmann::json to_json(const std::vector<StageCount>& stages) const;
  /// Per site of a model built with this plan's width and stride: whether it keeps its ReLUs.
  std::vector<bool> site_kept(const models::NetImpl& net) const;
};

/// The profile: the validation accuracy of the all-linear network and of each network keeping
/// only one stage's ReLUs, all KD-trained from the teacher for `profile_epochs`. A stage's
/// criticality is the accuracy its ReLUs buy per ReLU, (acc_k - acc_linear) / relus_k.
struct StageProfile {
  std::string name;
  int64_t relus = 0;
  double accuracy = 0.0;
  double criticality = 0.0;
};
struct Profile {
  double linear_accuracy = 0.0;
  std::vector<StageProfile> stages;
  /// Stage indices, least critical first: the order culling follows.
  std::vector<size_t> cull_order() const;
};
nlohmann::json to_json(const Profile& p);
Profile profile_from_json(const nlohmann::json& j);

/// DeepReDuce's candidates in its order (DESIGN.md §10): for each reshape (widths x stem
/// strides, full size first), cull the c least critical stages for c = 0 .. all, each plain and
/// thinned. Duplicates (the same ReLUs kept) are left out.
std::vector<Plan> candidates(const models::ModelSpec& full, const std::vector<size_t>& cull_order,
                             const Options& options);
/// The index of the candidate with the most ReLUs <= budget (the first in order among equals).
size_t choose(const std::vector<Plan>& candidates, int64_t budget);

/// Where the profile of the run's teacher lives: <teacher run>/deepreduce-profile/ (next to
/// checkpoints/ when the teacher is a run's checkpoints/best.pt), with profile.json and one run
/// folder per profiled network.
std::string profile_dir(const engine::Config& config);
/// The profile for this config's teacher, model, data and profile_epochs: read from
/// profile_dir() when it was made with the same settings, else trained now (resumable) and
/// written there. Every process of a multi-process run calls it.
Profile ensure_profile(const engine::Config& config, bool quiet);
/// The profile in profile_dir() if it is there and matches the config; false otherwise.
bool read_profile(const engine::Config& config, Profile* out);

}  // namespace autorep::trainer::methods::deepreduce
