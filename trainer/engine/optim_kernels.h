#pragma once
/// The element loops of the CPU optimiser steps (optim.cpp). Plain C++ on raw arrays (no torch
/// headers), so the library compiles them at full optimisation on their own
/// (trainer/engine/CMakeLists.txt, KERNELS).

#include <cstdint>

namespace autorep::trainer::engine::kernels {

/// One parameter's Adam update in a single pass over its n elements, with the arithmetic of
/// LibTorch's Adam::step in the same order (grad + wd·p; m·β1 + (1−β1)·g; v·β2 + (1−β2)·g·g;
/// √v / √(1−β2^t) + ε; p + (−lr/(1−β1^t))·m/denom), to float rounding (ATen's vector loops
/// may fuse a multiply-add that this loop does not, or the reverse). T: float or double.
template <typename T>
void adam_update(T* p, const T* grad, T* m, T* v, int64_t n, double beta1, double beta2, double weight_decay,
                 double sqrt_bc2, double eps, double step_size);

extern template void adam_update<float>(float*, const float*, float*, float*, int64_t, double, double, double,
                                        double, double, double);
extern template void adam_update<double>(double*, const double*, double*, double*, int64_t, double, double, double,
                                         double, double, double);

}  // namespace autorep::trainer::engine::kernels
