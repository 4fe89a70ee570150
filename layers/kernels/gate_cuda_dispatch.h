#pragma once
/// Tensor glue for the CUDA gate kernels (compiled only with AUTOREP_WITH_CUDA).

#include <torch/types.h>

#include <tuple>

#include "layers/kernels/gate_kernels.h"

namespace autorep::layers::kernels {

/// y for a CUDA x (float32/float16/bfloat16), in x's memory format: an NCHW x in channels_last
/// memory and an N×F x run the channels_last kernels without a copy, anything else is made
/// NCHW-contiguous. `moments`, if not null, gets [2, C] float64 (sum x, sum x^2), reduced in a
/// fixed order (the same bits run to run).
torch::Tensor gate_forward_cuda_tensors(const GateProblem& pr, const torch::Tensor& x,
                                        const torch::Tensor& mask, const torch::Tensor& c0,
                                        const torch::Tensor& c1, const torch::Tensor& c2,
                                        torch::Tensor* moments);

/// (dx in the layout of the forward, g_mask [mask_numel] float32, dc [3, C] float32) for a CUDA x
/// and dL/dy; every sum reduced in a fixed order.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> gate_backward_cuda_tensors(
    const GateProblem& pr, const torch::Tensor& x, const torch::Tensor& g, const torch::Tensor& mask,
    const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2);

}  // namespace autorep::layers::kernels
