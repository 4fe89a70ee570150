#include "layers/snl_gate.h"

#include <torch/torch.h>

namespace autorep::layers {

namespace {
GateOptions without_dapa(GateOptions o) {
  auto d = o.dapa();
  d.enabled(false);
  o.dapa(d);
  return o;
}
}  // namespace

SnlGateImpl::SnlGateImpl(GateOptions options) : GateImpl(without_dapa(std::move(options))) {
  torch::NoGradGuard no_grad;
  aux().fill_(1.0);
  c0().zero_();
  c1().fill_(1.0 / this->options().scale1());
  c2().zero_();
  for (auto* c : {&c0(), &c1(), &c2()}) const_cast<torch::Tensor&>(*c).set_requires_grad(false);
}

torch::Tensor SnlGateImpl::forward(const torch::Tensor& x) {
  if (!relaxed_) return GateImpl::forward(x);
  // alpha broadcasts over the batch (pixel: per element; channel/layer: per channel / site).
  std::vector<int64_t> shape{1};
  const auto& a = aux();
  if (a.dim() == x.dim() - 1) {
    for (auto d : a.sizes()) shape.push_back(d);
  } else {
    shape.push_back(a.numel());
    for (int64_t d = 2; d < x.dim(); ++d) shape.push_back(1);
    if (a.numel() == 1) shape = std::vector<int64_t>(static_cast<size_t>(x.dim()), 1);
  }
  const auto alpha = a.view(shape);
  return alpha * torch::relu(x) + (1 - alpha) * x;
}

ActivationFactory snl_gate_factory(GateOptions prototype) {
  return [prototype](const std::string&, const std::vector<int64_t>& shape) {
    auto o = prototype;
    o.shape(shape);
    return torch::nn::AnyModule(SnlGate(o));
  };
}

}  // namespace autorep::layers
