#include "layers/kernels/pool_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace autorep::layers::kernels {
// Named, not anonymous: the library compiles as one translation unit with the gate kernels.
namespace max_pool2_detail {

// Elements each parallel task handles at least (a task per plane or row is too small a unit
// for the late, small layers).
constexpr int64_t kGrain = 1 << 14;

// LibTorch's rule: a window value replaces the running maximum when it is larger or NaN, so
// the first of equal values wins and a NaN propagates.
template <class T>
inline void take(T v, uint8_t k, T& m, uint8_t& at) {
  if ((v > m) || (v != v)) {
    m = v;
    at = k;
  }
}

// The four window values of one output: a, b top row, c, d bottom row.
template <class T>
inline void window(T a, T b, T c, T d, T* out, uint8_t* at) {
  T m = a;
  uint8_t k = 0;
  take(b, 1, m, k);
  take(c, 2, m, k);
  take(d, 3, m, k);
  *out = m;
  if (at) *at = k;
}

template <class T>
inline void spread(T g, uint8_t k, T* a, T* b, T* c, T* d) {
  *a = k == 0 ? g : T(0);
  *b = k == 1 ? g : T(0);
  *c = k == 2 ? g : T(0);
  *d = k == 3 ? g : T(0);
}

// The inner loops: `count` outputs from two input rows (NCHW: neighbours a column apart;
// channels_last: four pixels' channel vectors), and their gradients back. Scalar for any type
// and for rows of fewer than four; float32 in SSE2 vectors of four below.
template <class T>
void rows_forward_scalar(const T* top, const T* bottom, T* out, uint8_t* at, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    window(top[2 * i], top[2 * i + 1], bottom[2 * i], bottom[2 * i + 1], out + i, at ? at + i : nullptr);
}
template <class T>
void pixels_forward_scalar(const T* p00, const T* p01, const T* p10, const T* p11, T* out, uint8_t* at,
                           int64_t count) {
  for (int64_t i = 0; i < count; ++i) window(p00[i], p01[i], p10[i], p11[i], out + i, at ? at + i : nullptr);
}
template <class T>
void rows_backward_scalar(const T* g, const uint8_t* at, T* top, T* bottom, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    spread(g[i], at[i], top + 2 * i, top + 2 * i + 1, bottom + 2 * i, bottom + 2 * i + 1);
}
template <class T>
void pixels_backward_scalar(const T* g, const uint8_t* at, T* p00, T* p01, T* p10, T* p11, int64_t count) {
  for (int64_t i = 0; i < count; ++i) spread(g[i], at[i], p00 + i, p01 + i, p10 + i, p11 + i);
}

template <class T>
void rows_forward(const T* top, const T* bottom, T* out, uint8_t* at, int64_t count) {
  rows_forward_scalar(top, bottom, out, at, count);
}
template <class T>
void pixels_forward(const T* p00, const T* p01, const T* p10, const T* p11, T* out, uint8_t* at, int64_t count) {
  pixels_forward_scalar(p00, p01, p10, p11, out, at, count);
}
template <class T>
void rows_backward(const T* g, const uint8_t* at, T* top, T* bottom, int64_t count) {
  rows_backward_scalar(g, at, top, bottom, count);
}
template <class T>
void pixels_backward(const T* g, const uint8_t* at, T* p00, T* p01, T* p10, T* p11, int64_t count) {
  pixels_backward_scalar(g, at, p00, p01, p10, p11, count);
}

#if defined(__SSE2__)
// Blocks of four outputs covering [0, count), count >= 4: the last block ends at `count` and may
// overlap the one before (those outputs are written again, with the same values), so a row of
// 7 (a 14-wide input) takes two vector blocks rather than one and three scalar steps.
template <class Block>
inline void blocks_of_four(int64_t count, Block&& block) {
  for (int64_t i = 0; i + 4 < count; i += 4) block(i);
  block(count - 4);
}

// take() on four outputs with masks (a NaN is unordered with itself).
inline void take4(__m128 v, int position, __m128& m, __m128i& k) {
  const __m128 sel = _mm_or_ps(_mm_cmpgt_ps(v, m), _mm_cmpunord_ps(v, v));
  m = _mm_or_ps(_mm_and_ps(sel, v), _mm_andnot_ps(sel, m));
  const __m128i s = _mm_castps_si128(sel);
  k = _mm_or_si128(_mm_and_si128(s, _mm_set1_epi32(position)), _mm_andnot_si128(s, k));
}
inline void window4(__m128 a, __m128 b, __m128 c, __m128 d, float* out, uint8_t* at) {
  __m128 m = a;
  __m128i k = _mm_setzero_si128();
  take4(b, 1, m, k);
  take4(c, 2, m, k);
  take4(d, 3, m, k);
  _mm_storeu_ps(out, m);
  if (at) {
    const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(k, k), _mm_setzero_si128());
    const int32_t four = _mm_cvtsi128_si32(bytes);
    std::memcpy(at, &four, 4);
  }
}
// The positions of four outputs as 32-bit lanes.
inline __m128i load_positions(const uint8_t* at) {
  int32_t four;
  std::memcpy(&four, at, 4);
  const __m128i zero = _mm_setzero_si128();
  return _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(four), zero), zero);
}
inline __m128 pick(__m128 g, __m128i k, int position) {
  return _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(position))), g);
}

template <>
void rows_forward<float>(const float* top, const float* bottom, float* out, uint8_t* at, int64_t count) {
  if (count < 4) return rows_forward_scalar(top, bottom, out, at, count);
  blocks_of_four(count, [&](int64_t i) {
    const __m128 t0 = _mm_loadu_ps(top + 2 * i), t1 = _mm_loadu_ps(top + 2 * i + 4);
    const __m128 b0 = _mm_loadu_ps(bottom + 2 * i), b1 = _mm_loadu_ps(bottom + 2 * i + 4);
    window4(_mm_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)), _mm_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)),
            _mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0)), _mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1)),
            out + i, at ? at + i : nullptr);
  });
}
template <>
void pixels_forward<float>(const float* p00, const float* p01, const float* p10, const float* p11, float* out,
                           uint8_t* at, int64_t count) {
  if (count < 4) return pixels_forward_scalar(p00, p01, p10, p11, out, at, count);
  blocks_of_four(count, [&](int64_t i) {
    window4(_mm_loadu_ps(p00 + i), _mm_loadu_ps(p01 + i), _mm_loadu_ps(p10 + i), _mm_loadu_ps(p11 + i), out + i,
            at ? at + i : nullptr);
  });
}
template <>
void rows_backward<float>(const float* g, const uint8_t* at, float* top, float* bottom, int64_t count) {
  if (count < 4) return rows_backward_scalar(g, at, top, bottom, count);
  blocks_of_four(count, [&](int64_t i) {
    const __m128 v = _mm_loadu_ps(g + i);
    const __m128i k = load_positions(at + i);
    const __m128 a = pick(v, k, 0), b = pick(v, k, 1), c = pick(v, k, 2), d = pick(v, k, 3);
    _mm_storeu_ps(top + 2 * i, _mm_unpacklo_ps(a, b));
    _mm_storeu_ps(top + 2 * i + 4, _mm_unpackhi_ps(a, b));
    _mm_storeu_ps(bottom + 2 * i, _mm_unpacklo_ps(c, d));
    _mm_storeu_ps(bottom + 2 * i + 4, _mm_unpackhi_ps(c, d));
  });
}
template <>
void pixels_backward<float>(const float* g, const uint8_t* at, float* p00, float* p01, float* p10, float* p11,
                            int64_t count) {
  if (count < 4) return pixels_backward_scalar(g, at, p00, p01, p10, p11, count);
  blocks_of_four(count, [&](int64_t i) {
    const __m128 v = _mm_loadu_ps(g + i);
    const __m128i k = load_positions(at + i);
    _mm_storeu_ps(p00 + i, pick(v, k, 0));
    _mm_storeu_ps(p01 + i, pick(v, k, 1));
    _mm_storeu_ps(p10 + i, pick(v, k, 2));
    _mm_storeu_ps(p11 + i, pick(v, k, 3));
  });
}
#endif

// NCHW: every (n, c) plane on its own, a pair of input rows per output row.
template <class T>
void forward_nchw(const T* x, T* y, uint8_t* idx, int64_t planes, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / (h * w)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t r = 0; r < oh; ++r) {
        const T* top = x + (p * h + 2 * r) * w;
        const int64_t o = (p * oh + r) * ow;
        rows_forward(top, top + w, y + o, idx ? idx + o : nullptr, ow);
      }
    }
  });
}

template <class T>
void backward_nchw(const T* gy, const uint8_t* idx, T* gx, int64_t planes, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / (h * w)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t r = 0; r < oh; ++r) {
        T* top = gx + (p * h + 2 * r) * w;
        T* bottom = top + w;
        const int64_t o = (p * oh + r) * ow;
        rows_backward(gy + o, idx + o, top, bottom, ow);
        if (w % 2) top[w - 1] = bottom[w - 1] = T(0);
      }
      if (h % 2) std::fill_n(gx + (p * h + h - 1) * w, w, T(0));
    }
  });
}

// channels_last: every (n, output row) on its own; each output pixel takes the maximum of four
// input pixels' channel vectors (the inner loop runs along contiguous channels).
template <class T>
void forward_nhwc(const T* x, T* y, uint8_t* idx, int64_t n, int64_t ch, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  at::parallel_for(0, n * oh, std::max<int64_t>(1, kGrain / (2 * w * ch)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / oh, r = row % oh;
      for (int64_t c = 0; c < ow; ++c) {
        const T* p00 = x + ((b * h + 2 * r) * w + 2 * c) * ch;
        const T* p10 = p00 + w * ch;
        const int64_t o = (row * ow + c) * ch;
        pixels_forward(p00, p00 + ch, p10, p10 + ch, y + o, idx ? idx + o : nullptr, ch);
      }
    }
  });
}

template <class T>
void backward_nhwc(const T* gy, const uint8_t* idx, T* gx, int64_t n, int64_t ch, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  // Each output row writes its two input rows; an odd last input row is zeroed by the task that
  // holds the image's last output row.
  at::parallel_for(0, n * oh, std::max<int64_t>(1, kGrain / (2 * w * ch)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / oh, r = row % oh;
      T* top = gx + (b * h + 2 * r) * w * ch;
      T* bottom = top + w * ch;
      for (int64_t c = 0; c < ow; ++c) {
        T* p00 = top + 2 * c * ch;
        T* p10 = bottom + 2 * c * ch;
        const int64_t o = (row * ow + c) * ch;
        pixels_backward(gy + o, idx + o, p00, p00 + ch, p10, p10 + ch, ch);
      }
      if (w % 2) {
        std::fill_n(top + (w - 1) * ch, ch, T(0));
        std::fill_n(bottom + (w - 1) * ch, ch, T(0));
      }
      if (h % 2 && r == oh - 1) std::fill_n(bottom + w * ch, w * ch, T(0));
    }
  });
}

}  // namespace max_pool2_detail

template <class T>
void max_pool2_forward(const T* x, T* y, uint8_t* index, int64_t n, int64_t ch, int64_t h, int64_t w,
                       bool channels_last) {
  if (channels_last) {
    max_pool2_detail::forward_nhwc(x, y, index, n, ch, h, w);
  } else {
    max_pool2_detail::forward_nchw(x, y, index, n * ch, h, w);
  }
}

template <class T>
void max_pool2_backward(const T* grad_y, const uint8_t* index, T* grad_x, int64_t n, int64_t ch, int64_t height,
                        int64_t width, bool channels_last) {
  if (channels_last) {
    max_pool2_detail::backward_nhwc(grad_y, index, grad_x, n, ch, height, width);
  } else {
    max_pool2_detail::backward_nchw(grad_y, index, grad_x, n * ch, height, width);
  }
}

template void max_pool2_forward<float>(const float*, float*, uint8_t*, int64_t, int64_t, int64_t, int64_t, bool);
template void max_pool2_forward<double>(const double*, double*, uint8_t*, int64_t, int64_t, int64_t, int64_t, bool);
template void max_pool2_backward<float>(const float*, const uint8_t*, float*, int64_t, int64_t, int64_t, int64_t,
                                        bool);
template void max_pool2_backward<double>(const double*, const uint8_t*, double*, int64_t, int64_t, int64_t,
                                         int64_t, bool);

}  // namespace autorep::layers::kernels
