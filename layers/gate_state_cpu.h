#pragma once
/// The gate's small per-step state updates (running statistics, the curvature cap, hysteresis)
/// as one loop each on the CPU, where ATen spends a few microseconds per call on tensors of
/// C or C·H·W elements: a dozen or more calls per gate and step otherwise (gate.cpp keeps the
/// ATen versions for other devices, and the arithmetic is theirs, in the same order).

#include <torch/types.h>

#include <initializer_list>

namespace autorep::layers::state_cpu {

/// Every tensor a contiguous CPU tensor of `dtype`, float32 or float64.
bool applies(std::initializer_list<const torch::Tensor*> tensors, torch::ScalarType dtype);

/// From per-channel [Σx, Σx²] (float64, 2×C) over n ≥ 2 values: the mean and the unbiased
/// variance (clamped at 0), blended into the running buffers: r ← r·(1−m) + batch·m.
void blend_moments(const torch::Tensor& sums, int64_t n, double momentum, torch::Tensor& running_mean,
                   torch::Tensor& running_var);

/// c2 ← clamp(c2, −L, L) with L = φ(0) / (scale · σ), σ = √max(var, 1e-5) in float64, then c2's
/// dtype, as GateImpl::cap_curvature (scale = 2·k·s2).
void cap_c2(torch::Tensor& c2, const torch::Tensor& running_var, double scale);

/// mask ← mask·[aux > −t] + (1 − mask)·[aux > t].
void hysteresis(torch::Tensor& mask, const torch::Tensor& aux, double threshold);

}  // namespace autorep::layers::state_cpu
