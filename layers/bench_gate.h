#pragma once
/// `autorep bench gate`: forward+backward time of the fused gate against a plain ReLU and the
/// composite reference, measured interleaved in one run.

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace autorep::layers {

struct GateBenchOptions {
  /// Input shape: N,C,H,W or N,F.
  std::vector<int64_t> shape{64, 64, 28, 28};
  /// "cpu" or "cuda".
  std::string device = "cpu";
  /// Timed iterations per variant (median reported), after `warmup` untimed ones; the composite
  /// reference (tens of times slower, only a reference) runs at most 20. On a shared machine a
  /// single iteration moves by ±30%, so the median needs a few dozen.
  int iters = 50;
  int warmup = 3;
  /// "pixel", "channel" or "layer".
  std::string granularity = "pixel";
  /// Element type of x: "float32", or on CUDA also "bfloat16" and "float16" (mask and
  /// coefficients stay float32, as in training).
  std::string dtype = "float32";
  /// x and dL/dy in channels_last memory (4-d shapes only): the gate's row kernels, and ReLU and
  /// the copy on the same layout.
  bool channels_last = false;
};

/// Times (median ms of interleaved iterations, float32) forward+backward of torch::relu, the
/// composite gate, the fused gate and a Gate module in training mode (fused gate + running
/// statistics), plus a tensor copy of the same size; prints median and minimum ms, effective
/// GB/s (5 tensor passes for a forward+backward, 2 for the copy) and the ratios (of medians;
/// of minima too, which are steadier on a shared machine). The last line is
/// `gate_over_relu=<fused/relu>` (medians). On the CPU with glibc it sets malloc's mmap/trim
/// thresholds for the process (see the .cpp) so that no variant pays page faults on memory the
/// allocator just gave back. Returns 0; throws std::runtime_error on bad options.
int run_gate_bench(const GateBenchOptions& options, std::ostream& out);

}  // namespace autorep::layers
