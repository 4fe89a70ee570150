#include "search/snl.h"

#include <torch/torch.h>

namespace autorep::search {

namespace {
layers::GateOptions without_dapa(layers::GateOptions o) {
  auto d = o.dapa();
  d.enabled(false);
  o.dapa(d);
  return o;
}
}  // namespace

SnlGateImpl::SnlGateImpl(layers::GateOptions options) : layers::GateImpl(without_dapa(std::move(options))) {
  torch::NoGradGuard no_grad;
  aux().fill_(1.0);
  c0().zero_();
  c1().fill_(1.0 / this->options().scale1());
  c2().zero_();
  for (auto* c : {&c0(), &c1(), &c2()}) const_cast<torch::Tensor&>(*c).set_requires_grad(false);
}

torch::Tensor SnlGateImpl::forward(const torch::Tensor& x) {
  if (!relaxed_) return layers::GateImpl::forward(x);
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

layers::ActivationFactory snl_gate_factory(layers::GateOptions prototype) {
  return [prototype](const std::string&, const std::vector<int64_t>& shape) {
    auto o = prototype;
    o.shape(shape);
    return torch::nn::AnyModule(SnlGate(o));
  };
}

torch::Tensor snl_l1(const GateList& gates) {
  torch::Tensor sum;
  int64_t total = 0;
  for (const auto& g : gates) {
    auto t = g->aux().abs().sum() * static_cast<double>(elements_per_entry(*g));
    sum = sum.defined() ? sum + t : t;
    total += g->total_relus();
  }
  return sum / static_cast<double>(std::max<int64_t>(1, total));
}

int64_t snl_alive(const GateList& gates, double threshold) {
  int64_t n = 0;
  for (const auto& g : gates) n += g->aux().gt(threshold).sum().item<int64_t>() * elements_per_entry(*g);
  return n;
}

void snl_clamp(const GateList& gates) {
  torch::NoGradGuard no_grad;
  for (const auto& g : gates) g->aux().clamp_(0.0, 1.0);
}

void snl_set_relaxed(const GateList& gates, bool relaxed) {
  for (const auto& g : gates)
    if (auto* s = dynamic_cast<SnlGateImpl*>(g.get())) s->set_relaxed(relaxed);
}

}  // namespace autorep::search
