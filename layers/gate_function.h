#pragma once
/// The gate as a function: y = mask*relu(x) + (1-mask)*p(x), p(x) = c0 + s1*c1*x + s2*c2*x^2
/// (DESIGN §3), with the straight-through gradient to the auxiliary parameter.

#include <torch/types.h>

#include <cstdint>

namespace autorep::layers {

/// Fused gate: one custom autograd function whose forward and backward each make one pass
/// over x (CPU kernel or, for CUDA tensors, the CUDA kernels).
///
/// Shapes: x is N×C×H×W (any N×C×..., trailing dimensions flattened) or N×F (then C = F).
/// `mask` and `aux` have the same number of elements: C*H*W (pixel), C (channel) or 1 (layer);
/// the mask broadcasts over the batch (and over H, W / everything for channel / layer).
/// c0, c1, c2 have C elements; degree 1 drops the x^2 term (c2 then gets no gradient).
///
/// Gradients, for g = dL/dy:
///   dL/dx    = g * (mask*[x>0] + (1-mask)*(s1*c1 + 2*s2*c2*x))
///   dL/dc_k  = sum over batch and positions of g*(1-mask)*{1, s1*x, s2*x^2}
///   dL/daux  = softplus(aux) * g_mask,  g_mask = sum_batch (relu(x) - p(x)) * g, reduced to
///              the mask's shape (straight-through estimator; the mask itself gets none).
/// Backward keeps x and the small tensors only. Double backward is refused.
///
/// When `moments` is not null it receives, from the same forward pass, a [2, C] float64
/// tensor (CPU; float32 on CUDA): per-channel sum(x) and sum(x^2) over batch and positions.
torch::Tensor gate_fused(const torch::Tensor& x, const torch::Tensor& aux, const torch::Tensor& mask,
                         const torch::Tensor& c0, const torch::Tensor& c1, const torch::Tensor& c2,
                         double s1, double s2, int64_t degree, torch::Tensor* moments = nullptr);

/// A mask of any granularity (the per-sample shape, [C] or [1]) viewed so that it broadcasts
/// against `x` (N x C x ...).
torch::Tensor broadcast_mask(const torch::Tensor& mask, const torch::Tensor& x);

/// Reference gate built from ATen ops, same semantics and gradients as gate_fused. The mask
/// enters as `mask + softplus(aux).detach() * (aux - aux.detach())`: equal to mask in value,
/// with derivative softplus(aux) towards aux.
torch::Tensor gate_composite(const torch::Tensor& x, const torch::Tensor& aux,
                             const torch::Tensor& mask, const torch::Tensor& c0,
                             const torch::Tensor& c1, const torch::Tensor& c2, double s1, double s2,
                             int64_t degree);

}  // namespace autorep::layers
