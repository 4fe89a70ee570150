#pragma once
/// Where a run computes: LibTorch's thread count, the device and the memory format.

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace autorep::trainer::engine {

/// Sets LibTorch's intra-op threads: `threads`, or all cores when 0, and makes BLAS run on the
/// calling thread (blas_single_threaded). Returns the count used.
int64_t configure_threads(int64_t threads);
/// Sets OpenBLAS, when it is the BLAS in the process, to one thread; returns its thread count
/// before (0 when there is no OpenBLAS). OpenBLAS's pthread workers busy-wait (sched_yield) for a
/// while after every call, next to LibTorch's OpenMP threads waiting for the same call: with
/// both pools as large as the machine, the cores were oversubscribed and a cnn-small baseline
/// step ran 20-40% slower. The shipped models' matrix products are small (convolutions run
/// through oneDNN), so LibTorch's threads lose nothing by calling BLAS single-threaded.
int blas_single_threaded();
/// Resolves "auto" | "cpu" | "cuda" (error when cuda is asked for but not available).
torch::Device resolve_device(const std::string& device);

/// Puts every 4-d parameter of `module` in channels_last memory (true) or back in contiguous
/// NCHW memory (false), values unchanged (`train.channels_last`): convolutions, batch norm and
/// the gate kernels then run on that layout. Does nothing to parameters already in it.
void set_memory_format(torch::nn::Module& module, bool channels_last);
/// Whether `module`'s 4-d parameters are in channels_last memory (the first one whose two
/// layouts differ decides; false without any).
bool is_channels_last(const torch::nn::Module& module);
/// An N×C×H×W batch in `module`'s memory format (a copy only when it differs); other shapes as is.
torch::Tensor in_format_of(const torch::nn::Module& module, const torch::Tensor& x);

}  // namespace autorep::trainer::engine
