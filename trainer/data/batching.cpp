#include "trainer/data/dataset.h"

#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
#include <numeric>
#include <random>

#include "layers/util/random.h"

namespace autorep::trainer::data {

using util::splitmix64;
using util::SplitMix64;
using util::uniform_below;

// splitmix64's mix of a linear key, offset by the golden gamma splitmix64 adds, so the seeds (and
// every recorded run's batches) are the ones the training loop drew before it used
// util::splitmix64.
uint64_t batch_seed(uint64_t seed, int64_t epoch, int64_t step) {
  return splitmix64(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) * 0xBF58476D1CE4E5B9ull +
                    static_cast<uint64_t>(step) * 0x94D049BB133111EBull + 0x2545F4914F6CDD1Dull -
                    0x9E3779B97F4A7C15ull);
}

torch::Tensor epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  TORCH_CHECK(n >= 0, "epoch_order: n must be >= 0, got ", n);
  auto order = torch::empty({n}, torch::kLong);
  int64_t* p = order.data_ptr<int64_t>();
  std::iota(p, p + n, int64_t{0});
  std::mt19937_64 rng(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(epoch) ^ 0x6A09E667F3BCC909ULL)));
  for (int64_t i = n - 1; i > 0; --i) {
    std::swap(p[i], p[uniform_below(rng, static_cast<uint64_t>(i + 1))]);
  }
  return order;
}

torch::Tensor make_batch(const DataSplits& data, const Dataset& split, const torch::Tensor& indices, bool train,
                         uint64_t augment_seed, int64_t first_position) {
  TORCH_CHECK(split.images.defined() && split.images.dim() == 4 && split.images.scalar_type() == torch::kUInt8,
              "make_batch: split images must be uint8 N x C x H x W");
  TORCH_CHECK(indices.dim() == 1, "make_batch: indices must be 1-D, got ", indices.sizes());
  const auto images_t = split.images.is_contiguous() ? split.images : split.images.contiguous();
  const auto idx_t = indices.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t batch = idx_t.numel(), n = images_t.size(0);
  const int64_t channels = images_t.size(1), height = images_t.size(2), width = images_t.size(3);
  const int64_t plane = height * width;
  TORCH_CHECK(static_cast<int64_t>(data.mean.size()) == channels && static_cast<int64_t>(data.std.size()) == channels,
              "make_batch: ", data.mean.size(), " normalisation channels for images with ", channels, " channels");
  const int64_t* idx = idx_t.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(idx[b] >= 0 && idx[b] < n, "make_batch: index ", idx[b], " out of range for ", n, " samples");
  }

  // (v / 255 - mean) / std for every byte value; padding is a black (0) pixel, as torchvision
  // pads before normalising.
  std::vector<float> lut(static_cast<size_t>(channels * 256));
  for (int64_t c = 0; c < channels; ++c) {
    for (int v = 0; v < 256; ++v) lut[c * 256 + v] = (v / 255.0f - data.mean[c]) / data.std[c];
  }

  std::vector<int64_t> shift_y(batch, 0), shift_x(batch, 0);
  std::vector<uint8_t> flip(batch, 0);
  if (train) {
    // Each sample draws from its own stream, keyed by its position in the whole batch, so a
    // batch split across processes is augmented exactly as the whole batch in one process.
    const uint64_t key = splitmix64(augment_seed ^ 0xBB67AE8584CAA73BULL);
    const int64_t pad = data.crop_padding;
    for (int64_t b = 0; b < batch; ++b) {
      SplitMix64 rng{splitmix64(key ^ static_cast<uint64_t>(first_position + b) * 0x9E3779B97F4A7C15ULL)};
      if (pad > 0) {
        shift_y[b] = static_cast<int64_t>(uniform_below(rng, 2 * pad + 1)) - pad;
        shift_x[b] = static_cast<int64_t>(uniform_below(rng, 2 * pad + 1)) - pad;
      }
      if (data.flip) flip[b] = static_cast<uint8_t>(rng() >> 63);
    }
  }

  auto out = torch::empty({batch, channels, height, width}, torch::kFloat);
  float* dst = out.data_ptr<float>();
  const uint8_t* src = images_t.data_ptr<uint8_t>();
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, channels * plane));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t dy = shift_y[b], dx = shift_x[b];
      const bool mirrored = flip[b] != 0;
      for (int64_t c = 0; c < channels; ++c) {
        const float* table = lut.data() + c * 256;
        const uint8_t* in = src + (idx[b] * channels + c) * plane;
        float* o = dst + (b * channels + c) * plane;
        for (int64_t y = 0; y < height; ++y) {
          const int64_t sy = y + dy;
          float* row = o + y * width;
          if (sy < 0 || sy >= height) {
            std::fill(row, row + width, table[0]);
            continue;
          }
          const uint8_t* in_row = in + sy * width;
          if (dx == 0 && !mirrored) {
            for (int64_t x = 0; x < width; ++x) row[x] = table[in_row[x]];
            continue;
          }
          // Crop, then flip: output x shows cropped column (width - 1 - x) when mirrored.
          for (int64_t x = 0; x < width; ++x) {
            const int64_t sx = (mirrored ? width - 1 - x : x) + dx;
            row[x] = (sx < 0 || sx >= width) ? table[0] : table[in_row[sx]];
          }
        }
      }
    }
  });
  return out;
}

}  // namespace autorep::trainer::data
