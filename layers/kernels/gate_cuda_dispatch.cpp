#include "layers/kernels/gate_cuda_dispatch.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/torch.h>

#include "layers/kernels/gate_layout.h"

namespace autorep::layers::kernels {
namespace {

GateDtype dtype_of(const torch::Tensor& x) {
  switch (x.scalar_type()) {
    case torch::kFloat: return GateDtype::f32;
    case torch::kHalf: return GateDtype::f16;
    case torch::kBFloat16: return GateDtype::bf16;
    default:
      TORCH_CHECK(false, "gate: CUDA input must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
}

// Mask and coefficients travel as float32 whatever the element type.
torch::Tensor small_f32(const torch::Tensor& t) { return t.to(torch::kFloat).contiguous(); }

void check(int err, const char* what) {
  TORCH_CHECK(err == 0, "gate: CUDA ", what, " kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace

torch::Tensor gate_forward_cuda_tensors(const GateProblem& pr, const torch::Tensor& x,
                                        const torch::Tensor& mask, const torch::Tensor& c0,
                                        const torch::Tensor& c1, const torch::Tensor& c2,
                                        torch::Tensor* moments) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GateDtype dt = dtype_of(x);
  const GateLayout layout = gate_layout_of(x);
  const auto xc = in_gate_layout(x, layout);
  const auto m = small_f32(mask), a0 = small_f32(c0), a1 = small_f32(c1), a2 = small_f32(c2);
  auto y = at::empty_like(xc);  // keeps xc's memory format
  torch::Tensor partials;
  double* part = nullptr;
  if (moments) {
    // Zeros: an empty batch launches nothing and must sum to 0.
    partials = torch::zeros({gate_cuda_partials(pr, layout).rows, 2, pr.c}, xc.options().dtype(torch::kDouble));
    part = partials.data_ptr<double>();
  }
  check(gate_forward_cuda(pr, dt, layout, xc.data_ptr(), m.data_ptr<float>(), a0.data_ptr<float>(),
                          a1.data_ptr<float>(), a2.data_ptr<float>(), y.data_ptr(), part,
                          at::cuda::getCurrentCUDAStream().stream()),
        "forward");
  if (moments) *moments = partials.sum(0);
  return y;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> gate_backward_cuda_tensors(
    const GateProblem& pr, const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& mask,
    const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GateDtype dt = dtype_of(x);
  const GateLayout layout = gate_layout_of(x);
  const auto xc = in_gate_layout(x, layout);
  const auto gc = in_gate_layout(g.to(xc.scalar_type()), layout);
  const auto m = small_f32(mask), a0 = small_f32(c0), a1 = small_f32(c1), a2 = small_f32(c2);
  auto dx = at::empty_like(xc);
  const auto f32 = xc.options().dtype(torch::kFloat);
  const GatePartials rows = gate_cuda_partials(pr, layout);
  const bool pixel = pr.mask_numel == pr.c * pr.p;
  // Zeros: an empty batch launches nothing and must sum to 0.
  auto gm_part = pixel ? torch::zeros({rows.mask_rows, pr.c * pr.p}, f32) : torch::zeros({rows.rows, pr.c}, f32);
  auto dc_part = torch::zeros({rows.rows, 3, pr.c}, f32);
  check(gate_backward_cuda(pr, dt, layout, xc.data_ptr(), gc.data_ptr(), m.data_ptr<float>(),
                           a0.data_ptr<float>(), a1.data_ptr<float>(), a2.data_ptr<float>(),
                           dx.data_ptr(), gm_part.data_ptr<float>(), dc_part.data_ptr<float>(),
                           at::cuda::getCurrentCUDAStream().stream()),
        "backward");
  torch::Tensor g_mask = gm_part.sum(0);
  // A channel mask equals a pixel mask when p == 1; a layer mask is the sum over its channels.
  if (pr.mask_numel == 1 && !pixel) g_mask = g_mask.sum().reshape({1});
  return {dx, g_mask, dc_part.sum(0)};
}

}  // namespace autorep::layers::kernels
