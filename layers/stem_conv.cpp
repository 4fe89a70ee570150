#include "layers/stem_conv.h"

#include <torch/torch.h>

#include <vector>

#include "layers/kernels/stem_conv_cpu.h"
#include "layers/util/variant.h"

namespace autorep::layers {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kMaxChannels = 4;

using util::alternative;

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
      const kernels::StemGeometry s{x.size(0), x.size(1),      x.size(2),      x.size(3), weight.size(0),
                                    weight.size(2), weight.size(3), g.size(2), g.size(3), stride[0],
                                    stride[1], padding[0], padding[1]};
      auto dw = torch::empty_like(weight, torch::MemoryFormat::Contiguous);
      torch::Tensor db = has_bias ? torch::empty({s.o}, weight.options()) : torch::Tensor();
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stem_conv_weight_gradient", [&] {
        kernels::stem_weight_gradient<scalar_t>(s, x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(),
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
