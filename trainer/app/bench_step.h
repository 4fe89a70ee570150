#pragma once
/// `autorep bench step`: a baseline training step against a search step on the same model and
/// batch, measured interleaved in one run.

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace autorep::trainer::app {

struct StepBenchOptions {
  std::string model = "resnet20";
  std::vector<int64_t> input{1, 28, 28};
  int64_t batch = 128;
  int64_t classes = 10;
  std::string device = "cpu";
  std::string teacher_dtype = "float32";  ///< the search step's teacher forward (search.kd.teacher_dtype)
  int iters = 10;   ///< timed iterations of each step (median reported)
  int warmup = 3;
  bool conv_paths = false;  ///< also time the baseline step in channels_last memory (CPU)
};

/// Baseline step: the `baseline` method's training step with the default config (all-ReLU
/// model, optim). Search step: the `autorep` method's search-phase step with the default config
/// (gated student, teacher forward for KD, CE + KD + penalty, search_optim with its gradient
/// clipping, hysteresis and lambda update): both through engine::train_step, the function
/// `autorep train` runs. The teacher is the baseline model, saved to a temporary checkpoint.
/// Prints both (median ms) and ends with `search_over_baseline=<ratio>`. With `conv_paths` the
/// baseline step is also timed, interleaved with the others, with the weights and the batch in
/// channels_last memory (LibTorch's oneDNN convolutions in that layout on CPU), with its logits'
/// largest difference from the default path, and `channels_last_over_default=` (below 1: faster).
int run_step_bench(const StepBenchOptions& options, std::ostream& out);

}  // namespace autorep::trainer::app
