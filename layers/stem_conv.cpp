#include "layers/stem_conv.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <vector>

#include "layers/util/variant.h"

namespace autorep::layers {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kMaxChannels = 4;

using util::alternative;

struct Geometry {
  int64_t n, c, h, w, o, kh, kw, oh, ow, stride_h, stride_w, pad_h, pad_w;
};

// dW[o][c][i][j] = sum over n, y, x of g[n][o][y][x] * x[n][c][y*sh + i - ph][x*sw + j - pw]
// (zero outside the image), one output channel per task, in a fixed order.
//
// Stride 1: with the image zero-padded to width Wp = W + 2 pw (and height H + 2 ph) and g
// laid out at the same width (zeros in its last kw - 1 columns), tap (c, i, j) is one dot
// product of length OH * Wp between g and the padded image shifted by i * Wp + j: the columns
// that would wrap into the next row meet g's zeros. Eight partial sums in T (vectorisable
// without reassociation), added in float64.
template <typename T>
void weight_gradient_stride1(const Geometry& s, const T* x, const T* g, T* dw, T* db) {
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
void weight_gradient(const Geometry& s, const T* x, const T* g, T* dw, T* db) {
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

class StemConvFunction : public torch::autograd::Function<StemConvFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias, std::vector<int64_t> stride, std::vector<int64_t> padding) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    // Without a bias `bias` is an empty placeholder (autograd takes no undefined inputs).
    const bool has_bias = bias.numel() > 0;
    ctx->saved_data["bias"] = has_bias;
    return at::conv2d(x, weight, has_bias ? c10::optional<torch::Tensor>(bias) : c10::nullopt, stride, padding);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    TORCH_CHECK(!torch::GradMode::is_enabled(), "stem_conv2d does not support double backward (create_graph=true)");
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1];
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const bool has_bias = ctx->saved_data["bias"].toBool();
    const torch::Tensor g = grad[0].contiguous();
    variable_list out(5);
    if (ctx->needs_input_grad(0)) {
      out[0] = std::get<0>(at::convolution_backward(g, x, weight, c10::nullopt, stride, padding, {1, 1}, false, {0, 0}, 1,
                                                    {true, false, false}));
    }
    if (ctx->needs_input_grad(1) || (has_bias && ctx->needs_input_grad(2))) {
      const Geometry s{x.size(0),      x.size(1), x.size(2), x.size(3), weight.size(0), weight.size(2), weight.size(3),
                       g.size(2),      g.size(3), stride[0], stride[1], padding[0],     padding[1]};
      auto dw = torch::empty_like(weight, torch::MemoryFormat::Contiguous);
      torch::Tensor db = has_bias ? torch::empty({s.o}, weight.options()) : torch::Tensor();
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stem_conv_weight_gradient", [&] {
        (s.stride_h == 1 && s.stride_w == 1 ? weight_gradient_stride1<scalar_t> : weight_gradient<scalar_t>)(s, x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(),
                                  has_bias ? db.data_ptr<scalar_t>() : nullptr);
      });
      out[1] = dw;
      if (has_bias) out[2] = db;
    }
    return out;
  }
};

}  // namespace

torch::Tensor stem_conv2d(torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  const auto& o = conv.options;
  const auto& w = conv.weight;
  const auto* pad = alternative<torch::ExpandingArray<2>>(o.padding());
  const bool fast = torch::GradMode::is_enabled() && w.requires_grad() && x.device().is_cpu() && x.dim() == 4 &&
                    (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble) &&
                    w.scalar_type() == x.scalar_type() && x.is_contiguous() && w.is_contiguous() &&
                    x.size(1) <= kMaxChannels && o.groups() == 1 && pad != nullptr &&
                    alternative<torch::enumtype::kZeros>(o.padding_mode()) != nullptr && (*o.dilation())[0] == 1 &&
                    (*o.dilation())[1] == 1;
  if (!fast) return conv.forward(x);
  const torch::Tensor bias = conv.bias.defined() ? conv.bias : torch::empty({0}, w.options());
  return StemConvFunction::apply(x, w, bias, std::vector<int64_t>{(*o.stride())[0], (*o.stride())[1]},
                                 std::vector<int64_t>{(**pad)[0], (**pad)[1]});
}

}  // namespace autorep::layers
