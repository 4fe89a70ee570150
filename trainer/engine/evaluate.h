#pragma once
/// Test (or validation) accuracy and loss of a model on a split, overall and per class.

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "trainer/data/dataset.h"
#include "trainer/models/net.h"

namespace autorep::trainer::engine {

namespace dist {
class Group;
}

/// Test accuracy and mean loss of `model` on a split. A sample whose logits are not all finite
/// (a mostly polynomial network can overflow on some inputs) counts as wrong, is left out of
/// the mean loss and is counted in `nonfinite`.
struct EvalResult {
  double accuracy = 0.0;
  double loss = 0.0;  ///< mean over the samples with finite logits (NaN when there are none)
  int64_t samples = 0;
  int64_t nonfinite = 0;
  int64_t correct = 0;
  double loss_sum = 0.0;  ///< over the samples with finite logits
  /// Per class (label order): samples of the class, and those predicted right.
  std::vector<int64_t> class_samples, class_correct;
};

/// Adds a batch's logits (N x classes) and labels to `r` (its counts; call finish() at the end).
void accumulate(EvalResult& r, const torch::Tensor& logits, const torch::Tensor& labels, int64_t classes);
/// Computes accuracy and mean loss from the counts.
void finish(EvalResult& r);

/// With `group`, each process evaluates its share of the split and every process gets the totals.
EvalResult evaluate(models::NetImpl& model, const data::DataSplits& data, const data::Dataset& split,
                    torch::Device device, int64_t batch_size, dist::Group* group = nullptr);

}  // namespace autorep::trainer::engine
