#pragma once
/// The value statistics behind an export's per-site "range": min, max and a histogram of |x| on
/// a log2 scale, filled in one pass over each tensor.

#include <torch/types.h>

#include <vector>

namespace autorep::trainer::deploy {

/// min, max and a high percentile of |x| of the values seen at one point of the graph.
struct ValueRange {
  double min = 0, max = 0;
  double abs_percentile = 0;  ///< the `percentile` quantile of |x| (from a histogram, 1/16 octave bins)
  double max_abs() const;
};

/// |x| counted in bins of 1/16 octave over [2^-48, 2^80) (smaller magnitudes in the first bin,
/// larger ones and infinities in the last), zeros apart; NaNs are counted with the zeros and
/// leave min and max alone. add() makes one pass over a float32 or float64 tensor (any device;
/// CPU tensors are read in place), split over LibTorch's threads; the counts are exact
/// integers, so the result does not depend on the thread count. Bin b holds the |x| with
/// floor(16 (log2 |x| + 48)) = b.
class AbsHistogram {
 public:
  static constexpr int kLow = -48, kHigh = 80, kPerOctave = 16;
  static constexpr int kBins = (kHigh - kLow) * kPerOctave;

  AbsHistogram();
  void add(const torch::Tensor& t);
  /// min, max, and as abs_percentile the upper edge of the bin in which the `percentile` share
  /// of all values is reached, at most max |x| (0 when the zeros alone reach it).
  ValueRange range(double percentile) const;

  double zeros() const { return zeros_; }
  double total() const { return total_; }
  const std::vector<double>& counts() const { return counts_; }

 private:
  std::vector<double> counts_;
  double zeros_ = 0, total_ = 0;
  double lo_, hi_;
};

}  // namespace autorep::trainer::deploy
