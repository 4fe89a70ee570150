#pragma once
/// Which memory layout the gate kernels run in for a tensor, shared by the CPU and CUDA glue.

#include <torch/types.h>

#include "layers/kernels/gate_kernels.h"

namespace autorep::layers::kernels {

/// N×F inputs are rows of channels; a 4-d input in channels_last memory is too (no copy).
/// Everything else runs channels_first.
inline GateLayout gate_layout_of(const torch::Tensor& x) {
  if (x.dim() == 2) return GateLayout::channels_last;
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return GateLayout::channels_last;
  }
  return GateLayout::channels_first;
}

/// `t` contiguous in `layout` (a copy only where it is not already).
inline torch::Tensor in_gate_layout(const torch::Tensor& t, GateLayout layout) {
  return layout == GateLayout::channels_last && t.dim() == 4 ? t.contiguous(at::MemoryFormat::ChannelsLast)
                                                             : t.contiguous();
}

}  // namespace autorep::layers::kernels
