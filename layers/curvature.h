#pragma once
/// A bound on the quadratic term of the gates' polynomials while they train.

#include <torch/nn/module.h>

#include <memory>
#include <vector>

namespace autorep::layers {

class GateImpl;

/// Caps every gate's quadratic coefficient, per channel, at the largest curvature a DaPa fit of
/// the channel's running statistics can have: |s2·c2| <= φ(0) / (2·k·σ), with σ the running std
/// and k = dapa.sigma_scale (the fit's own curvature φ(z)/(2kσ) never exceeds it). Gradient
/// steps cannot then bend a polynomial further than its widest fit, so it keeps following relu
/// out to about 2.5·k·σ. Applies to degree-2 gates in the `std` fit. No autograd, no host sync.
void cap_curvature(torch::nn::Module& model);
/// The same for a list of gates (what a training loop holds: no module walk per step).
void cap_curvature(const std::vector<std::shared_ptr<GateImpl>>& gates);

}  // namespace autorep::layers
