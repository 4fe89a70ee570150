#pragma once
/// CPU kernels of 2×2 max pooling with stride 2 (layers/pool.h), NCHW or channels_last. Plain
/// C++ on raw arrays (no torch headers), so the library compiles them at full optimisation on
/// their own (layers/CMakeLists.txt); the tensor glue is in pool.cpp.

#include <cstdint>

namespace autorep::layers::kernels {

/// y = max over each 2×2 window of x, an n×ch×h×w input (h, w ≥ 2; an odd last row or column is
/// left out, as floor mode does), contiguous NCHW or, `channels_last`, NHWC; y (n×ch×h/2×w/2)
/// and `index` in the same order. When `index` is not null it receives, per output, which of
/// the window's four inputs was taken (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right),
/// for the backward pass. The first of equal values wins and a NaN propagates, as in
/// LibTorch's CPU max_pool2d: same outputs, same gradients. T: float or double.
template <class T>
void max_pool2_forward(const T* x, T* y, uint8_t* index, int64_t n, int64_t ch, int64_t h, int64_t w,
                       bool channels_last);

/// The gradient of the n×ch×height×width input: each output's gradient goes to the input it
/// took, zeros elsewhere (one pass writes every element), in the forward's memory order.
template <class T>
void max_pool2_backward(const T* grad_y, const uint8_t* index, T* grad_x, int64_t n, int64_t ch, int64_t height,
                        int64_t width, bool channels_last);

extern template void max_pool2_forward<float>(const float*, float*, uint8_t*, int64_t, int64_t, int64_t, int64_t,
                                              bool);
extern template void max_pool2_forward<double>(const double*, double*, uint8_t*, int64_t, int64_t, int64_t,
                                               int64_t, bool);
extern template void max_pool2_backward<float>(const float*, const uint8_t*, float*, int64_t, int64_t, int64_t,
                                               int64_t, bool);
extern template void max_pool2_backward<double>(const double*, const uint8_t*, double*, int64_t, int64_t, int64_t,
                                                int64_t, bool);

}  // namespace autorep::layers::kernels
