#pragma once
/// CPU kernels of 2×2 max pooling with stride 2 (layers/pool.h), NCHW or channels_last.

#include <ATen/core/Tensor.h>

namespace autorep::layers::kernels {

/// y = max over each 2×2 window of x (float32 or float64, NCHW-contiguous or channels_last,
/// H, W ≥ 2; an odd last row or column is left out, as floor mode does). When `index` is
/// given it receives, per output, which of the window's four inputs was taken (0 top-left,
/// 1 top-right, 2 bottom-left, 3 bottom-right), for the backward pass. The first of equal
/// values wins and a NaN propagates, as in LibTorch's CPU max_pool2d: same outputs, same
/// gradients. y (and index) have x's memory format.
at::Tensor max_pool2_forward(const at::Tensor& x, at::Tensor* index);

/// The gradient of an N×C×height×width input: each output's gradient goes to the input it
/// took, zeros elsewhere (one pass writes every element), in channels_last memory when the
/// forward's input was (`channels_last`), NCHW otherwise.
at::Tensor max_pool2_backward(const at::Tensor& grad_y, const at::Tensor& index, int64_t height,
                              int64_t width, bool channels_last);

/// Whether the kernels take `x` in channels_last memory (it is channels_last-contiguous and
/// not NCHW-contiguous; the two are the same memory when C = 1).
bool pool_channels_last(const at::Tensor& x);

}  // namespace autorep::layers::kernels
