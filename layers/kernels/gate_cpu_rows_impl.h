// The CPU gate kernels for channels_last inputs ([n, p, c] memory), part of gate_cpu_impl.h:
// included by it inside each ISA's namespace, after the shared helpers (vectors, work split,
// q's coefficients). Not a public header; no include guard on purpose.

// ---- channels_last ([n, p, c]) ----------------------------------------------------------

// Rows of C channels (one per sample and position) in contiguous row blocks, one per thread.
// Along a row the per-channel coefficients, mask and sums are arrays (as for N×F inputs), so the
// inner loop is one vector loop however few channels there are. A block keeps its sums in T over
// at most kRowChunk rows, then adds them to its own double row; the blocks' rows are added in a
// fixed order: deterministic for a given thread count, like the channels_first path.
constexpr int64_t kRowChunk = 64;

// A T buffer of n elements starting on a 64-byte boundary (whole-vector loads of the tables and
// sums never straddle two cache lines).
template <typename T>
struct Aligned {
  explicit Aligned(int64_t n) : buf(n + 64 / sizeof(T)) {
    const auto addr = reinterpret_cast<uintptr_t>(buf.data());
    ptr = buf.data() + ((64 - addr % 64) % 64) / sizeof(T);
  }
  std::vector<T> buf;
  T* ptr;
};

// Per-channel q(x) coefficients and the channel (or layer) mask as arrays; for a pixel mask, the
// mask transposed to [p, c] (small next to x: one sample's worth). Shared with the N×F kernels
// (channels = features).
template <typename T>
struct RowTables {
  Aligned<T> a, b, d, m;
};

template <typename T>
RowTables<T> row_tables(const GateProblem& pr, const T* mask, const T* c0, const T* c1, const T* c2,
                        bool pixel) {
  const int64_t C = pr.c, P = pr.p;
  RowTables<T> t{Aligned<T>(C), Aligned<T>(C), Aligned<T>(C), Aligned<T>(pixel ? C * P : C)};
  for (int64_t c = 0; c < C; ++c) {
    const Poly<T> q = poly_of(pr, c0, c1, c2, c);
    t.a.ptr[c] = q.a, t.b.ptr[c] = q.b, t.d.ptr[c] = q.d;
    if (pixel) {
      for (int64_t i = 0; i < P; ++i) t.m.ptr[i * C + c] = mask[c * P + i];
    } else {
      t.m.ptr[c] = pr.mask_numel == 1 ? mask[0] : mask[c];
    }
  }
  return t;
}

// R rows of C channels (`stride` elements apart): y from x with per-channel tables a, b, d (q's
// coefficients) and m (the rows' mask), adding x and x^2 summed over the R rows to the
// per-channel sums s, s2 when MOMENTS. The tables and sums are loaded once per group of rows. Explicit
// vectors (a select, no branch on the data) with a scalar tail. R = 1 for channels_last rows
// (each position has its own pixel-mask row); the N×F kernels walk several.
template <typename T, bool MOMENTS, int R>
inline __attribute__((always_inline)) void forward_row(int64_t C, int64_t stride, const T* __restrict__ x,
                                                       const T* __restrict__ m, const T* __restrict__ a,
                                                       const T* __restrict__ b, const T* __restrict__ d,
                                                       T* __restrict__ y, T* __restrict__ s,
                                                       T* __restrict__ s2, bool nt) {
  using V = typename VecOf<T>::type;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const V zero = {};
  const V half = zero + T(0.5);
  int64_t j = 0;
  for (; j + W <= C; j += W) {
    V mv, av, bv, dv;
    vload(mv, m + j), vload(av, a + j), vload(bv, b + j), vload(dv, d + j);
    const auto kept = mv > half;
    V sv = zero, sq = zero;
    if constexpr (MOMENTS) vload(sv, s + j), vload(sq, s2 + j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      V xv;
      vload(xv, x + r * stride + j);
      const V rl = xv > zero ? xv : zero;
      vstore_out(y + r * stride + j, kept ? rl : av + xv * (bv + dv * xv), nt);
      if constexpr (MOMENTS) {
        sv += xv;
        sq += xv * xv;
      }
    }
    if constexpr (MOMENTS) vstore(s + j, sv), vstore(s2 + j, sq);
  }
  for (; j < C; ++j) {
    for (int r = 0; r < R; ++r) {
      const T xv = x[r * stride + j];
      y[r * stride + j] = m[j] > T(0.5) ? (xv > T(0) ? xv : T(0)) : a[j] + xv * (b[j] + d[j] * xv);
      if constexpr (MOMENTS) s[j] += xv, s2[j] += xv * xv;
    }
  }
}

// One row of C channels of the backward: dx, g*(relu-q) added to gm (the row's pixel-mask
// gradient, or the per-channel sums of a channel/layer mask), g*(1-m)*{1, x, x^2} to s0, s1, s2.
template <typename T>
inline __attribute__((always_inline)) void backward_row(int64_t C, const T* __restrict__ x,
                                                        const T* __restrict__ g, const T* __restrict__ m,
                                                        const T* __restrict__ a, const T* __restrict__ b,
                                                        const T* __restrict__ d, T* __restrict__ dx,
                                                        T* __restrict__ gm, T* __restrict__ s0,
                                                        T* __restrict__ s1, T* __restrict__ s2, bool nt) {
  using V = typename VecOf<T>::type;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const V zero = {};
  const V one = zero + T(1), half = zero + T(0.5);
  int64_t j = 0;
  for (; j + W <= C; j += W) {
    V xv, gv, mv, av, bv, dv;
    vload(xv, x + j), vload(gv, g + j), vload(mv, m + j);
    vload(av, a + j), vload(bv, b + j), vload(dv, d + j);
    const V on = xv > zero ? one : zero;
    const V qv = av + xv * (bv + dv * xv);
    const auto kept = mv > half;
    vstore_out(dx + j, gv * (kept ? on : bv + (dv + dv) * xv), nt);
    V acc;
    vload(acc, gm + j);
    vstore(gm + j, acc + gv * (xv * on - qv));
    const V gq = kept ? zero : gv;
    vload(acc, s0 + j);
    vstore(s0 + j, acc + gq);
    vload(acc, s1 + j);
    vstore(s1 + j, acc + gq * xv);
    vload(acc, s2 + j);
    vstore(s2 + j, acc + gq * xv * xv);
  }
  for (; j < C; ++j) {
    const T xv = x[j], gv = g[j];
    const T on = xv > T(0) ? T(1) : T(0);
    const T qv = a[j] + xv * (b[j] + d[j] * xv);
    const bool kept = m[j] > T(0.5);
    dx[j] = gv * (kept ? on : b[j] + T(2) * d[j] * xv);
    gm[j] += gv * (xv * on - qv);
    const T gq = kept ? T(0) : gv;
    s0[j] += gq;
    s1[j] += gq * xv;
    s2[j] += gq * xv * xv;
  }
}

template <typename T, bool PIXEL, bool MOMENTS>
void forward_cl(const GateProblem& pr, const T* x, const T* mask, const T* c0, const T* c1,
                const T* c2, T* y, double* moments) {
  const int64_t C = pr.c, P = pr.p, rows = pr.n * P;
  const int64_t B = std::clamp<int64_t>(at::get_num_threads(), 1, rows);
  const RowTables<T> tab = row_tables(pr, mask, c0, c1, c2, PIXEL);
  const bool nt = stream_output(rows * C * static_cast<int64_t>(sizeof(T)));
  std::vector<double> part(MOMENTS ? 2 * B * C : 0, 0.0);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> chunk(MOMENTS ? 2 * C : 0);
    for (int64_t blk = begin; blk < end; ++blk) {
      int64_t r0, r1;
      range_of(blk, B, rows, &r0, &r1);
      double* sums = MOMENTS ? part.data() + 2 * blk * C : nullptr;
      int64_t pos = r0 % P;
      for (int64_t r = r0; r < r1;) {
        const int64_t r_end = std::min(r1, r + kRowChunk);
        if (MOMENTS) std::fill(chunk.begin(), chunk.end(), T(0));
        T* __restrict__ s = MOMENTS ? chunk.data() : nullptr;
        T* __restrict__ s2 = MOMENTS ? chunk.data() + C : nullptr;
        for (; r < r_end; ++r) {
          forward_row<T, MOMENTS, 1>(C, C, x + r * C, tab.m.ptr + (PIXEL ? pos * C : 0), tab.a.ptr, tab.b.ptr,
                                     tab.d.ptr, y + r * C, s, s2, nt);
          if (++pos == P) pos = 0;
        }
        for (int64_t j = 0; MOMENTS && j < 2 * C; ++j) sums[j] += chunk[j];
      }
    }
    if (nt) stream_fence();
  });
  for (int64_t c = 0; MOMENTS && c < C; ++c) {
    double s = 0, s2 = 0;
    for (int64_t blk = 0; blk < B; ++blk) {
      s += part[2 * blk * C + c];
      s2 += part[2 * blk * C + C + c];
    }
    moments[c] = s;
    moments[C + c] = s2;
  }
}

// channels_last backward: dx per element; per block, the mask gradient of a pixel mask as a
// [p, c] scratch (added over the blocks in order at the end, then transposed to [c, p]) and the
// per-channel sums (mask gradient of a channel/layer mask, coefficient gradients), in T over at
// most kRowChunk rows, then in double.
template <typename T, bool PIXEL>
void backward_cl(const GateProblem& pr, const T* x, const T* g, const T* mask, const T* c0,
                 const T* c1, const T* c2, T* dx, T* g_mask, T* dc) {
  const int64_t C = pr.c, P = pr.p, rows = pr.n * P;
  const int64_t B = std::clamp<int64_t>(at::get_num_threads(), 1, rows);
  const RowTables<T> tab = row_tables(pr, mask, c0, c1, c2, PIXEL);
  std::vector<T> gm_part(PIXEL ? B * P * C : 0);
  std::vector<double> part(4 * B * C, 0.0);  // per block: gm, d0, d1, d2 per channel
  const bool nt = stream_output(rows * C * static_cast<int64_t>(sizeof(T)));
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> chunk(4 * C);
    for (int64_t blk = begin; blk < end; ++blk) {
      int64_t r0, r1;
      range_of(blk, B, rows, &r0, &r1);
      T* gm_block = PIXEL ? gm_part.data() + blk * P * C : nullptr;
      double* sums = part.data() + 4 * blk * C;
      int64_t pos = r0 % P;
      for (int64_t r = r0; r < r1;) {
        const int64_t r_end = std::min(r1, r + kRowChunk);
        std::fill(chunk.begin(), chunk.end(), T(0));
        T* __restrict__ sm = chunk.data();
        T* __restrict__ s0 = chunk.data() + C;
        T* __restrict__ s1 = chunk.data() + 2 * C;
        T* __restrict__ s2 = chunk.data() + 3 * C;
        for (; r < r_end; ++r) {
          // A pixel mask's gradient goes to the block's [p, c] scratch, a channel mask's to sm.
          T* gm = PIXEL ? gm_block + pos * C : sm;
          backward_row<T>(C, x + r * C, g + r * C, tab.m.ptr + (PIXEL ? pos * C : 0), tab.a.ptr, tab.b.ptr,
                          tab.d.ptr, dx + r * C, gm, s0, s1, s2, nt);
          if (++pos == P) pos = 0;
        }
        for (int64_t j = 0; j < 4 * C; ++j) sums[j] += chunk[j];
      }
    }
    if (nt) stream_fence();
  });
  double layer_gm = 0;
  for (int64_t c = 0; c < C; ++c) {
    double gm = 0, d0 = 0, d1 = 0, d2 = 0;
    for (int64_t blk = 0; blk < B; ++blk) {
      const double* o = part.data() + 4 * blk * C;
      gm += o[c], d0 += o[C + c], d1 += o[2 * C + c], d2 += o[3 * C + c];
    }
    dc[c] = static_cast<T>(d0);
    dc[C + c] = static_cast<T>(pr.s1 * d1);
    dc[2 * C + c] = pr.degree >= 2 ? static_cast<T>(pr.s2 * d2) : T(0);
    if (!PIXEL && pr.mask_numel == C) g_mask[c] = static_cast<T>(gm);
    layer_gm += gm;
    for (int64_t i = 0; PIXEL && i < P; ++i) {
      T s = 0;
      for (int64_t blk = 0; blk < B; ++blk) s += gm_part[(blk * P + i) * C + c];
      g_mask[c * P + i] = s;
    }
  }
  if (!PIXEL && pr.mask_numel == 1) g_mask[0] = static_cast<T>(layer_gm);
}
