// softplus and the straight-through factor of the CPU gate, in explicit vectors, compiled once
// per ISA inside gate_cpu.cpp's namespaces (see gate_cpu_impl.h, whose VecOf/vload/vstore it
// uses). Not a public header; no include guard on purpose.

namespace AUTOREP_GATE_ISA {

// Integer lanes of the same width as T's (for building 2^k from its bits).
template <typename T>
struct SoftplusTraits;
template <>
struct SoftplusTraits<float> {
  typedef int32_t Int;
  typedef int32_t IVec __attribute__((vector_size(AUTOREP_GATE_VEC_BYTES)));
  static constexpr int kMantissa = 23, kBias = 127;
  static constexpr float kLowest = -87.0f;  // exp below it is under float's normal range
  static constexpr int kExpTerms = 8, kLogTerms = 8;
};
template <>
struct SoftplusTraits<double> {
  typedef int64_t Int;
  typedef int64_t IVec __attribute__((vector_size(AUTOREP_GATE_VEC_BYTES)));
  static constexpr int kMantissa = 52, kBias = 1023;
  static constexpr double kLowest = -708.0;
  static constexpr int kExpTerms = 14, kLogTerms = 17;
};

// softplus(a) = max(a, 0) + log1p(exp(-|a|)) on every lane, to about an ulp of T:
//   exp(y), y <= 0: y = k*ln2 + r with |r| <= ln2/2 (ln2 in two parts), Taylor series of e^r,
//                   times 2^k built from its bits; 0 below T's normal range.
//   log1p(t), t in (0, 1]: 2*atanh(s) with s = t/(2+t) <= 1/3, an odd series in s; exact in
//                   relative terms for small t, where log(1+t) would lose t's digits.
template <typename T, typename V>
inline __attribute__((always_inline)) V softplus_vec(V a) {
  using Tr = SoftplusTraits<T>;
  using IV = typename Tr::IVec;
  const V zero = {};
  const V y0 = a > zero ? -a : a;
  const auto tiny = y0 < zero + Tr::kLowest;
  const V y = tiny ? zero + Tr::kLowest : y0;
  const V k = __builtin_convertvector(__builtin_convertvector(y * T(1.4426950408889634) - T(0.5), IV), V);
  // y/ln2 - 0.5 is negative: truncating it rounds y/ln2 to the nearest integer.
  const V r = (y - k * T(0.693145751953125)) - k * T(1.4286068203094172321e-06);
  V e = zero + T(1);
  for (int i = Tr::kExpTerms; i >= 1; --i) e = e * (r * (T(1) / T(i))) + T(1);
  const IV bits = (__builtin_convertvector(k, IV) + typename Tr::Int(Tr::kBias)) << Tr::kMantissa;
  V scale;
  __builtin_memcpy(&scale, &bits, sizeof(V));
  const V t = tiny ? zero : e * scale;
  const V s = t / (t + T(2));
  const V s2 = s * s;
  V l = zero + T(1) / T(2 * Tr::kLogTerms + 1);
  for (int i = Tr::kLogTerms - 1; i >= 0; --i) l = l * s2 + T(1) / T(2 * i + 1);
  const V relu = a > zero ? a : zero;
  const V sp = relu + T(2) * s * l;
  return a != a ? a : sp;  // NaN stays NaN
}

// g_mask[i] *= softplus(aux[i]) for i in [lo, hi).
template <typename T>
void straight_through_range(const T* __restrict__ aux, T* __restrict__ g_mask, int64_t lo, int64_t hi) {
  using V = typename VecOf<T>::type;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  int64_t i = lo;
  for (; i + W <= hi; i += W) {
    V a, gm;
    vload(a, aux + i);
    vload(gm, g_mask + i);
    vstore(g_mask + i, gm * softplus_vec<T>(a));
  }
  if (i < hi) {
    // The tail through the same vector code, so every element gets the same rounding.
    T a_tail[W] = {}, gm_tail[W] = {};
    for (int64_t j = i; j < hi; ++j) a_tail[j - i] = aux[j], gm_tail[j - i] = g_mask[j];
    V a, gm;
    vload(a, a_tail);
    vload(gm, gm_tail);
    vstore(gm_tail, gm * softplus_vec<T>(a));
    for (int64_t j = i; j < hi; ++j) g_mask[j] = gm_tail[j - i];
  }
}

template <typename T>
void straight_through_impl(const T* aux, T* g_mask, int64_t n) {
  // Elementwise, so any split gives the same result. Small masks stay on the calling thread.
  constexpr int64_t kGrain = int64_t{1} << 14;
  if (n <= kGrain) return straight_through_range(aux, g_mask, 0, n);
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) { straight_through_range(aux, g_mask, lo, hi); });
}

inline void straight_through_f(const float* aux, float* g_mask, int64_t n) { straight_through_impl(aux, g_mask, n); }
inline void straight_through_d(const double* aux, double* g_mask, int64_t n) { straight_through_impl(aux, g_mask, n); }

}  // namespace AUTOREP_GATE_ISA
