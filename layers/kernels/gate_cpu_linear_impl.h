// The CPU gate kernels for N×F inputs ([n, f] memory), part of gate_cpu_impl.h: included by it
// inside each ISA's namespace, after the channels_last kernels (whose tables, forward row loop
// and row chunk it shares). Not a public header; no include guard on purpose.

// ---- N×F ([n, f]) -------------------------------------------------------------------------

// Forward: row blocks, one per thread, each walked several rows at a time along the whole
// feature axis, so every thread streams through its own contiguous memory (moments: per-block
// sums in T over at most kRowChunk rows, then in double, blocks added in a fixed order).
// Backward: feature blocks, a few per thread, each walked down all rows several at a time, so
// the four per-feature sums of a block stay in the core's own caches (walking whole rows, they
// were re-read from farther for every group of rows: half the speed). Coefficients, mask and
// the group's sums are loaded once per group of rows.
// Rows per pass: four where the outputs stream past the caches (each row is three memory
// streams, x, g and dx, and 24 of them at once left the memory system less bandwidth than 12 on
// an AMD EPYC with an 8 MiB last-level cache: backward 1.1–1.3x ReLU's against 1.4–1.9x with
// eight), eight where the tensors stay cached (half the loads and stores of the per-feature
// tables and sums per row: 256×12544 float32 on a Xeon, `bench gate --shape 256,12544`, gate
// over ReLU 1.14–1.18 -> 1.01–1.05 at 2 threads, 1.05–1.11 -> 0.94–0.98 at 1). Every sum adds
// its rows one after another whatever the pass, so the rows per pass do not change any bit.
constexpr int kStreamedRows = 4;
constexpr int kCachedRows = 8;

// Rows [n, end) in passes: body(std::integral_constant<int, R>{}, first_row) for each group of
// R rows, R = kStreamedRows when the outputs stream (nt), else kCachedRows, then R = 1 for the
// rows left over.
template <typename Body>
inline __attribute__((always_inline)) void for_row_passes(int64_t n, int64_t end, bool nt, Body&& body) {
  if (nt) {
    for (; n + kStreamedRows <= end; n += kStreamedRows) body(std::integral_constant<int, kStreamedRows>{}, n);
  } else {
    for (; n + kCachedRows <= end; n += kCachedRows) body(std::integral_constant<int, kCachedRows>{}, n);
  }
  for (; n < end; ++n) body(std::integral_constant<int, 1>{}, n);
}

template <typename T, bool MOMENTS>
void forward_linear(const GateProblem& pr, const T* x, const T* mask, const T* c0, const T* c1,
                    const T* c2, T* y, double* moments) {
  const int64_t F = pr.c, N = pr.n;
  const int64_t B = std::clamp<int64_t>(at::get_num_threads(), 1, N);
  const RowTables<T> tab = row_tables(pr, mask, c0, c1, c2, /*pixel=*/false);
  const T *a = tab.a.ptr, *b = tab.b.ptr, *d = tab.d.ptr, *m = tab.m.ptr;
  std::vector<double> part(MOMENTS ? 2 * B * F : 0, 0.0);
  const bool nt = stream_output(N * F * static_cast<int64_t>(sizeof(T)));
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Aligned<T> sums(MOMENTS ? 2 * F : 0);
    T *s = sums.ptr, *s2 = sums.ptr + F;
    for (int64_t blk = begin; blk < end; ++blk) {
      int64_t n0, n1;
      range_of(blk, B, N, &n0, &n1);
      double* ds = MOMENTS ? part.data() + 2 * blk * F : nullptr;
      for (int64_t n = n0; n < n1;) {
        const int64_t chunk_end = std::min(n1, n + kRowChunk);
        if (MOMENTS) std::fill(s, s + 2 * F, T(0));
        for_row_passes(n, chunk_end, nt, [&](auto rows, int64_t r) {
          forward_row<T, MOMENTS, decltype(rows)::value>(F, F, x + r * F, m, a, b, d, y + r * F, s, s2, nt);
        });
        n = chunk_end;
        for (int64_t j = 0; MOMENTS && j < 2 * F; ++j) ds[j] += s[j];
      }
    }
    if (nt) stream_fence();
  });
  for (int64_t f = 0; MOMENTS && f < F; ++f) {
    double s = 0, s2 = 0;
    for (int64_t blk = 0; blk < B; ++blk) s += part[2 * blk * F + f], s2 += part[2 * blk * F + F + f];
    moments[f] = s;
    moments[F + f] = s2;
  }
}

// Feature blocks up to 8,192 wide (the four sums 128 KiB, in L2): each row segment a thread
// streams is then up to 32 KiB long, so the hardware prefetchers restart less often than on the
// 2,048-wide blocks of before (256×12544 float32, 2 threads, `bench gate --iters 100`, the two
// binaries alternating: gate_over_relu 1.02–1.08 -> 0.95–1.03). The width does not change any
// sum's order (a feature's vector or scalar path depends on F alone): the same bits.
constexpr int64_t kMaxFeatureBlock = 8192;

struct FeatureBlocks {
  int64_t width = 1, count = 1;
};

// Equal feature blocks of at most kMaxFeatureBlock, their number a multiple of the thread count,
// their width a multiple of 16 (whole vectors, aligned rows where F allows).
inline FeatureBlocks feature_blocks(int64_t F) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t count = std::max<int64_t>(threads, (F + kMaxFeatureBlock - 1) / kMaxFeatureBlock);
  count = (count + threads - 1) / threads * threads;
  FeatureBlocks fb;
  fb.width = std::max<int64_t>(16, ((F + count - 1) / count + 15) / 16 * 16);
  fb.count = (F + fb.width - 1) / fb.width;
  return fb;
}

// R rows, one vector of features at a time: writes dx and adds over the rows g*relu(x), g, g*x,
// g*x^2 to sr, s0, s1, s2 (the mask and coefficient gradients follow from these four, as q is
// linear in its coefficients).
template <typename T, int R>
inline __attribute__((always_inline)) void backward_linear_rows(
    int64_t nf, int64_t F, const T* __restrict__ x, const T* __restrict__ g, const T* __restrict__ m,
    const T* __restrict__ b, const T* __restrict__ d, T* __restrict__ dx, T* __restrict__ sr,
    T* __restrict__ s0, T* __restrict__ s1, T* __restrict__ s2, bool nt) {
  using V = typename VecOf<T>::type;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const V zero = {};
  const V half = zero + T(0.5);
  int64_t j = 0;
  for (; j + W <= nf; j += W) {
    V mv, bv, dv;
    vload(mv, m + j), vload(bv, b + j), vload(dv, d + j);
    const auto kept = mv > half;
    const V two_d = dv + dv;
    V vr, v0, v1, v2;  // the sums so far: each row added in turn, as the scalar tail does
    vload(vr, sr + j), vload(v0, s0 + j), vload(v1, s1 + j), vload(v2, s2 + j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      V xv, gv;
      vload(xv, x + r * F + j);
      vload(gv, g + r * F + j);
      backward_vector(xv, gv, kept, bv, two_d, dx + r * F + j, vr, v0, v1, v2, nt);
    }
    vstore(sr + j, vr), vstore(s0 + j, v0), vstore(s1 + j, v1), vstore(s2 + j, v2);
  }
  for (; j < nf; ++j) {
    for (int r = 0; r < R; ++r) {
      const T xv = x[r * F + j], gv = g[r * F + j];
      const bool pos = xv > T(0);
      dx[r * F + j] = gv * (m[j] > T(0.5) ? (pos ? T(1) : T(0)) : b[j] + T(2) * d[j] * xv);
      sr[j] += pos ? gv * xv : T(0);
      s0[j] += gv;
      s1[j] += gv * xv;
      s2[j] += gv * xv * xv;
    }
  }
}

template <typename T>
void backward_linear(const GateProblem& pr, const T* x, const T* g, const T* mask, const T* c0,
                     const T* c1, const T* c2, T* dx, T* g_mask, T* dc) {
  const int64_t F = pr.c, N = pr.n;
  const FeatureBlocks fb = feature_blocks(F);
  const bool layer = pr.mask_numel == 1 && F > 1;
  const RowTables<T> tab = row_tables(pr, mask, c0, c1, c2, /*pixel=*/false);
  std::vector<double> gm_feature(layer ? F : 0);
  const bool nt = stream_output(N * F * static_cast<int64_t>(sizeof(T)));
  at::parallel_for(0, fb.count, 1, [&](int64_t begin, int64_t end) {
    Aligned<T> sums(4 * fb.width);
    std::vector<double> dsums(4 * fb.width);
    T *sr = sums.ptr, *s0 = sr + fb.width, *s1 = s0 + fb.width, *s2 = s1 + fb.width;
    double *dgm = dsums.data(), *d0 = dgm + fb.width, *d1 = d0 + fb.width, *d2 = d1 + fb.width;
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t f0 = blk * fb.width, nf = std::min(fb.width, F - f0);
      const T *a = tab.a.ptr + f0, *b = tab.b.ptr + f0, *d = tab.d.ptr + f0, *m = tab.m.ptr + f0;
      for (double* arr : {dgm, d0, d1, d2}) std::fill(arr, arr + nf, 0.0);
      for (int64_t n = 0; n < N;) {
        const int64_t chunk_end = std::min(N, n + kRowChunk);
        for (T* arr : {sr, s0, s1, s2}) std::fill(arr, arr + nf, T(0));
        for_row_passes(n, chunk_end, nt, [&](auto rows, int64_t r) {
          backward_linear_rows<T, decltype(rows)::value>(nf, F, x + r * F + f0, g + r * F + f0, m, b, d,
                                                         dx + r * F + f0, sr, s0, s1, s2, nt);
        });
        n = chunk_end;
        for (int64_t j = 0; j < nf; ++j) {
          dgm[j] += static_cast<double>(sr[j] - (a[j] * s0[j] + b[j] * s1[j] + d[j] * s2[j]));
          if (m[j] > T(0.5)) continue;  // kept: q does not reach the output
          d0[j] += s0[j], d1[j] += s1[j], d2[j] += s2[j];
        }
      }
      for (int64_t j = 0; j < nf; ++j) {
        if (layer) {
          gm_feature[f0 + j] = dgm[j];
        } else {
          g_mask[f0 + j] = static_cast<T>(dgm[j]);
        }
        dc[f0 + j] = static_cast<T>(d0[j]);
        dc[F + f0 + j] = static_cast<T>(pr.s1 * d1[j]);
        dc[2 * F + f0 + j] = pr.degree >= 2 ? static_cast<T>(pr.s2 * d2[j]) : T(0);
      }
    }
    if (nt) stream_fence();
  });
  if (layer) {
    double s = 0;
    for (int64_t f = 0; f < F; ++f) s += gm_feature[f];
    g_mask[0] = static_cast<T>(s);
  }
}
