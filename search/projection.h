#pragma once
/// Mask selection at an exact ReLU budget: the projection that ends the search (largest aux
/// first), and the masks of the `random` and `uniform` baselines.

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "search/objective.h"

namespace autorep::search {

/// Sets every gate's mask to keep the entries with the largest `scores` (one tensor per gate,
/// shaped like its mask) whose ReLU count fits in `budget`: entries are taken in descending
/// score order, ties broken by gate order then flat index, and an entry whose ReLUs no longer
/// fit is skipped (so channel/layer granularity keep the largest set that fits). Returns the
/// kept ReLU count, always <= budget; with pixel granularity it is exactly min(budget, total).
int64_t keep_top_scores(const GateList& gates, const std::vector<torch::Tensor>& scores, int64_t budget);

/// The projection of DESIGN.md §4: keep_top_scores with scores = aux. NaN scores rank below
/// every number (deterministically, in site then index order).
int64_t project_to_budget(const GateList& gates, int64_t budget);

/// `random`: a uniformly random set of entries at the budget (seeded).
int64_t random_masks(const GateList& gates, int64_t budget, uint64_t seed);

/// `uniform`: the same kept fraction budget/total at every site (to within one entry: the
/// rounded-off remainders are handed out largest first); within a site the entries with the
/// largest `scores` (e.g. mean |activation|) are kept. Returns the kept count (<= budget; equal
/// with pixel granularity).
int64_t uniform_masks(const GateList& gates, const std::vector<torch::Tensor>& scores, int64_t budget);


}  // namespace autorep::search
