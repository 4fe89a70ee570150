#pragma once
/// 2×2 max pooling with stride 2, the pooling of the shipped models (cnn-small, vgg).

#include <torch/types.h>

namespace autorep::layers {

/// torch::max_pool2d(x, 2) (kernel 2, stride 2, floor mode), with the same outputs and
/// gradients, from fused kernels on the CPU for float32 and float64, in NCHW or channels_last
/// memory: LibTorch 1.13's CPU pooling runs at a fraction of memory speed (NCHW: ~6 ms for
/// 128×16×28×28 with gradients, ~11 ms without; these kernels: a few tenths). Other devices
/// and dtypes use torch::max_pool2d. Differentiable once (no double backward).
torch::Tensor max_pool2(const torch::Tensor& x);

}  // namespace autorep::layers
