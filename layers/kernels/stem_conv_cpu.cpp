#include "layers/kernels/stem_conv_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace autorep::layers::kernels {
// Named, not anonymous: the same rule as the other kernel files (a unity build may join them).
namespace stem_detail {

// dW[o][c][i][j] = sum over n, y, x of g[n][o][y][x] * x[n][c][y*sh + i - ph][x*sw + j - pw]
// (zero outside the image), one output channel per task, in a fixed order.
//
// Stride 1: with the image zero-padded to width Wp = W + 2 pw (and height H + 2 ph) and g
// laid out at the same width (zeros in its last kw - 1 columns), tap (c, i, j) is one dot
// product of length OH * Wp between g and the padded image shifted by i * Wp + j: the columns
// that would wrap into the next row meet g's zeros. Eight partial sums in T (vectorisable
// without reassociation), added in float64.
template <typename T>
void weight_gradient_stride1(const StemGeometry& s, const T* x, const T* g, T* dw, T* db) {
  const int64_t taps = s.c * s.kh * s.kw;
  const int64_t wp = s.w + 2 * s.pad_w, hp = s.h + 2 * s.pad_h, len = s.oh * wp;
  at::parallel_for(0, s.o, 1, [&](int64_t o_begin, int64_t o_end) {
    std::vector<double> acc(static_cast<size_t>(taps));
    // Every padded channel of one image, then kw spare zeros read past the end by the last tap.
    std::vector<T> xp(static_cast<size_t>(s.c * hp * wp + s.kw), T(0)), gp(static_cast<size_t>(len), T(0));
    for (int64_t o = o_begin; o < o_end; ++o) {
      std::fill(acc.begin(), acc.end(), 0.0);
      double bias = 0;
      for (int64_t n = 0; n < s.n; ++n) {
        for (int64_t c = 0; c < s.c; ++c)
          for (int64_t y = 0; y < s.h; ++y)
            std::copy_n(x + ((n * s.c + c) * s.h + y) * s.w, s.w,
                        xp.data() + (c * hp + y + s.pad_h) * wp + s.pad_w);
        const T* gn = g + (n * s.o + o) * s.oh * s.ow;
        for (int64_t y = 0; y < s.oh; ++y) std::copy_n(gn + y * s.ow, s.ow, gp.data() + y * wp);
        for (int64_t c = 0; c < s.c; ++c) {
          for (int64_t i = 0; i < s.kh; ++i) {
            for (int64_t j = 0; j < s.kw; ++j) {
              const T* __restrict__ a = gp.data();
              const T* __restrict__ b = xp.data() + (c * hp + i) * wp + j;
              T part[8] = {};
              int64_t t = 0;
              for (; t + 8 <= len; t += 8)
                for (int k = 0; k < 8; ++k) part[k] += a[t + k] * b[t + k];
              double sum = 0;
              for (; t < len; ++t) sum += static_cast<double>(a[t] * b[t]);
              for (int k = 0; k < 8; ++k) sum += static_cast<double>(part[k]);
              acc[static_cast<size_t>((c * s.kh + i) * s.kw + j)] += sum;
            }
          }
        }
        if (db) {
          double b = 0;
          for (int64_t t = 0; t < s.oh * s.ow; ++t) b += static_cast<double>(gn[t]);
          bias += b;
        }
      }
      for (int64_t t = 0; t < taps; ++t) dw[o * taps + t] = static_cast<T>(acc[static_cast<size_t>(t)]);
      if (db) db[o] = static_cast<T>(bias);
    }
  });
}

// Any stride: per image, each tap accumulates its products element-wise in a row of T
// (vectorised, no reduction chain); the rows are then summed into float64 per image.
template <typename T>
void weight_gradient(const StemGeometry& s, const T* x, const T* g, T* dw, T* db) {
  const int64_t taps = s.c * s.kh * s.kw;
  // Output columns [lo, hi) whose input column xo*sw + j - pw lies inside the image, per j.
  std::vector<int64_t> lo(static_cast<size_t>(s.kw)), hi(static_cast<size_t>(s.kw));
  for (int64_t j = 0; j < s.kw; ++j) {
    const int64_t shift = j - s.pad_w;
    int64_t l = 0, h = s.ow;
    while (l < h && l * s.stride_w + shift < 0) ++l;
    while (h > l && (h - 1) * s.stride_w + shift >= s.w) --h;
    lo[static_cast<size_t>(j)] = l;
    hi[static_cast<size_t>(j)] = h;
  }
  at::parallel_for(0, s.o, 1, [&](int64_t o_begin, int64_t o_end) {
    std::vector<double> acc(static_cast<size_t>(taps));
    std::vector<T> rows(static_cast<size_t>(taps * s.ow)), bias_row(static_cast<size_t>(s.ow));
    for (int64_t o = o_begin; o < o_end; ++o) {
      std::fill(acc.begin(), acc.end(), 0.0);
      double bias = 0;
      for (int64_t n = 0; n < s.n; ++n) {
        std::fill(rows.begin(), rows.end(), T(0));
        std::fill(bias_row.begin(), bias_row.end(), T(0));
        const T* gp = g + (n * s.o + o) * s.oh * s.ow;
        for (int64_t y = 0; y < s.oh; ++y) {
          const T* __restrict__ grow = gp + y * s.ow;
          if (db) {
            T* __restrict__ b = bias_row.data();
            for (int64_t xo = 0; xo < s.ow; ++xo) b[xo] += grow[xo];
          }
          for (int64_t c = 0; c < s.c; ++c) {
            for (int64_t i = 0; i < s.kh; ++i) {
              const int64_t yi = y * s.stride_h + i - s.pad_h;
              if (yi < 0 || yi >= s.h) continue;
              const T* xrow = x + ((n * s.c + c) * s.h + yi) * s.w;
              for (int64_t j = 0; j < s.kw; ++j) {
                T* __restrict__ r = rows.data() + ((c * s.kh + i) * s.kw + j) * s.ow;
                const int64_t shift = j - s.pad_w, l = lo[static_cast<size_t>(j)], h = hi[static_cast<size_t>(j)];
                if (s.stride_w == 1) {
                  const T* __restrict__ xs = xrow + shift;
                  for (int64_t xo = l; xo < h; ++xo) r[xo] += grow[xo] * xs[xo];
                } else {
                  for (int64_t xo = l; xo < h; ++xo) r[xo] += grow[xo] * xrow[xo * s.stride_w + shift];
                }
              }
            }
          }
        }
        for (int64_t t = 0; t < taps; ++t) {
          double sum = 0;
          for (int64_t xo = 0; xo < s.ow; ++xo) sum += static_cast<double>(rows[static_cast<size_t>(t * s.ow + xo)]);
          acc[static_cast<size_t>(t)] += sum;
        }
        if (db)
          for (int64_t xo = 0; xo < s.ow; ++xo) bias += static_cast<double>(bias_row[static_cast<size_t>(xo)]);
      }
      for (int64_t t = 0; t < taps; ++t) dw[o * taps + t] = static_cast<T>(acc[static_cast<size_t>(t)]);
      if (db) db[o] = static_cast<T>(bias);
    }
  });
}

}  // namespace stem_detail

template <typename T>
void stem_weight_gradient(const StemGeometry& s, const T* x, const T* g, T* dw, T* db) {
  if (s.stride_h == 1 && s.stride_w == 1) {
    stem_detail::weight_gradient_stride1(s, x, g, dw, db);
  } else {
    stem_detail::weight_gradient(s, x, g, dw, db);
  }
}

template void stem_weight_gradient<float>(const StemGeometry&, const float*, const float*, float*, float*);
template void stem_weight_gradient<double>(const StemGeometry&, const double*, const double*, double*, double*);

}  // namespace autorep::layers::kernels
