#include "layers/pool.h"

#include <torch/torch.h>

#include "layers/kernels/pool_cpu.h"

namespace autorep::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Whether the kernels take `x` in channels_last memory (it is channels_last-contiguous and not
// NCHW-contiguous; the two are the same memory when C = 1).
bool pool_channels_last(const torch::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(torch::MemoryFormat::ChannelsLast);
}

// y = the 2×2 maxima of x (float32/float64 on the CPU, in x's memory format); `index`, when
// given, receives which input each output took.
torch::Tensor pool_forward(const torch::Tensor& input, torch::Tensor* index) {
  TORCH_CHECK(input.dim() == 4 && input.size(2) >= 2 && input.size(3) >= 2,
              "max_pool2: input must be N×C×H×W with H, W >= 2, got shape ", input.sizes());
  TORCH_CHECK(input.device().is_cpu(), "max_pool2: the fused kernels run on the CPU, got ", input.device());
  const bool cl = pool_channels_last(input);
  const auto format = cl ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  const torch::Tensor x = input.contiguous(format);
  const int64_t n = x.size(0), ch = x.size(1), h = x.size(2), w = x.size(3);
  torch::Tensor y = torch::empty({n, ch, h / 2, w / 2}, x.options().memory_format(format));
  uint8_t* idx = nullptr;
  if (index) {
    *index = torch::empty(y.sizes(), x.options().dtype(torch::kByte).memory_format(format));
    idx = index->data_ptr<uint8_t>();
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool2_forward", [&] {
    kernels::max_pool2_forward(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), idx, n, ch, h, w, cl);
  });
  return y;
}

torch::Tensor pool_backward(const torch::Tensor& grad_y, const torch::Tensor& index, int64_t height, int64_t width,
                            bool channels_last) {
  const auto format = channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  TORCH_CHECK(grad_y.sizes() == index.sizes(), "max_pool2: gradient of shape ", grad_y.sizes(),
              " for outputs of shape ", index.sizes());
  const torch::Tensor g = grad_y.contiguous(format);
  const int64_t n = g.size(0), ch = g.size(1);
  torch::Tensor gx = torch::empty({n, ch, height, width}, g.options().memory_format(format));
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "max_pool2_backward", [&] {
    kernels::max_pool2_backward(g.data_ptr<scalar_t>(), index.data_ptr<uint8_t>(), gx.data_ptr<scalar_t>(), n, ch,
                                height, width, channels_last);
  });
  return gx;
}

class MaxPool2Function : public torch::autograd::Function<MaxPool2Function> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    torch::Tensor index;
    torch::Tensor y = pool_forward(x, &index);
    ctx->save_for_backward({index});
    ctx->saved_data["height"] = x.size(2);
    ctx->saved_data["width"] = x.size(3);
    ctx->saved_data["channels_last"] = pool_channels_last(x);
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "max_pool2 does not support double backward (create_graph=true)");
    const auto saved = ctx->get_saved_variables();
    return {pool_backward(grad[0], saved[0], ctx->saved_data["height"].toInt(), ctx->saved_data["width"].toInt(),
                          ctx->saved_data["channels_last"].toBool())};
  }
};

}  // namespace

torch::Tensor max_pool2(const torch::Tensor& x) {
  const bool fused = x.device().is_cpu() && x.dim() == 4 && x.size(2) >= 2 && x.size(3) >= 2 &&
                     (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble);
  if (!fused) return torch::max_pool2d(x, 2);
  if (x.requires_grad() && torch::GradMode::is_enabled()) return MaxPool2Function::apply(x);
  return pool_forward(x, nullptr);
}

}  // namespace autorep::layers
