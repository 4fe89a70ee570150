#pragma once
/// Tensor glue for the CUDA gate kernels (compiled only with AUTOREP_WITH_CUDA).

#include <torch/types.h>

#include <tuple>

#include "layers/kernels/gate_kernels.h"

namespace autorep::layers::kernels {

/// y for a CUDA x (float32/float16/bfloat16); `moments`, if not null, gets [2, C] float32.
torch::Tensor gate_forward_cuda_tensors(const GateProblem& pr, const torch::Tensor& x,
                                        const torch::Tensor& mask, const torch::Tensor& c0,
                                        const torch::Tensor& c1, const torch::Tensor& c2,
                                        torch::Tensor* moments);

/// (dx like x, g_mask [mask_numel] float32, dc [3, C] float32) for a CUDA x and dL/dy.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> gate_backward_cuda_tensors(
    const GateProblem& pr, const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& mask,
    const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2);

}  // namespace autorep::layers::kernels
