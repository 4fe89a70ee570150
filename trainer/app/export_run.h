#pragma once
/// Exports of trained checkpoints (`autorep export`, and the end of every reduction run) and
/// their verification (`autorep verify`): the checkpoint side of search/export.h.

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "search/export/relu_mask.h"
#include "trainer/methods/run_model.h"
#include "trainer/models/net.h"

namespace autorep::trainer::app {

struct ExportOptions {
  std::string cost_table;    ///< cost table file; "" = the built-in default (configs/cost-delphi.json)
  /// Evaluate the test accuracy when the run's metrics.jsonl does not record it for this
  /// checkpoint (loads the test split; a failure leaves accuracy null with a warning).
  bool evaluate = true;
  std::string device = "cpu";  ///< for that evaluation
  bool quiet = false;          ///< no warnings on stderr
  /// Also write the whole network as ONNX here (trainer/deploy); the mask export then names
  /// each site's nodes ("onnx_nodes"). With an empty `out_path` only the graph is written.
  std::string onnx_path;
  bool keep_batchnorm = false;  ///< ONNX: BatchNormalization nodes instead of folded batch norms
  /// Record every site's input and output range over the first N training images (the
  /// per-site "range" of the export; 0 = not recorded). Without the data set: a warning.
  int64_t range_images = 10000;
  /// A failure of the ONNX step does not stop the mask export: the summary's "onnx" is then
  /// null and "onnx_error" says why (what a training run's own export wants).
  bool onnx_optional = false;
};

/// The test (and, with a validation split, validation) accuracy of a checkpoint's epoch.
struct RecordedAccuracy {
  double test = 0;
  std::optional<double> val;
  nlohmann::json per_class;  ///< the record's test_per_class (engine::class_report), null if none
};

/// Where a checkpoint's accuracy comes from: the eval record of metrics.jsonl (in the run
/// folder above checkpoints/) for the epoch the checkpoint ends, if any.
std::optional<RecordedAccuracy> recorded_accuracy(const std::string& checkpoint, const nlohmann::json& state);

/// The ExportInfo of a loaded checkpoint (arch, input, classes, hash, data set, method, budget
/// target resolved against the model's ReLUs, accuracy per `options`).
exports::ExportInfo export_info(const methods::LoadedModel& lm, const std::string& checkpoint, const ExportOptions& options);

/// Loads `checkpoint`, builds its export and writes it atomically to `out_path` (and the ONNX
/// graph to options.onnx_path). Returns a summary: {"path", "onnx" (null, or {"path", "opset",
/// "nodes", "parameters", "bytes"}), "kept", "total", "target", "accuracy", "granularity", "reduction"}.
/// The lead calls this at the end of a reduction run (run/export/mask.json).
nlohmann::json export_checkpoint(const std::string& checkpoint, const std::string& out_path,
                                 const ExportOptions& options = {});

/// The checkpoint `autorep export --run DIR` uses: DIR/checkpoints/best.pt, else last.pt.
std::string run_checkpoint(const std::string& run_dir);

struct VerifyOptions {
  int64_t batch = 256;        ///< first N test images
  bool eval = false;          ///< also re-evaluate test accuracy of the rebuilt model
  double tolerance = 1e-5;    ///< max abs logit difference accepted
  std::string device = "cpu";
  std::string data_path;      ///< "" = the checkpoint config's data.path
};

struct VerifyResult {
  bool ok = false;
  std::vector<std::string> problems;  ///< why it failed (empty when ok)
  std::vector<std::string> notes;     ///< information that does not fail verification
  double max_abs_diff = -1.0;         ///< of the logits; -1 when not computed
  int64_t samples = 0;
  int64_t mask_mismatches = 0;        ///< mask entries where export and checkpoint differ
  double max_coefficient_diff = 0.0;  ///< of the effective coefficients, export vs checkpoint
  std::optional<double> accuracy;     ///< of the rebuilt model, with --eval
};

/// The core of verify: `trained` is the checkpoint's model, `rebuilt` a fresh copy of it (same
/// weights) that receives the export's masks and coefficients; both run `batch`. Fails when the
/// export does not fit the model, when its masks or coefficients differ from `trained`'s, or
/// when the logits differ by more than `tolerance`.
VerifyResult verify_models(const exports::MaskExport& ex, models::NetImpl& trained, models::NetImpl& rebuilt, const torch::Tensor& batch,
                           double tolerance);

/// verify from files: reads the export (an unreadable or inconsistent one is a failure with
/// the reason), rebuilds the model twice from the checkpoint, runs verify_models on the first
/// `batch` test images, and re-evaluates accuracy when asked.
VerifyResult verify_export(const std::string& export_path, const std::string& checkpoint, const VerifyOptions& options);

}  // namespace autorep::trainer::app
