#pragma once
/// The evaluation after a training epoch: validation and test accuracy, each per class, and
/// against the method's reference network (a reduction's teacher, evaluated once on the same
/// splits) each class's drop. What it finds goes into the epoch's metrics.jsonl record and log
/// line.

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <optional>
#include <string>

#include "trainer/data/dataset.h"
#include "trainer/engine/evaluate.h"
#include "trainer/models/net.h"

namespace autorep::trainer::engine {

namespace dist {
class Group;
}

class EpochEvaluator {
 public:
  EpochEvaluator(const data::DataSplits& data, torch::Device device, int64_t batch_size, dist::Group* group)
      : data_(data), device_(device), batch_size_(batch_size), group_(group) {}

  /// Evaluates `reference` on the validation and test splits; later reports carry each class's
  /// drop against it. Returns the log line of its test report.
  std::string set_reference(models::NetImpl& reference);
  /// The reference's test report (null without a reference).
  nlohmann::json reference_report() const;

  struct Outcome {
    bool has_val = false;
    EvalResult val, test;
    nlohmann::json fields;     ///< test_/val_ accuracy, loss, nonfinite, per_class for the metrics record
    nlohmann::json test_report;  ///< class_report of the test split (with drops)
    std::string text;          ///< " | val acc ... | test loss ... acc ... | worst class ..."
  };
  Outcome run(models::NetImpl& model) const;

 private:
  const data::DataSplits& data_;
  torch::Device device_;
  int64_t batch_size_;
  dist::Group* group_;
  std::optional<EvalResult> ref_val_, ref_test_;
};

}  // namespace autorep::trainer::engine
