#pragma once
/// The summary a finished run leaves in `<run dir>/result.json`.

#include <nlohmann/json.hpp>

#include "trainer/engine/config.h"
#include "trainer/engine/loop.h"

namespace autorep::trainer::engine {

/// The summary a finished run leaves in `<run dir>/result.json` (written by `autorep train` and
/// by sweeps; paths relative to the run folder). Reduction runs: method, budget, relu_count,
/// total_relus, accuracy (of the exported model), best_accuracy, final_accuracy, seconds,
/// export_path. Baselines: method, accuracy (best), final_accuracy, relu_count, total_relus,
/// seconds, checkpoint. Both add val_accuracy, the validation accuracy best.pt was selected on,
/// when the run has a validation split (`accuracy` is then the test accuracy of that checkpoint),
/// skipped_steps (the spike guard's, over the run) and, for autorep, search_end_kept (the ReLUs
/// the search kept before the projection).
/// `result.summary` is the export's summary ({"path", "kept", "accuracy"
/// ...}; null for a baseline).
nlohmann::json run_result_json(const Config& config, const RunResult& result);
/// Writes run_result_json() to `<result.out_dir>/result.json` atomically (rank 0 only) and
/// returns it.
nlohmann::json write_run_result(const Config& config, const RunResult& result);

}  // namespace autorep::trainer::engine
