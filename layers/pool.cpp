#include "layers/pool.h"

#include <torch/torch.h>

#include "layers/kernels/pool_cpu.h"

namespace autorep::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MaxPool2Function : public torch::autograd::Function<MaxPool2Function> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    torch::Tensor index;
    torch::Tensor y = kernels::max_pool2_forward(x, &index);
    ctx->save_for_backward({index});
    ctx->saved_data["height"] = x.size(2);
    ctx->saved_data["width"] = x.size(3);
    ctx->saved_data["channels_last"] = kernels::pool_channels_last(x);
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "max_pool2 does not support double backward (create_graph=true)");
    const auto saved = ctx->get_saved_variables();
    return {kernels::max_pool2_backward(grad[0], saved[0], ctx->saved_data["height"].toInt(),
                                        ctx->saved_data["width"].toInt(),
                                        ctx->saved_data["channels_last"].toBool())};
  }
};

}  // namespace

torch::Tensor max_pool2(const torch::Tensor& x) {
  const bool fused = x.device().is_cpu() && x.dim() == 4 && x.size(2) >= 2 && x.size(3) >= 2 &&
                     (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble);
  if (!fused) return torch::max_pool2d(x, 2);
  if (x.requires_grad() && torch::GradMode::is_enabled()) return MaxPool2Function::apply(x);
  return kernels::max_pool2_forward(x, nullptr);
}

}  // namespace autorep::layers
