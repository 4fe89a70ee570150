#pragma once
/// `autorep bench epoch`: the first steps of a baseline epoch, a search epoch and a finetune
/// epoch, each through the real data loader and training loop (engine::run_training, as
/// `autorep train` runs them) on a real data set, timed per step.

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace autorep::trainer::app {

struct EpochBenchOptions {
  std::string model = "resnet20";
  std::vector<int64_t> input{1, 28, 28};  ///< must be the data set's image shape
  std::string data = "fashion-mnist";
  std::string data_path;                  ///< empty: the data set's default location
  int64_t steps = 0;                      ///< steps timed per run; 0: a whole epoch
  std::string device = "cpu";
  int64_t threads = 0;                    ///< train.threads of every run (0: all cores)
  std::string teacher_dtype = "float32";  ///< search.kd.teacher_dtype of the search run
  std::string budget = "3%";              ///< search.budget of the search and finetune runs
  /// Also run each of the three with train.channels_last, right after its default-layout run.
  bool channels_last = false;
};

/// Four short runs with the default config (batch 128, the model's defaults) in a temporary
/// folder: `baseline` (the teacher of the next two), `autorep` in its search phase, `uniform`
/// in its finetune phase and `baseline` again, each stopped after `steps` steps. Setup,
/// calibration, evaluation and checkpoints are not timed: only the steps (batch assembly, the
/// step, progress), as RunResult::step_seconds. The ratios divide by the mean of the two
/// baseline timings (A-B-A, so drift of the machine cancels to first order); the line
/// `baseline drift (again / first)=<ratio>` shows how much it moved. Ends with
/// `search_epoch_over_baseline=<ratio>` and `finetune_epoch_over_baseline=<ratio>`; with
/// `channels_last` also `<run>_channels_last_over_default=<ratio>` for baseline, search and
/// finetune and the two ratios of the channels_last runs.
int run_epoch_bench(const EpochBenchOptions& options, std::ostream& out);

}  // namespace autorep::trainer::app
