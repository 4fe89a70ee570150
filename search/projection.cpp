#include "search/projection.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "layers/gate.h"

namespace autorep::search {

int64_t keep_top_scores(const GateList& gates, const std::vector<torch::Tensor>& scores, int64_t budget) {
  TORCH_CHECK(scores.size() == gates.size(), "keep_top_scores: one score tensor per gate expected");
  TORCH_CHECK(budget >= 0, "keep_top_scores: negative budget ", budget);
  struct Entry {
    double score;
    int32_t gate;
    int64_t index;
  };
  std::vector<Entry> entries;
  std::vector<torch::Tensor> flat(gates.size());
  for (size_t g = 0; g < gates.size(); ++g) {
    TORCH_CHECK(scores[g].numel() == gates[g]->mask().numel(), "keep_top_scores: score tensor ", g,
                " has ", scores[g].numel(), " entries, the mask ", gates[g]->mask().numel());
    flat[g] = scores[g].detach().to(torch::kCPU, torch::kDouble).contiguous().view(-1);
    const double* s = flat[g].data_ptr<double>();
    for (int64_t i = 0; i < flat[g].numel(); ++i) entries.push_back({s[i], static_cast<int32_t>(g), i});
  }
  // Entries are already in (gate, index) order: a stable sort by score keeps that order for ties.
  // A NaN score ranks below every number (NaN compares false both ways, which would break the
  // strict weak ordering the sort needs): such entries are kept last, in (gate, index) order.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    const bool a_nan = std::isnan(a.score), b_nan = std::isnan(b.score);
    if (a_nan || b_nan) return !a_nan && b_nan;
    return a.score > b.score;
  });
  std::vector<torch::Tensor> masks(gates.size());
  for (size_t g = 0; g < gates.size(); ++g) masks[g] = torch::zeros({gates[g]->mask().numel()}, torch::kFloat);
  std::vector<int64_t> per_entry(gates.size());
  for (size_t g = 0; g < gates.size(); ++g) per_entry[g] = elements_per_entry(*gates[g]);
  int64_t kept = 0;
  for (const auto& e : entries) {
    const int64_t w = per_entry[e.gate];
    if (kept + w > budget) continue;
    masks[e.gate].data_ptr<float>()[e.index] = 1.0f;
    kept += w;
    if (kept == budget) break;
  }
  torch::NoGradGuard no_grad;
  for (size_t g = 0; g < gates.size(); ++g) {
    const auto& m = gates[g]->mask();
    m.copy_(masks[g].view(m.sizes()));
  }
  return kept;
}

int64_t project_to_budget(const GateList& gates, int64_t budget) {
  std::vector<torch::Tensor> scores;
  for (const auto& g : gates) scores.push_back(g->aux());
  return keep_top_scores(gates, scores, budget);
}

int64_t random_masks(const GateList& gates, int64_t budget, uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x5DEECE66DULL);
  std::vector<torch::Tensor> scores;
  for (const auto& g : gates) {
    auto s = torch::empty({g->mask().numel()}, torch::kDouble);
    double* p = s.data_ptr<double>();
    // 53 random bits per entry: uniform in [0,1), identical on every platform for a seed.
    for (int64_t i = 0; i < s.numel(); ++i) p[i] = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    scores.push_back(s);
  }
  return keep_top_scores(gates, scores, budget);
}

int64_t uniform_masks(const GateList& gates, const std::vector<torch::Tensor>& scores, int64_t budget) {
  TORCH_CHECK(scores.size() == gates.size(), "uniform_masks: one score tensor per gate expected");
  const int64_t total = layers::total_relus(gates);
  const double fraction = total > 0 ? static_cast<double>(budget) / static_cast<double>(total) : 0.0;
  // Each site's quota is fraction * entries, rounded down; the ReLUs left over go one entry at a
  // time to the sites with the largest rounded-off remainders (ties: site order), so every site
  // keeps the same fraction to within one entry and pixel granularity meets the budget exactly.
  std::vector<int64_t> keep(gates.size());
  std::vector<double> remainder(gates.size());
  int64_t used = 0;
  for (size_t g = 0; g < gates.size(); ++g) {
    const double quota = fraction * static_cast<double>(gates[g]->mask().numel());
    keep[g] = std::min<int64_t>(gates[g]->mask().numel(), static_cast<int64_t>(std::floor(quota + 1e-9)));
    remainder[g] = quota - static_cast<double>(keep[g]);
    used += keep[g] * elements_per_entry(*gates[g]);
  }
  std::vector<size_t> order(gates.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return remainder[a] > remainder[b]; });
  for (size_t g : order) {
    const int64_t w = elements_per_entry(*gates[g]);
    if (keep[g] < gates[g]->mask().numel() && used + w <= budget) {
      ++keep[g];
      used += w;
    }
  }
  int64_t kept = 0;
  for (size_t g = 0; g < gates.size(); ++g)
    kept += keep_top_scores({gates[g]}, {scores[g]}, keep[g] * elements_per_entry(*gates[g]));
  TORCH_INTERNAL_ASSERT(kept <= budget);
  return kept;
}

}  // namespace autorep::search
