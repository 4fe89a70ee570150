#pragma once
/// The files of a run folder that the training loop reads and writes besides its checkpoints:
/// the checks when a run starts (fresh or --resume), config.json, rollback points and records.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "trainer/engine/config.h"
#include "trainer/engine/loop.h"

namespace autorep::trainer::engine {

/// Checks `options.out_dir` against --resume (a resume needs `last_path`, a fresh run must not
/// find one), writes config.json (rank 0) and checks the global batch against the processes;
/// returns the state of `last_path` when resuming (null otherwise). Every process returns
/// after all of them have seen the folder as it was.
nlohmann::json open_run_folder(const Config& config, const RunOptions& options, const std::string& last_path,
                               bool primary, int64_t world);

/// A rollback (train.spike_rollbacks): rank 0 puts `rollback_path` in place as `last_path`
/// (atomically); every process waits for it and gets its state.
nlohmann::json put_back(const std::string& rollback_path, const std::string& last_path, bool primary);

/// The run's last line: best.pt's test (and validation) accuracy, ReLUs, seconds, where it is.
std::string done_line(const RunResult& result, const std::string& checkpoints_dir);

/// " after epoch E step S of N: LAST written; continue with: autorep train --out DIR --resume"
/// (`epoch` counted from 0, `step` the steps done in it).
std::string stopped_at(int64_t epoch, int64_t step, int64_t steps, const std::string& last_path,
                       const std::string& out_dir);

/// Each loss part's mean per sample over the epoch, from its sums.
nlohmann::json epoch_means(const nlohmann::json& sums, int64_t seen);

/// The metrics record of rollback number `rollback` (epochs and steps counted from 0 here, from
/// 1 in the record), and its log line.
nlohmann::json rollback_record(int64_t rollback, double lr_scale, int64_t from_epoch, int64_t from_step,
                               int64_t back_to_epoch);
std::string rollback_line(const nlohmann::json& record, int64_t allowed, const std::string& what);

}  // namespace autorep::trainer::engine
