#include "trainer/deploy/abs_histogram.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>

namespace autorep::trainer::deploy {

namespace {

constexpr int kSub = AbsHistogram::kPerOctave;

template <typename T>
struct FloatBits;
template <>
struct FloatBits<float> {
  using U = uint32_t;
  static constexpr int kMantissa = 23, kBias = 127, kMaxExp = 255;
};
template <>
struct FloatBits<double> {
  using U = uint64_t;
  static constexpr int kMantissa = 52, kBias = 1023, kMaxExp = 2047;
};

// Within an octave, m = |x| / 2^e in [1, 2) lies in sub-bin k when 2^(k/16) <= m < 2^((k+1)/16).
// The top 8 bits of m's mantissa name a slice [1 + j/256, 1 + (j+1)/256) holding at most one of
// those edges (they are >= 0.044 apart): the sub-bin is the slice's first plus whether the
// mantissa reaches the slice's edge (the mantissa of the smallest T >= 2^(k/16)), an integer
// comparison. The same bin as floor(16 log2 m), without a log2 or a branch.
template <typename T>
struct SubBins {
  using U = typename FloatBits<T>::U;
  static constexpr int kShift = FloatBits<T>::kMantissa - 8;
  std::array<int32_t, 256> first{};  // sub-bin at the slice's start
  std::array<U, 256> edge{};         // mantissa bits of the slice's edge (2^kMantissa: none)
  SubBins() {
    constexpr int M = FloatBits<T>::kMantissa;
    for (int j = 0; j < 256; ++j) {
      const double start = 1.0 + j / 256.0, end = 1.0 + (j + 1) / 256.0;
      int k = 0;
      while (k + 1 < kSub && std::exp2(static_cast<double>(k + 1) / kSub) <= start) ++k;
      first[j] = k;
      edge[j] = U{1} << M;
      const double next = std::exp2(static_cast<double>(k + 1) / kSub);
      if (k + 1 < kSub && next < end) {
        T e = static_cast<T>(next);
        if (static_cast<double>(e) < next) e = std::nextafter(e, T{2});
        U bits;
        std::memcpy(&bits, &e, sizeof bits);
        edge[j] = bits & ((U{1} << M) - 1);
      }
    }
  }
};

template <typename T>
const SubBins<T>& sub_bins() {
  static const SubBins<T> s;
  return s;
}

// Counts of one slice of the values: kLanes interleaved histograms, so that runs of values in
// one bin (the zeros of a ReLU's output) do not wait on each other's increments; the slot after
// the bins counts zeros and NaNs.
constexpr int kLanes = 4;
constexpr int kSlots = AbsHistogram::kBins + 1;

struct Partial {
  std::vector<int64_t> counts = std::vector<int64_t>(kLanes * kSlots, 0);
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
};

// The slot of one value, from integer operations on its bits. (Inlined by force: the deploy
// library compiles at -O1, which inlines nothing on its own.)
template <typename T>
inline __attribute__((always_inline)) int slot_of(T x, const SubBins<T>& sb) {
  using B = FloatBits<T>;
  using U = typename B::U;
  constexpr U kMagnitude = ~(U{1} << (sizeof(U) * 8 - 1));
  constexpr U kInfinity = static_cast<U>(B::kMaxExp) << B::kMantissa;
  U bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits &= kMagnitude;
  const U mantissa = bits & ((U{1} << B::kMantissa) - 1);
  const auto slice = static_cast<unsigned>(mantissa >> SubBins<T>::kShift);
  // Octaves below 2^-48 (subnormals too) go to the first bin, from 2^80 on (infinities too) to
  // the last.
  const int octave = static_cast<int>(bits >> B::kMantissa) - B::kBias - AbsHistogram::kLow;
  const int bin = std::min(std::max(octave * kSub + sb.first[slice] + static_cast<int>(mantissa >= sb.edge[slice]), 0),
                           AbsHistogram::kBins - 1);
  // Zero or NaN: the slot after the bins, chosen by a mask (a branch on ReLU outputs, half of
  // them zeros in no order, would be mispredicted half the time).
  const int zero_or_nan = -static_cast<int>(bits - 1 >= kInfinity);  // bits == 0 wraps around
  return bin ^ ((bin ^ AbsHistogram::kBins) & zero_or_nan);
}

template <typename T>
void count(const T* v, int64_t n, Partial& p) {
  const SubBins<T>& sb = sub_bins<T>();
  int64_t* c = p.counts.data();
  T lo = std::numeric_limits<T>::infinity(), hi = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T x = v[i + l];
      lo = x < lo ? x : lo;  // NaN: no change
      hi = x > hi ? x : hi;
      ++c[l * kSlots + slot_of(x, sb)];
    }
  }
  for (; i < n; ++i) {
    const T x = v[i];
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
    ++c[slot_of(x, sb)];
  }
  p.lo = static_cast<double>(lo);
  p.hi = static_cast<double>(hi);
}

}  // namespace

double ValueRange::max_abs() const { return std::max(std::abs(min), std::abs(max)); }

AbsHistogram::AbsHistogram()
    : counts_(kBins, 0.0), lo_(std::numeric_limits<double>::infinity()), hi_(-std::numeric_limits<double>::infinity()) {}

void AbsHistogram::add(const torch::Tensor& t) {
  torch::Tensor x = t.detach();
  if (!x.is_cpu()) x = x.cpu();
  if (x.scalar_type() != torch::kDouble && x.scalar_type() != torch::kFloat) x = x.to(torch::kFloat);
  x = x.contiguous();
  std::mutex merge;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "abs_histogram", [&] {
    const scalar_t* v = x.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), int64_t{1} << 16, [&](int64_t begin, int64_t end) {
      Partial p;
      count(v + begin, end - begin, p);
      std::lock_guard<std::mutex> lock(merge);
      for (int l = 0; l < kLanes; ++l) {
        const int64_t* c = p.counts.data() + l * kSlots;
        for (int b = 0; b < kBins; ++b) counts_[b] += static_cast<double>(c[b]);
        zeros_ += static_cast<double>(c[kBins]);
      }
      lo_ = std::min(lo_, p.lo);
      hi_ = std::max(hi_, p.hi);
    });
  });
  total_ += static_cast<double>(x.numel());
}

ValueRange AbsHistogram::range(double percentile) const {
  ValueRange r;
  r.min = lo_;
  r.max = hi_;
  const double want = percentile * total_;
  double seen = zeros_;
  if (seen >= want) return r;
  for (int b = 0; b < kBins; ++b) {
    seen += counts_[b];
    if (seen >= want) {
      r.abs_percentile = std::min(r.max_abs(), std::exp2(kLow + static_cast<double>(b + 1) / kPerOctave));
      return r;
    }
  }
  r.abs_percentile = r.max_abs();
  return r;
}

}  // namespace autorep::trainer::deploy
