#include "layers/kernels/gate_cuda_dispatch.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/torch.h>

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
  const auto xc = x.contiguous();
  const auto m = small_f32(mask), a0 = small_f32(c0), a1 = small_f32(c1), a2 = small_f32(c2);
  auto y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  float* mom = nullptr;
  if (moments) {
    *moments = torch::zeros({2, pr.c}, xc.options().dtype(torch::kFloat));
    mom = moments->data_ptr<float>();
  }
  check(gate_forward_cuda(pr, dt, xc.data_ptr(), m.data_ptr<float>(), a0.data_ptr<float>(),
                          a1.data_ptr<float>(), a2.data_ptr<float>(), y.data_ptr(), mom,
                          at::cuda::getCurrentCUDAStream().stream()),
        "forward");
  return y;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> gate_backward_cuda_tensors(
    const GateProblem& pr, const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& mask,
    const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2) {
  const c10::cuda::CUDAGuard guard(x.device());
  const GateDtype dt = dtype_of(x);
  const auto xc = x.contiguous();
  const auto gc = g.to(xc.scalar_type()).contiguous();
  const auto m = small_f32(mask), a0 = small_f32(c0), a1 = small_f32(c1), a2 = small_f32(c2);
  auto dx = at::empty_like(xc, at::MemoryFormat::Contiguous);
  const auto f32 = xc.options().dtype(torch::kFloat);
  auto g_mask = torch::zeros({pr.mask_numel}, f32);
  auto dc = torch::zeros({3, pr.c}, f32);
  check(gate_backward_cuda(pr, dt, xc.data_ptr(), gc.data_ptr(), m.data_ptr<float>(),
                           a0.data_ptr<float>(), a1.data_ptr<float>(), a2.data_ptr<float>(),
                           dx.data_ptr(), g_mask.data_ptr<float>(), dc.data_ptr<float>(),
                           at::cuda::getCurrentCUDAStream().stream()),
        "backward");
  return {dx, g_mask, dc};
}

}  // namespace autorep::layers::kernels
