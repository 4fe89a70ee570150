#pragma once
/// Keeping the processes of a data-parallel run on one model: the same start, the same batch-norm
/// estimates, the same masks.

#include <cstdint>

#include "trainer/engine/distributed.h"
#include "trainer/models/net.h"

namespace autorep::trainer::engine {

/// Rank 0's parameters and buffers on every process, so all start from the same model.
void broadcast_model(models::NetImpl& model, dist::Group& group);
/// Batch norm normalises each process's share of the batch with that share's statistics, so the
/// running estimates drift apart; their mean is what one process would have estimated.
void average_batch_norm_stats(models::NetImpl& model, dist::Group& group);
/// Every process must hold the same masks (they follow from the same all-reduced aux
/// gradients); throws when the processes differ, naming the epoch.
void check_masks_agree(models::NetImpl& model, dist::Group& group, int64_t epoch);

}  // namespace autorep::trainer::engine
