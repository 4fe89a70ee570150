#pragma once
/// The counter-based random numbers behind every seeded choice (data order, augmentation,
/// random masks): the same on every standard library and platform.

#include <cstdint>

namespace autorep::util {

/// SplitMix64's output function of x + golden gamma (Steele et al. 2014).
constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

/// A counter-based stream: cheap to seed, so every sample of a batch can get its own.
struct SplitMix64 {
  uint64_t state;
  uint64_t operator()() { return splitmix64(state++); }
};

/// A uniform integer in [0, n) by rejection sampling on the raw 64-bit stream
/// (std::uniform_int_distribution is implementation-defined).
template <typename Generator>
uint64_t uniform_below(Generator& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do {
    r = rng();
  } while (r >= limit);
  return r % n;
}

}  // namespace autorep::util
