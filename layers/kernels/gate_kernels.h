#pragma once
/// Raw kernels of the ReLU/polynomial gate (DESIGN §3). Plain C++: no torch headers, so the
/// CUDA file compiles stand-alone with `nvcc -c`. The tensor glue lives in gate_function.cpp
/// (CPU) and gate_cuda_dispatch.cpp (CUDA).
///
/// Layout: x is viewed as [n, c, p] (p = H*W for N×C×H×W inputs, p = 1 for N×F inputs, then
/// c = F), stored contiguously in that order or, GateLayout::channels_last, as [n, p, c]. The
/// mask has `mask_numel` elements: c*p (pixel granularity, [c, p] in either layout), c (channel)
/// or 1 (layer). Coefficients c0, c1, c2 have c elements.
///
/// Forward:  y = m*relu(x) + (1-m)*q(x),  q(x) = c0 + s1*c1*x + s2*c2*x^2 (c2 ignored for degree 1).
/// Backward, for dL/dy = g:
///   dx            = g * (m*[x>0] + (1-m)*(s1*c1 + 2*s2*c2*x))
///   g_mask        = sum over the batch (and over the positions the mask covers) of g*(relu(x)-q(x))
///   dc0, dc1, dc2 = per channel sums of g*(1-m)*{1, s1*x, s2*x^2}

#include <cstdint>

namespace autorep::layers::kernels {

/// Sizes and scalars of one gate call.
struct GateProblem {
  int64_t n = 0;           ///< batch size
  int64_t c = 0;           ///< channels (or features)
  int64_t p = 1;           ///< positions per channel (H*W; 1 for linear inputs)
  int64_t mask_numel = 1;  ///< c*p (pixel), c (channel) or 1 (layer)
  double s1 = 1.0;         ///< fixed scale of the linear term
  double s2 = 0.1;         ///< fixed scale of the quadratic term
  int degree = 2;          ///< 1 or 2
};

/// Memory layout of x (and g, y, dx).
///   channels_first: [n, c, p] contiguous (NCHW).
///   channels_last:  [n, p, c] contiguous: an NCHW tensor in channels_last memory, or an N×F
///                   input (p = 1). On the GPU threads walk the channels, so loads coalesce
///                   however small p is; on the CPU each row of c channels is one vector loop.
///                   The mask (and its gradient) keeps its [c, p] order in either layout.
enum class GateLayout { channels_first, channels_last };

// ---- CPU (layers/kernels/gate_cpu.cpp), float and double ----------------------------------

/// y[n*c*p] from x; when `moments` is not null it receives per-channel sum(x) in moments[0..c)
/// and sum(x^2) in moments[c..2c) (accumulated in double, same pass over x).
void gate_forward_cpu(const GateProblem& pr, const float* x, const float* mask, const float* c0,
                      const float* c1, const float* c2, float* y, double* moments,
                      GateLayout layout = GateLayout::channels_first);
void gate_forward_cpu(const GateProblem& pr, const double* x, const double* mask, const double* c0,
                      const double* c1, const double* c2, double* y, double* moments,
                      GateLayout layout = GateLayout::channels_first);

/// One pass over x and g: writes dx[n*c*p] (every element), g_mask[mask_numel] and
/// dc[3*c] = (dc0, dc1, dc2) (dc2 is written as 0 for degree 1). Deterministic for a given
/// number of threads (at::get_num_threads()): the order of every sum depends only on the sizes
/// and the thread count.
void gate_backward_cpu(const GateProblem& pr, const float* x, const float* g, const float* mask,
                       const float* c0, const float* c1, const float* c2, float* dx, float* g_mask,
                       float* dc, GateLayout layout = GateLayout::channels_first);
void gate_backward_cpu(const GateProblem& pr, const double* x, const double* g, const double* mask,
                       const double* c0, const double* c1, const double* c2, double* dx,
                       double* g_mask, double* dc, GateLayout layout = GateLayout::channels_first);

/// The straight-through gradient of the mask's logits: g_mask[i] *= softplus(aux[i]) for the
/// n elements (to about an ulp of the type; NaN stays NaN; 0 below aux = -87 for float, -708 for
/// double, where exp(aux) leaves the normal range). Elementwise, so the same for any thread count.
void gate_straight_through_cpu(const float* aux, float* g_mask, int64_t n);
void gate_straight_through_cpu(const double* aux, double* g_mask, int64_t n);

/// Instruction set the CPU kernels run with: "avx512", "avx2" (x86-64, GCC builds, chosen at
/// run time from the CPU) or "generic". The default is "avx2" where the CPU has it, also where
/// it has AVX-512 (the kernels are bound by memory, and the 64-byte build measured slower);
/// the environment variable AUTOREP_GATE_ISA chooses another the CPU has.
const char* gate_cpu_isa();
/// Choose the CPU code path: "generic", "avx2", "avx512", or "" for the default above. Returns
/// false (and changes nothing) when this build or CPU lacks it. For tests and benchmarks that
/// compare the code paths.
bool gate_cpu_set_isa(const char* isa);
/// Outputs (y, dx) of at least this many bytes are written around the caches (non-temporal
/// stores, x86-64): by default the last-level cache's size, as such an output cannot stay cached
/// for the next layer and a plain store would first read every line it overwrites. Values are
/// the same either way.
int64_t gate_cpu_stream_bytes();
/// Sets that threshold (0: always stream; a negative value: back to the default). For tests
/// that cover both kinds of store and for benchmarks.
void gate_cpu_set_stream_bytes(int64_t bytes);

// ---- CUDA (layers/kernels/gate_cuda.cu) ------------------------------------------------------

/// Element type of x, g, y and dx on the GPU. Mask and coefficients are float32; the math is
/// float32, the moments accumulate in double.
enum class GateDtype { f32, f16, bf16 };

/// Rows of the partial-sum buffers the CUDA kernels write instead of accumulating with atomics:
/// every block writes its own row, and the caller sums the rows in a fixed order, so every
/// reduction (moments, mask and coefficient gradients) is the same from run to run.
///   moments  [rows, 2, c] double   (sum x, sum x^2)
///   dc       [rows, 3, c] float    (dc0, dc1, dc2)
///   g_mask   [rows, c] float for channel and layer masks (the layer's is the sum of all),
///            [mask_rows, c*p] float for pixel masks.
/// Depends on the sizes, the layout and the current device's multiprocessor count only.
struct GatePartials {
  int64_t rows = 1;
  int64_t mask_rows = 1;
};
GatePartials gate_cuda_partials(const GateProblem& pr, GateLayout layout);

/// Same contract as gate_forward_cpu in `layout`; `moment_partials` (gate_cuda_partials' rows x
/// 2 x c doubles, device memory, any content) may be null. Returns 0 or the cudaError_t.
int gate_forward_cuda(const GateProblem& pr, GateDtype dt, GateLayout layout, const void* x,
                      const float* mask, const float* c0, const float* c1, const float* c2, void* y,
                      double* moment_partials, void* stream);

/// Same contract as gate_backward_cpu in `layout`, all pointers device memory; g_mask and dc are
/// written as the partial rows above (every entry written, any content on entry). Returns 0 or
/// the cudaError_t of the launch.
int gate_backward_cuda(const GateProblem& pr, GateDtype dt, GateLayout layout, const void* x,
                       const void* g, const float* mask, const float* c0, const float* c1,
                       const float* c2, void* dx, float* g_mask_partials, float* dc_partials,
                       void* stream);

}  // namespace autorep::layers::kernels
