#include "search/snl.h"

#include <torch/torch.h>

#include "layers/gate.h"
#include "layers/snl_gate.h"

namespace autorep::search {

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
    if (auto* s = dynamic_cast<layers::SnlGateImpl*>(g.get())) s->set_relaxed(relaxed);
}

}  // namespace autorep::search
