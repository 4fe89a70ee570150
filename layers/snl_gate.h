#pragma once
/// The activation of the `snl` baseline (Selective Network Linearization, Cho et al. 2022) in the gate framework:
/// while relaxed, a site computes y = alpha*relu(x) + (1-alpha)*x with a learnable per-entry
/// slope alpha (the gate's aux, initialised to 1) under an L1 penalty; afterwards the masks keep
/// the entries with the largest alpha and the replaced ReLUs become the identity, p(x) = x
/// (c0 = 0, c1 = 1, c2 = 0, not trained), so SNL models export like any other.

#include "layers/gate.h"

namespace autorep::layers {

class SnlGateImpl : public GateImpl {
 public:
  /// `options` as for a Gate; DaPa is turned off and the polynomial fixed to the identity.
  explicit SnlGateImpl(GateOptions options);
  /// Relaxed: alpha*relu(x) + (1-alpha)*x. Otherwise the gate's masked forward.
  torch::Tensor forward(const torch::Tensor& x);
  void set_relaxed(bool relaxed) { relaxed_ = relaxed; }
  bool relaxed() const { return relaxed_; }

 private:
  bool relaxed_ = false;
};
TORCH_MODULE(SnlGate);

/// Factory placing an SnlGate (built from `prototype`) at every site.
ActivationFactory snl_gate_factory(GateOptions prototype);

}  // namespace autorep::layers
