#include "layers/gate_function.h"

#include <torch/torch.h>

#include <algorithm>
#include <tuple>

#include "layers/kernels/gate_kernels.h"
#include "layers/kernels/gate_layout.h"
#ifdef AUTOREP_WITH_CUDA
#include "layers/kernels/gate_cuda_dispatch.h"
#endif

namespace autorep::layers {
namespace {

using kernels::GateLayout;
using kernels::GateProblem;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

GateProblem make_problem(const torch::Tensor& x, const torch::Tensor& aux, const torch::Tensor& mask,
                         const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2,
                         double s1, double s2, int64_t degree) {
  TORCH_CHECK(x.dim() >= 2, "gate: input must be N×C×H×W or N×F, got shape ", x.sizes());
  TORCH_CHECK(degree == 1 || degree == 2, "gate: degree must be 1 or 2, got ", degree);
  GateProblem pr;
  pr.n = x.size(0);
  pr.c = x.size(1);
  pr.p = 1;
  for (int64_t d = 2; d < x.dim(); ++d) pr.p *= x.size(d);
  pr.mask_numel = mask.numel();
  pr.s1 = s1;
  pr.s2 = s2;
  pr.degree = static_cast<int>(degree);
  TORCH_CHECK(pr.mask_numel == pr.c * pr.p || pr.mask_numel == pr.c || pr.mask_numel == 1,
              "gate: mask has ", pr.mask_numel, " elements; for input ", x.sizes(),
              " it must have C*H*W = ", pr.c * pr.p, " (pixel), C = ", pr.c, " (channel) or 1 (layer)");
  TORCH_CHECK(aux.numel() == pr.mask_numel, "gate: aux has ", aux.numel(),
              " elements but the mask has ", pr.mask_numel);
  for (const auto* c : {&c0, &c1, &c2}) {
    TORCH_CHECK(c->numel() == pr.c, "gate: coefficients must have C = ", pr.c,
                " elements, got shape ", c->sizes());
  }
  // The kernels read every tensor at x's device (their dtypes are converted): a tensor left on
  // another device would be a host pointer on the GPU, or the reverse.
  const std::pair<const char*, const torch::Tensor*> named[] = {
      {"aux", &aux}, {"mask", &mask}, {"c0", &c0}, {"c1", &c1}, {"c2", &c2}};
  for (const auto& [name, t] : named) {
    TORCH_CHECK(t->device() == x.device(), "gate: ", name, " is on ", t->device(), " but the input is on ",
                x.device(), " (move the gate with the model: model->to(device))");
    TORCH_CHECK(t->is_floating_point(), "gate: ", name, " must be a floating-point tensor, got ", t->scalar_type());
  }
  return pr;
}

torch::Tensor forward_cpu(const GateProblem& pr, const torch::Tensor& x, const torch::Tensor& mask,
                          const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2,
                          torch::Tensor* moments) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble,
              "gate: CPU input must be float32 or float64, got ", x.scalar_type());
  // channels_last memory (and N×F) runs the row kernels without a copy; y keeps x's format.
  const GateLayout layout = kernels::gate_layout_of(x);
  const auto xc = kernels::in_gate_layout(x, layout);
  const auto opt = xc.options();
  const auto m = mask.to(opt).contiguous();
  const auto a0 = c0.to(opt).contiguous(), a1 = c1.to(opt).contiguous(), a2 = c2.to(opt).contiguous();
  auto y = at::empty_like(xc);
  double* mom = nullptr;
  if (moments) {
    *moments = torch::empty({2, pr.c}, torch::kDouble);
    mom = moments->data_ptr<double>();
  }
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "gate_forward_cpu", [&] {
    kernels::gate_forward_cpu(pr, xc.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                              a0.data_ptr<scalar_t>(), a1.data_ptr<scalar_t>(),
                              a2.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), mom, layout);
  });
  return y;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> backward_cpu(
    const GateProblem& pr, const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& mask,
    const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2) {
  const GateLayout layout = kernels::gate_layout_of(x);
  const auto xc = kernels::in_gate_layout(x, layout);
  const auto opt = xc.options();
  const auto gc = kernels::in_gate_layout(g.to(opt), layout);
  const auto m = mask.to(opt).contiguous();
  const auto a0 = c0.to(opt).contiguous(), a1 = c1.to(opt).contiguous(), a2 = c2.to(opt).contiguous();
  // Every element of dx is written by the kernel: no zero fill. dx keeps x's format.
  auto dx = at::empty_like(xc);
  auto g_mask = torch::empty({pr.mask_numel}, opt);
  auto dc = torch::empty({3, pr.c}, opt);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "gate_backward_cpu", [&] {
    kernels::gate_backward_cpu(pr, xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                               m.data_ptr<scalar_t>(), a0.data_ptr<scalar_t>(),
                               a1.data_ptr<scalar_t>(), a2.data_ptr<scalar_t>(),
                               dx.data_ptr<scalar_t>(), g_mask.data_ptr<scalar_t>(),
                               dc.data_ptr<scalar_t>(), layout);
  });
  return {dx, g_mask, dc};
}

// dL/daux = softplus(aux) * g_mask, in place in g_mask where the types agree. On the CPU one
// vectorised pass (layers/kernels): as separate ATen ops (softplus, then a product) it cost
// about as much as the gate's whole backward kernel beyond ReLU's.
torch::Tensor straight_through(const torch::Tensor& aux, torch::Tensor g_mask) {
  g_mask = g_mask.view(aux.sizes());
  if (aux.is_cpu() && g_mask.is_cpu()) {
    const auto a = aux.to(g_mask.scalar_type()).contiguous();
    g_mask = g_mask.contiguous();
    AT_DISPATCH_FLOATING_TYPES(g_mask.scalar_type(), "gate_straight_through_cpu", [&] {
      kernels::gate_straight_through_cpu(a.data_ptr<scalar_t>(), g_mask.data_ptr<scalar_t>(), g_mask.numel());
    });
    return g_mask.to(aux.scalar_type());
  }
  if (g_mask.scalar_type() != aux.scalar_type()) return torch::softplus(aux) * g_mask.to(aux.scalar_type());
  return g_mask.mul_(torch::softplus(aux));
}

class GateFunction : public torch::autograd::Function<GateFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& aux,
                               const torch::Tensor& mask, const torch::Tensor& c0,
                               const torch::Tensor& c1, const torch::Tensor& c2, double s1,
                               double s2, int64_t degree, torch::Tensor* moments) {
    const GateProblem pr = make_problem(x, aux, mask, c0, c1, c2, s1, s2, degree);
    ctx->save_for_backward({x, aux, mask, c0, c1, c2});
    ctx->saved_data["s1"] = s1;
    ctx->saved_data["s2"] = s2;
    ctx->saved_data["degree"] = degree;
    if (x.is_cuda()) {
#ifdef AUTOREP_WITH_CUDA
      return kernels::gate_forward_cuda_tensors(pr, x, mask, c0, c1, c2, moments);
#else
      TORCH_CHECK(false, "gate: autorep was built without CUDA kernels; input is on ", x.device());
#endif
    }
    TORCH_CHECK(x.is_cpu(), "gate: unsupported device ", x.device());
    return forward_cpu(pr, x, mask, c0, c1, c2, moments);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "gate_fused does not support double backward (create_graph=true); "
                "use gate_composite for higher-order gradients");
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &aux = saved[1], &mask = saved[2];
    const auto &c0 = saved[3], &c1 = saved[4], &c2 = saved[5];
    const double s1 = ctx->saved_data["s1"].toDouble();
    const double s2 = ctx->saved_data["s2"].toDouble();
    const int64_t degree = ctx->saved_data["degree"].toInt();
    variable_list out(10);
    const auto& g = grad_outputs[0];
    if (!g.defined()) return out;
    const GateProblem pr = make_problem(x, aux, mask, c0, c1, c2, s1, s2, degree);
    torch::Tensor dx, g_mask, dc;
    if (x.is_cuda()) {
#ifdef AUTOREP_WITH_CUDA
      std::tie(dx, g_mask, dc) = kernels::gate_backward_cuda_tensors(pr, x, g, mask, c0, c1, c2);
#endif
    } else {
      std::tie(dx, g_mask, dc) = backward_cpu(pr, x, g, mask, c0, c1, c2);
    }
    if (ctx->needs_input_grad(0)) out[0] = dx.view(x.sizes());
    if (ctx->needs_input_grad(1)) out[1] = straight_through(aux, g_mask);
    const torch::Tensor* cs[3] = {&c0, &c1, &c2};
    for (int k = 0; k < 3; ++k) {
      if (k == 2 && degree < 2) break;
      if (ctx->needs_input_grad(3 + k)) out[3 + k] = dc[k].view(cs[k]->sizes()).to(cs[k]->scalar_type());
    }
    return out;
  }
};

}  // namespace

torch::Tensor gate_fused(const torch::Tensor& x, const torch::Tensor& aux, const torch::Tensor& mask,
                         const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2,
                         double s1, double s2, int64_t degree, torch::Tensor* moments) {
#ifndef AUTOREP_WITH_CUDA
  // A CUDA LibTorch built without nvcc: the same function from ATen ops on the GPU.
  if (x.is_cuda()) {
    if (moments) {
      torch::NoGradGuard no_grad;
      std::vector<int64_t> dims{0};
      for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
      const auto xd = x.detach().to(torch::kDouble);
      *moments = torch::stack({xd.sum(dims), (xd * xd).sum(dims)});
    }
    return gate_composite(x, aux, mask.detach(), c0, c1, c2, s1, s2, degree);
  }
#endif
  return GateFunction::apply(x, aux, mask.detach(), c0, c1, c2, s1, s2, degree, moments);
}

torch::Tensor broadcast_mask(const torch::Tensor& mask, const torch::Tensor& x) {
  const int64_t c = x.size(1);
  int64_t per_sample = 1;
  for (int64_t d = 1; d < x.dim(); ++d) per_sample *= x.size(d);
  if (mask.numel() == per_sample) return mask.reshape(x.sizes().slice(1)).unsqueeze(0);
  if (mask.numel() == c) {
    std::vector<int64_t> channel_view(x.dim(), 1);
    channel_view[1] = c;
    return mask.reshape(channel_view);
  }
  return mask.reshape(std::vector<int64_t>(x.dim(), 1));
}

torch::Tensor gate_composite(const torch::Tensor& x, const torch::Tensor& aux,
                             const torch::Tensor& mask, const torch::Tensor& c0,
                             const torch::Tensor& c1, const torch::Tensor& c2, double s1, double s2,
                             int64_t degree) {
  const GateProblem pr = make_problem(x, aux, mask, c0, c1, c2, s1, s2, degree);
  // Value: exactly mask. Derivative towards aux: softplus(aux) (straight-through).
  auto m = mask.detach().to(x.scalar_type()).reshape(aux.sizes());
  if (aux.requires_grad()) m = m + torch::softplus(aux).detach() * (aux - aux.detach());

  std::vector<int64_t> channel_view(x.dim(), 1);
  channel_view[1] = pr.c;
  const torch::Tensor mb = broadcast_mask(m, x);
  auto poly_of = [&](const torch::Tensor& v) {
    auto p = c0.reshape(channel_view) + s1 * c1.reshape(channel_view) * v;
    if (degree >= 2) p = p + s2 * c2.reshape(channel_view) * v * v;
    return p;
  };
  const auto relu = torch::relu(x);
  // Select on the (binary) mask, so a kept position stays relu where the polynomial overflows:
  // the polynomial branch sees 0 at kept positions, so its backward multiplies no zero by inf
  // either. The straight-through term is 0 in value (its difference clamped to the finite range)
  // and carries d/daux = softplus(aux) * (relu - poly).
  const auto kept = mb.detach() > 0.5;
  auto y = torch::where(kept, relu, poly_of(torch::where(kept, torch::zeros_like(x), x)));
  if (aux.requires_grad()) {
    torch::Tensor diff;
    {
      torch::NoGradGuard no_grad;
      diff = torch::nan_to_num(relu - poly_of(x), 0.0);
    }
    y = y + (mb - mb.detach()) * diff;
  }
  return y;
}

}  // namespace autorep::layers
