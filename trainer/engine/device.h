#pragma once
/// Where a run computes: LibTorch's thread count and the device.

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace autorep::trainer::engine {

/// Sets LibTorch's intra-op threads: `threads`, or all cores when 0. Returns the count used.
int64_t configure_threads(int64_t threads);
/// Resolves "auto" | "cpu" | "cuda" (error when cuda is asked for but not available).
torch::Device resolve_device(const std::string& device);

}  // namespace autorep::trainer::engine
