#include "trainer/engine/replicas.h"

#include <torch/torch.h>

#include <stdexcept>

namespace autorep::trainer::engine {

// Rank 0's parameters and buffers on every process, so all start from the same model.
void broadcast_model(models::NetImpl& model, dist::Group& group) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) group.broadcast(p, 0);
  for (auto& b : model.buffers()) group.broadcast(b, 0);
}

// Batch norm normalises each process's share of the batch with that share's statistics, so the
// running estimates drift apart; their mean is what one process would have estimated.
void average_batch_norm_stats(models::NetImpl& model, dist::Group& group) {
  std::vector<torch::Tensor> stats;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(m.get())) {
      stats.push_back(bn->running_mean);
      stats.push_back(bn->running_var);
    } else if (auto* bn1 = dynamic_cast<torch::nn::BatchNorm1dImpl*>(m.get())) {
      stats.push_back(bn1->running_mean);
      stats.push_back(bn1->running_var);
    }
  }
  if (stats.empty()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> flat;
  for (const auto& t : stats) flat.push_back(t.reshape({-1}).to(torch::kDouble));
  auto packed = torch::cat(flat);
  group.allreduce_sum(packed);
  packed.div_(static_cast<double>(group.size()));
  int64_t at = 0;
  for (auto& t : stats) {
    t.copy_(packed.slice(0, at, at + t.numel()).view(t.sizes()));
    at += t.numel();
  }
}

// Every process must hold the same masks (they follow from the same all-reduced aux gradients);
// a difference means the processes no longer train one model, and the run stops.
void check_masks_agree(models::NetImpl& model, dist::Group& group, int64_t epoch) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a over every mask's values, in module order
  for (const auto& kv : model.named_buffers()) {
    const auto& name = kv.key();
    if (name.size() < 4 || name.compare(name.size() - 4, 4, "mask") != 0) continue;
    const auto t = kv.value().to(torch::kCPU, torch::kFloat).contiguous();
    const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
    for (int64_t i = 0; i < t.numel() * 4; ++i) h = (h ^ bytes[i]) * 0x100000001B3ull;
  }
  // Two 32-bit halves (exact in float64) and their negations: one MAX gives max and min.
  const double hi = static_cast<double>(h >> 32), lo = static_cast<double>(h & 0xFFFFFFFFull);
  auto v = torch::tensor({hi, lo, -hi, -lo}, torch::kDouble);
  group.allreduce_max(v);
  if (v[0].item<double>() != -v[2].item<double>() || v[1].item<double>() != -v[3].item<double>())
    throw std::runtime_error("after epoch " + std::to_string(epoch + 1) + " the " + std::to_string(group.size()) +
                             " processes hold different masks (mask checksum differs across ranks); "
                             "the run is stopped");
}

}  // namespace autorep::trainer::engine
