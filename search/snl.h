#pragma once
/// The search side of the `snl` baseline (Selective Network Linearization, Cho et al. 2022): the
/// L1 term on the slopes of layers::SnlGate, the count of live slopes, clamping and relaxation.

#include <torch/types.h>

#include <cstdint>

#include "search/objective.h"

namespace autorep::search {

/// sum over gates of |alpha| * elements_per_entry / total (the L1 term, normalised like rho).
torch::Tensor snl_l1(const GateList& gates);
/// ReLUs whose slope is still alive (alpha > threshold), per sample.
int64_t snl_alive(const GateList& gates, double threshold = 1e-2);
/// Keeps alpha in [0, 1] after an optimiser step.
void snl_clamp(const GateList& gates);
/// Relaxed mode on every SnlGate among `gates`.
void snl_set_relaxed(const GateList& gates, bool relaxed);

}  // namespace autorep::search
