#pragma once
/// The weight (and bias) gradient of a convolution with few input channels, for
/// layers/stem_conv.h. Plain C++ on raw NCHW arrays (no torch headers), so the library compiles
/// it at full optimisation on its own (layers/CMakeLists.txt).

#include <cstdint>

namespace autorep::layers::kernels {

/// Sizes of one convolution: input n×c×h×w, weight o×c×kh×kw, output n×o×oh×ow.
struct StemGeometry {
  int64_t n, c, h, w, o, kh, kw, oh, ow, stride_h, stride_w, pad_h, pad_w;
};

/// dw[o][c][i][j] = Σ over n, y, x of g[n][o][y][x] · x[n][c][y·sh + i − ph][x·sw + j − pw]
/// (zero outside the image) and, when db is not null, db[o] = Σ g[n][o][y][x]; x, g
/// contiguous NCHW, dw o×c×kh×kw contiguous. One output channel per parallel task, summed in a
/// fixed order (float64 across images): the same bits at any thread count. T: float or double.
template <typename T>
void stem_weight_gradient(const StemGeometry& s, const T* x, const T* g, T* dw, T* db);

extern template void stem_weight_gradient<float>(const StemGeometry&, const float*, const float*, float*, float*);
extern template void stem_weight_gradient<double>(const StemGeometry&, const double*, const double*, double*,
                                                  double*);

}  // namespace autorep::layers::kernels
