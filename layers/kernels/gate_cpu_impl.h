// The CPU gate kernels, written once and compiled several times by gate_cpu.cpp: for the
// baseline ISA and, on x86-64 with GCC, under `#pragma GCC target` for AVX2 and AVX-512,
// chosen at run time. Not a public header: gate_cpu.cpp defines AUTOREP_GATE_ISA (the
// namespace) and AUTOREP_GATE_VEC_BYTES and includes the dependencies before it. No include
// guard on purpose.

namespace AUTOREP_GATE_ISA {

// Explicit vectors of AUTOREP_GATE_VEC_BYTES (GCC/Clang vector extensions): the loops vectorise
// no matter what the auto-vectoriser makes of the reductions, and the order of every sum is
// fixed.
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(AUTOREP_GATE_VEC_BYTES)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(AUTOREP_GATE_VEC_BYTES)));
};

template <typename V, typename T>
inline __attribute__((always_inline)) void vload(V& v, const T* p) {
  __builtin_memcpy(&v, p, sizeof(V));
}
template <typename V, typename T>
inline __attribute__((always_inline)) void vstore(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
// Stores an output vector: around the caches (a non-temporal store, no read-for-ownership of
// the line) when `nt` and p is aligned to the vector, else a plain store. Outputs larger than
// the last-level cache cannot stay there for the next layer anyway; streaming them moves two
// streams of memory traffic per element instead of three (see stream_output in gate_cpu.cpp).
// A kernel that streamed calls stream_fence() in each task before its results are read.
template <typename V, typename T>
inline __attribute__((always_inline)) void vstore_out(T* p, const V& v, bool nt) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (nt && reinterpret_cast<uintptr_t>(p) % sizeof(V) == 0) {
    if constexpr (sizeof(V) == 64 && sizeof(T) == 4) {
      _mm512_stream_ps(p, (__m512)v);
    } else if constexpr (sizeof(V) == 64) {
      _mm512_stream_pd(p, (__m512d)v);
    } else if constexpr (sizeof(V) == 32 && sizeof(T) == 4) {
      _mm256_stream_ps(p, (__m256)v);
    } else if constexpr (sizeof(V) == 32) {
      _mm256_stream_pd(p, (__m256d)v);
    } else if constexpr (sizeof(T) == 4) {
      _mm_stream_ps(p, (__m128)v);
    } else {
      _mm_stream_pd(p, (__m128d)v);
    }
    return;
  }
#else
  (void)nt;
#endif
  vstore(p, v);
}

template <typename T, typename V>
inline __attribute__((always_inline)) T hsum(const V& v) {
  T s = 0;
  for (size_t j = 0; j < sizeof(V) / sizeof(T); ++j) s += v[j];
  return s;
}

// Work split of an N×C×P problem: batch blocks × channel chunks, about one task per thread.
// Each task walks its rows in memory order (groups of kRowGroup samples, channels inner), so
// every thread streams through contiguous memory; sums are kept per batch block and reduced in
// a fixed order afterwards, which makes results deterministic for a given thread count.
struct Split {
  int64_t batch_blocks = 1, channel_chunks = 1;
  int64_t tasks() const { return batch_blocks * channel_chunks; }
};

inline Split split_of(const GateProblem& pr) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  Split s;
  s.batch_blocks = std::clamp<int64_t>(threads, 1, std::max<int64_t>(pr.n, 1));
  s.channel_chunks = std::clamp<int64_t>((threads + s.batch_blocks - 1) / s.batch_blocks, 1,
                                         std::max<int64_t>(pr.c, 1));
  return s;
}

inline void range_of(int64_t i, int64_t parts, int64_t total, int64_t* lo, int64_t* hi) {
  *lo = i * total / parts;
  *hi = (i + 1) * total / parts;
}

template <typename T>
struct Poly {
  T a, b, d;  // q(x) = a + b*x + d*x^2 with the scales folded in
};

template <typename T>
inline Poly<T> poly_of(const GateProblem& pr, const T* c0, const T* c1, const T* c2, int64_t c) {
  return {c0[c], static_cast<T>(pr.s1) * c1[c], pr.degree >= 2 ? static_cast<T>(pr.s2) * c2[c] : T(0)};
}

// One vector of one row in the backward: writes dx = g * (kept ? [x>0] : b + 2d*x) and adds
// g*relu(x), g, g*x, g*x^2 to the four running sums (shared by the NCHW and N×F kernels);
// dx streamed when nt (vstore_out).
template <typename V, typename M, typename T>
inline __attribute__((always_inline)) void backward_vector(const V& xv, const V& gv, const M& kept, const V& b,
                                                           const V& two_d, T* __restrict__ dx, V& sr, V& s0,
                                                           V& s1, V& s2, bool nt) {
  const V zero = {};
  const V one = zero + T(1);
  const auto pos = xv > zero;
  vstore_out(dx, gv * (kept ? (pos ? one : zero) : b + two_d * xv), nt);
  sr += gv * (pos ? xv : zero);
  s0 += gv;
  const V gx = gv * xv;
  s1 += gx;
  s2 += gx * xv;
}

// ---- forward ----------------------------------------------------------------------------

// R rows of one channel (samples n..n+R-1, `stride` elements apart), walked together: each
// mask vector is loaded once for the R rows, and the R streams stay contiguous from one channel
// to the next. Per-element or (PIXEL false) per-channel mask. Adds sum(x), sum(x^2) to
// *sum / *sumsq when MOMENTS. y selects relu where the (binary) mask is set and q elsewhere, so a
// kept position stays exactly relu even where q overflows (a blend would give 0*inf = NaN).
template <typename T, bool PIXEL, bool MOMENTS, int R>
inline __attribute__((always_inline)) void forward_rows(int64_t p, int64_t stride,
                                                        const T* __restrict__ x,
                                                        const T* __restrict__ m, T m_scalar, Poly<T> q,
                                                        T* __restrict__ y, double* sum, double* sumsq, bool nt) {
  using V = typename VecOf<T>::type;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const V zero = {};
  const V half = zero + T(0.5), a = zero + q.a, b = zero + q.b, d = zero + q.d;
  V mv = zero + m_scalar;
  V vs = zero, vq = zero;
  int64_t i = 0;
  for (; i + W <= p; i += W) {
    if constexpr (PIXEL) vload(mv, m + i);
    const auto kept = mv > half;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      V xv;
      vload(xv, x + r * stride + i);
      const V rl = xv > zero ? xv : zero;
      const V qv = a + xv * (b + d * xv);
      vstore_out(y + r * stride + i, kept ? rl : qv, nt);
      if constexpr (MOMENTS) {
        vs += xv;
        vq += xv * xv;
      }
    }
  }
  T s = 0, s2 = 0;
  for (; i < p; ++i) {
    const T ms = PIXEL ? m[i] : m_scalar;
    for (int r = 0; r < R; ++r) {
      const T xv = x[r * stride + i];
      const T rl = xv > T(0) ? xv : T(0);
      y[r * stride + i] = ms > T(0.5) ? rl : q.a + xv * (q.b + q.d * xv);
      s += xv;
      s2 += xv * xv;
    }
  }
  if constexpr (MOMENTS) {
    *sum += static_cast<double>(hsum<T>(vs) + s);
    *sumsq += static_cast<double>(hsum<T>(vq) + s2);
  }
}

// Rows of one channel walked together (see forward_rows / backward_rows).
constexpr int kRowGroup = 4;

template <typename T, bool PIXEL, bool MOMENTS>
void forward_conv(const GateProblem& pr, const T* x, const T* mask, const T* c0, const T* c1,
                  const T* c2, T* y, double* moments) {
  const int64_t C = pr.c, P = pr.p, N = pr.n;
  const Split sp = split_of(pr);
  const int64_t B = sp.batch_blocks;
  const bool nt = stream_output(N * C * P * static_cast<int64_t>(sizeof(T)));
  std::vector<double> part(MOMENTS ? 2 * B * C : 0, 0.0);
  at::parallel_for(0, sp.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t nb = t / sp.channel_chunks;
      int64_t n0, n1, ca, cb;
      range_of(nb, B, N, &n0, &n1);
      range_of(t % sp.channel_chunks, sp.channel_chunks, C, &ca, &cb);
      double* sums = MOMENTS ? part.data() + 2 * nb * C : nullptr;
      for (int64_t n = n0; n < n1;) {
        const bool group = n + kRowGroup <= n1;
        for (int64_t c = ca; c < cb; ++c) {
          const int64_t off = (n * C + c) * P;
          const T* m = PIXEL ? mask + c * P : nullptr;
          const T ms = PIXEL ? T(0) : (pr.mask_numel == 1 ? mask[0] : mask[c]);
          double* s = MOMENTS ? &sums[2 * c] : nullptr;
          double* s2 = MOMENTS ? &sums[2 * c + 1] : nullptr;
          if (group) {
            forward_rows<T, PIXEL, MOMENTS, kRowGroup>(P, C * P, x + off, m, ms, poly_of(pr, c0, c1, c2, c),
                                                       y + off, s, s2, nt);
          } else {
            forward_rows<T, PIXEL, MOMENTS, 1>(P, C * P, x + off, m, ms, poly_of(pr, c0, c1, c2, c), y + off,
                                               s, s2, nt);
          }
        }
        n += group ? kRowGroup : 1;
      }
    }
    if (nt) stream_fence();
  });
  if (MOMENTS) {
    for (int64_t c = 0; c < C; ++c) {
      double s = 0, s2 = 0;
      for (int64_t nb = 0; nb < B; ++nb) {
        s += part[2 * (nb * C + c)];
        s2 += part[2 * (nb * C + c) + 1];
      }
      moments[c] = s;
      moments[C + c] = s2;
    }
  }
}

#include "layers/kernels/gate_cpu_rows_impl.h"
#include "layers/kernels/gate_cpu_linear_impl.h"

template <typename T>
void forward_impl(const GateProblem& pr, const T* x, const T* mask, const T* c0, const T* c1,
                  const T* c2, T* y, double* moments, GateLayout layout) {
  if (pr.n * pr.c * pr.p == 0) {
    for (int64_t i = 0; moments && i < 2 * pr.c; ++i) moments[i] = 0;
    return;
  }
  if (pr.p == 1) {
    if (moments) return forward_linear<T, true>(pr, x, mask, c0, c1, c2, y, moments);
    return forward_linear<T, false>(pr, x, mask, c0, c1, c2, y, moments);
  }
  const bool pixel = pr.mask_numel == pr.c * pr.p;
  if (layout == GateLayout::channels_last) {
    if (pixel && moments) return forward_cl<T, true, true>(pr, x, mask, c0, c1, c2, y, moments);
    if (pixel) return forward_cl<T, true, false>(pr, x, mask, c0, c1, c2, y, moments);
    if (moments) return forward_cl<T, false, true>(pr, x, mask, c0, c1, c2, y, moments);
    return forward_cl<T, false, false>(pr, x, mask, c0, c1, c2, y, moments);
  }
  if (pixel && moments) return forward_conv<T, true, true>(pr, x, mask, c0, c1, c2, y, moments);
  if (pixel) return forward_conv<T, true, false>(pr, x, mask, c0, c1, c2, y, moments);
  if (moments) return forward_conv<T, false, true>(pr, x, mask, c0, c1, c2, y, moments);
  return forward_conv<T, false, false>(pr, x, mask, c0, c1, c2, y, moments);
}

// ---- backward ---------------------------------------------------------------------------

// Per-channel sums of one task: g*(relu-q) (the mask gradient of a channel/layer mask) and
// g*(1-m)*{1, x, x^2} (coefficient gradients before the scales).
struct ChannelSums {
  double gm = 0, d0 = 0, d1 = 0, d2 = 0;
};

// R rows of one channel (samples n..n+R-1, `stride` elements apart) walked together: writes
// dx, adds g*(relu-q) summed over the R rows into gm (PIXEL: one read-modify-write per R rows)
// or the channel sum, and the coefficient sums. Partial sums stay in vector lanes for the rows,
// then go to double.
template <typename T, bool PIXEL, int R>
inline __attribute__((always_inline)) void backward_rows(int64_t p, int64_t stride,
                                                         const T* __restrict__ x,
                                                         const T* __restrict__ g,
                                                         const T* __restrict__ m, T m_scalar,
                                                         Poly<T> q, T* __restrict__ dx,
                                                         T* __restrict__ gm, ChannelSums* sums, bool nt) {
  using V = typename VecOf<T>::type;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const V zero = {};
  const V one = zero + T(1), a = zero + q.a, b = zero + q.b, d = zero + q.d;
  const V two_d = d + d;
  V mv = zero + m_scalar;
  V vm = zero, v0 = zero, v1 = zero, v2 = zero;
  int64_t i = 0;
  for (; i + W <= p; i += W) {
    if constexpr (PIXEL) vload(mv, m + i);
    const auto kept = mv > one * T(0.5);
    // Over the R rows: g*relu(x), g, g*x, g*x^2. q is linear in its coefficients, so the
    // mask gradient g*(relu(x) - q(x)) of the R rows follows from these four sums.
    V sr = zero, s0 = zero, s1 = zero, s2 = zero;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      V xv, gv;
      vload(xv, x + r * stride + i);
      vload(gv, g + r * stride + i);
      backward_vector(xv, gv, kept, b, two_d, dx + r * stride + i, sr, s0, s1, s2, nt);
    }
    const V gmv = sr - (a * s0 + b * s1 + d * s2);
    if constexpr (PIXEL) {
      V acc;
      vload(acc, gm + i);
      vstore(gm + i, acc + gmv);
    } else {
      vm += gmv;
    }
    v0 += kept ? zero : s0;
    v1 += kept ? zero : s1;
    v2 += kept ? zero : s2;
  }
  T sm = 0, s0 = 0, s1 = 0, s2 = 0;
  for (; i < p; ++i) {
    const T ms = PIXEL ? m[i] : m_scalar;
    T gmv = 0;
    for (int r = 0; r < R; ++r) {
      const T xv = x[r * stride + i], gv = g[r * stride + i];
      const T pos = xv > T(0) ? T(1) : T(0);
      const T qv = q.a + xv * (q.b + q.d * xv);
      dx[r * stride + i] = gv * (ms > T(0.5) ? pos : q.b + T(2) * q.d * xv);
      gmv += gv * (xv * pos - qv);
      const T gq = ms > T(0.5) ? T(0) : gv;
      s0 += gq;
      s1 += gq * xv;
      s2 += gq * xv * xv;
    }
    if constexpr (PIXEL) {
      gm[i] += gmv;
    } else {
      sm += gmv;
    }
  }
  sums->gm += static_cast<double>(hsum<T>(vm) + sm);
  sums->d0 += static_cast<double>(hsum<T>(v0) + s0);
  sums->d1 += static_cast<double>(hsum<T>(v1) + s1);
  sums->d2 += static_cast<double>(hsum<T>(v2) + s2);
}

template <typename T, bool PIXEL>
void backward_conv(const GateProblem& pr, const T* x, const T* g, const T* mask, const T* c0,
                   const T* c1, const T* c2, T* dx, T* g_mask, T* dc) {
  const int64_t C = pr.c, P = pr.p, N = pr.n;
  const Split sp = split_of(pr);
  const int64_t B = sp.batch_blocks;
  // Per-element mask gradients: batch block 0 accumulates into g_mask, blocks 1..B-1 into
  // scratch (each C*P, small next to x), added in order at the end.
  std::unique_ptr<T[]> gm_part(PIXEL && B > 1 ? new T[(B - 1) * C * P] : nullptr);  // filled per task
  const bool nt = stream_output(N * C * P * static_cast<int64_t>(sizeof(T)));
  std::vector<ChannelSums> part(B * C);
  at::parallel_for(0, sp.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t nb = t / sp.channel_chunks;
      int64_t n0, n1, ca, cb;
      range_of(nb, B, N, &n0, &n1);
      range_of(t % sp.channel_chunks, sp.channel_chunks, C, &ca, &cb);
      T* gm = PIXEL ? (nb == 0 ? g_mask : gm_part.get() + (nb - 1) * C * P) : nullptr;
      if (PIXEL) std::fill(gm + ca * P, gm + cb * P, T(0));
      ChannelSums* sums = part.data() + nb * C;
      for (int64_t n = n0; n < n1;) {
        const bool group = n + kRowGroup <= n1;
        for (int64_t c = ca; c < cb; ++c) {
          const int64_t off = (n * C + c) * P;
          const T* m = PIXEL ? mask + c * P : nullptr;
          const T ms = PIXEL ? T(0) : (pr.mask_numel == 1 ? mask[0] : mask[c]);
          T* gmc = PIXEL ? gm + c * P : nullptr;
          if (group) {
            backward_rows<T, PIXEL, kRowGroup>(P, C * P, x + off, g + off, m, ms,
                                               poly_of(pr, c0, c1, c2, c), dx + off, gmc, &sums[c], nt);
          } else {
            backward_rows<T, PIXEL, 1>(P, C * P, x + off, g + off, m, ms, poly_of(pr, c0, c1, c2, c),
                                       dx + off, gmc, &sums[c], nt);
          }
        }
        n += group ? kRowGroup : 1;
      }
    }
    if (nt) stream_fence();
  });
  if (PIXEL && B > 1) {
    // Small next to x (one sample's worth per block): a second parallel region would cost
    // more than it saves at the usual sizes.
    auto add_blocks = [&](int64_t begin, int64_t end) {
      for (int64_t nb = 1; nb < B; ++nb) {
        const T* src = gm_part.get() + (nb - 1) * C * P;
        for (int64_t i = begin; i < end; ++i) g_mask[i] += src[i];
      }
    };
    if ((B - 1) * C * P < (int64_t{1} << 20)) {
      add_blocks(0, C * P);
    } else {
      at::parallel_for(0, C * P, 1 << 14, add_blocks);
    }
  }
  double layer_gm = 0;
  for (int64_t c = 0; c < C; ++c) {
    ChannelSums s;
    for (int64_t nb = 0; nb < B; ++nb) {
      const ChannelSums& o = part[nb * C + c];
      s.gm += o.gm, s.d0 += o.d0, s.d1 += o.d1, s.d2 += o.d2;
    }
    dc[c] = static_cast<T>(s.d0);
    dc[C + c] = static_cast<T>(pr.s1 * s.d1);
    dc[2 * C + c] = pr.degree >= 2 ? static_cast<T>(pr.s2 * s.d2) : T(0);
    if (!PIXEL && pr.mask_numel == C) g_mask[c] = static_cast<T>(s.gm);
    layer_gm += s.gm;
  }
  if (!PIXEL && pr.mask_numel == 1) g_mask[0] = static_cast<T>(layer_gm);
}

template <typename T>
void backward_impl(const GateProblem& pr, const T* x, const T* g, const T* mask, const T* c0,
                   const T* c1, const T* c2, T* dx, T* g_mask, T* dc, GateLayout layout) {
  if (pr.n * pr.c * pr.p == 0) {
    std::fill(g_mask, g_mask + pr.mask_numel, T(0));
    std::fill(dc, dc + 3 * pr.c, T(0));
    return;
  }
  if (pr.p == 1) return backward_linear(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc);
  if (layout == GateLayout::channels_last) {
    if (pr.mask_numel == pr.c * pr.p) return backward_cl<T, true>(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc);
    return backward_cl<T, false>(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc);
  }
  if (pr.mask_numel == pr.c * pr.p) {
    return backward_conv<T, true>(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc);
  }
  return backward_conv<T, false>(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc);
}

// Non-template entry points of this ISA.
inline void forward_f(const GateProblem& pr, const float* x, const float* mask, const float* c0,
                      const float* c1, const float* c2, float* y, double* moments, GateLayout layout) {
  forward_impl(pr, x, mask, c0, c1, c2, y, moments, layout);
}
inline void forward_d(const GateProblem& pr, const double* x, const double* mask, const double* c0,
                      const double* c1, const double* c2, double* y, double* moments,
                      GateLayout layout) {
  forward_impl(pr, x, mask, c0, c1, c2, y, moments, layout);
}
inline void backward_f(const GateProblem& pr, const float* x, const float* g, const float* mask,
                       const float* c0, const float* c1, const float* c2, float* dx, float* g_mask,
                       float* dc, GateLayout layout) {
  backward_impl(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc, layout);
}
inline void backward_d(const GateProblem& pr, const double* x, const double* g, const double* mask,
                       const double* c0, const double* c1, const double* c2, double* dx,
                       double* g_mask, double* dc, GateLayout layout) {
  backward_impl(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc, layout);
}

}  // namespace AUTOREP_GATE_ISA
