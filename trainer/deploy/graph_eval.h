#pragma once
/// The exported network evaluated op by op as its ONNX graph computes it (batch norms folded,
/// each site in the form the export gives it), in LibTorch: to observe the value range at every
/// activation site, and to run the network in the fixed-point arithmetic of a private-inference
/// engine (`autorep verify --fixed-point 64.13`).

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "search/export/relu_mask.h"
#include "trainer/deploy/abs_histogram.h"
#include "trainer/deploy/onnx_export.h"
#include "trainer/models/net.h"

namespace autorep::trainer::deploy {

/// A two's-complement fixed-point format: `total` bits, `fraction` of them after the point
/// (64.13: the ring Z_2^64 with scale 2^13, as Delphi- and CrypTFlow2-style engines use).
struct FixedPoint {
  int total = 64, fraction = 13;
  /// Parses "TOTAL.FRACTION" (e.g. "64.13"); throws naming the text when malformed or out of
  /// range (fraction < total <= 64, total - fraction <= 53 so the integer part fits a double).
  static FixedPoint parse(const std::string& text);
  /// Values must stay in (-limit, limit): 2^(total - fraction - 1).
  double limit() const;
  std::string text() const { return std::to_string(total) + "." + std::to_string(fraction); }
};

/// The bits a signed integer part needs to hold values up to `max_abs` (sign bit included).
int integer_bits(double max_abs);

/// Runs a model's description (NetImpl::describe) with LibTorch ops.
class GraphEvaluator {
 public:
  /// `ex` must fit the model's sites. With `format`, every weight and every value the graph
  /// computes is rounded to it (in float64); without, the graph runs in float32.
  GraphEvaluator(models::NetImpl& net, const exports::MaskExport& ex, Normalisation norm,
                 std::optional<FixedPoint> format = std::nullopt);
  ~GraphEvaluator();
  /// Logits of `images` (float N x C x H x W in [0, 1]). With a format, `out_of_range` (when
  /// given) receives per image whether any value left the format's range.
  torch::Tensor forward(const torch::Tensor& images, torch::Tensor* out_of_range = nullptr);
  /// Called at every activation site with (site index, input, output) during forward.
  std::function<void(size_t, const torch::Tensor&, const torch::Tensor&)> on_site;

 private:
  class Sink;
  std::unique_ptr<Sink> sink_;
};

struct SiteRange {
  std::string name;
  ValueRange input, output;
};

/// The ranges of every site's input and output over `images` (uint8 N x C x H x W, as the data
/// sets hold them), run in batches of `batch` through GraphEvaluator.
std::vector<SiteRange> observe_ranges(models::NetImpl& net, const exports::MaskExport& ex, const Normalisation& norm,
                                      const torch::Tensor& images, int64_t batch = 250, double percentile = 0.9999);

/// A checkpoint's network run in fixed point against the same graph in float32, over its
/// test split.
struct FixedPointResult {
  FixedPoint format;
  int64_t samples = 0;
  double accuracy_float = 0, accuracy_fixed = 0;
  int64_t out_of_range = 0;           ///< test images with a value outside the format's range
  int64_t prediction_mismatches = 0;  ///< fixed against float
  double max_logit_diff = 0;          ///< over the images that stay in range
};

/// Loads the checkpoint, builds its export and evaluates both ways ("" = the config's data path;
/// `limit` > 0: only the first `limit` test images).
FixedPointResult evaluate_fixed_point(const std::string& checkpoint, const FixedPoint& format,
                                      const std::string& data_path = "", int64_t limit = 0);

/// Writes the ranges into a relu-mask document: per site "range": {"images", "percentile",
/// "input": {"min", "max", "abs_percentile"}, "output": {...}}.
void add_ranges(exports::ExportJson& doc, const std::vector<SiteRange>& ranges, int64_t images, double percentile);

}  // namespace autorep::trainer::deploy
