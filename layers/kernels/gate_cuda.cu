// CUDA kernels of the gate: forward and backward for two memory layouts, float32/float16/bfloat16
// elements with float32 math. No atomics: every block writes its partial sums to its own row and
// the caller reduces the rows in a fixed order (gate_kernels.h, GatePartials), so moments and
// gradients are reproducible run to run; the moments accumulate in double, so their variance
// stays accurate when |mean| >> std. No torch headers: this file compiles stand-alone with
// `nvcc -c layers/kernels/gate_cuda.cu`.
//
// channels_first ([n, c, p], NCHW): a block works on one channel (blockIdx.y, strided when there
// are more than 65,535) and a tile of positions (blockIdx.x); when a channel row is shorter than
// the block, its threads also cover several batch rows. blockIdx.z splits the batch.
// channels_last ([n, p, c]: channels_last NCHW or N×F): threads walk the channels (coalesced for
// any p, F beyond 65,535 included); a block covers `subs` positions of a tile of channels
// (blockIdx.x), blockIdx.y strides over the positions, blockIdx.z splits the batch.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "gate_kernels.h"  // same folder: keeps `nvcc -c` stand-alone

namespace autorep::layers::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGridYZ = 65535;

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Sums K values over the block in a fixed order; the result is valid in thread 0. Ends with a
// barrier, so it may be called again (in a loop) right away.
template <typename A, int K>
__device__ __forceinline__ void block_sum(A (&v)[K]) {
  __shared__ A warp_sums[K][kWarps];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) warp_sums[k][warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      v[k] = lane < kWarps ? warp_sums[k][lane] : A(0);
      for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
  }
  __syncthreads();
}

struct Geometry {
  int64_t n, c, p;
  int mode;  // 0 pixel, 1 channel, 2 layer mask
  float s1, s2;
  int degree;
  // channels_first: positions per block and batch rows per block step.
  // channels_last: channels per block and positions per block.
  int tile, subs;
  unsigned gx, gy, gz;
};

int multiprocessors() {
  int sms = 80, dev = 0;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return std::max(sms, 1);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Geometry geometry_of(const GateProblem& pr, GateLayout layout) {
  Geometry g;
  g.n = pr.n;
  g.c = pr.c;
  g.p = pr.p;
  g.mode = pr.mask_numel == pr.c * pr.p ? 0 : (pr.mask_numel == pr.c ? 1 : 2);
  g.s1 = static_cast<float>(pr.s1);
  g.s2 = static_cast<float>(pr.s2);
  g.degree = pr.degree;
  const int64_t target = 4 * static_cast<int64_t>(multiprocessors());  // ~4 blocks per SM
  int64_t gx, gy, gz;
  if (layout == GateLayout::channels_first) {
    g.tile = static_cast<int>(std::min<int64_t>(std::max<int64_t>(pr.p, 1), kThreads));
    g.subs = kThreads / g.tile;
    gx = std::max<int64_t>(1, ceil_div(pr.p, g.tile));
    gy = std::clamp<int64_t>(pr.c, 1, kMaxGridYZ);
    gz = std::clamp<int64_t>(ceil_div(target, gx * gy), 1,
                             std::clamp<int64_t>(ceil_div(pr.n, g.subs), 1, kMaxGridYZ));
  } else {
    g.tile = static_cast<int>(std::min<int64_t>(ceil_div(std::max<int64_t>(pr.c, 1), 32) * 32, kThreads));
    g.subs = kThreads / g.tile;
    gx = std::max<int64_t>(1, ceil_div(pr.c, g.tile));
    gy = std::clamp<int64_t>(ceil_div(target, gx), 1, std::clamp<int64_t>(ceil_div(pr.p, g.subs), 1, kMaxGridYZ));
    gz = std::clamp<int64_t>(ceil_div(target, gx * gy), 1, std::clamp<int64_t>(pr.n, 1, kMaxGridYZ));
  }
  g.gx = static_cast<unsigned>(gx);
  g.gy = static_cast<unsigned>(gy);
  g.gz = static_cast<unsigned>(gz);
  return g;
}

// Row of a block in the per-channel partial buffers, and how many rows there are.
__device__ __forceinline__ int64_t partial_row(GateLayout layout) {
  return layout == GateLayout::channels_first
             ? static_cast<int64_t>(blockIdx.z) * gridDim.x + blockIdx.x
             : static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y;
}

struct Coeffs {
  float a, b, d;
};

__device__ __forceinline__ Coeffs coeffs_of(const Geometry& g, const float* c0, const float* c1,
                                            const float* c2, int64_t c) {
  return {c0[c], g.s1 * c1[c], g.degree >= 2 ? g.s2 * c2[c] : 0.f};
}

__device__ __forceinline__ float mask_at(const Geometry& g, const float* mask, int64_t c, int64_t p) {
  return g.mode == 0 ? mask[c * g.p + p] : (g.mode == 1 ? mask[c] : mask[0]);
}

// One element of the forward: y = relu(x) where kept, else the polynomial (a select, not a
// blend: a kept position stays relu(x) where the polynomial overflows); adds x, x^2 to s.
template <typename T, bool MOMENTS>
__device__ __forceinline__ void forward_element(const T* __restrict__ x, T* __restrict__ y, int64_t i, bool kept,
                                                const Coeffs& q, double (&s)[2]) {
  const float xv = to_float(x[i]);
  y[i] = from_float<T>(kept ? fmaxf(xv, 0.f) : fmaf(xv, fmaf(q.d, xv, q.b), q.a));
  if (MOMENTS) {
    s[0] += xv;
    s[1] += static_cast<double>(xv) * xv;
  }
}

// One element of the backward: writes dx, adds g*(relu(x)-q(x)) to gm and g*(1-m)*{1, x, x^2}
// to s[1..3].
template <typename T>
__device__ __forceinline__ void backward_element(const T* __restrict__ x, const T* __restrict__ gy,
                                                 T* __restrict__ dx, int64_t i, bool kept, const Coeffs& q,
                                                 float& gm, float (&s)[4]) {
  const float xv = to_float(x[i]);
  const float gv = to_float(gy[i]);
  const float pos = xv > 0.f ? 1.f : 0.f;
  const float qv = fmaf(xv, fmaf(q.d, xv, q.b), q.a);
  dx[i] = from_float<T>(gv * (kept ? pos : fmaf(2.f * q.d, xv, q.b)));
  gm = fmaf(gv, xv * pos - qv, gm);
  const float gq = kept ? 0.f : gv;
  s[1] += gq;
  s[2] = fmaf(gq, xv, s[2]);
  s[3] = fmaf(gq * xv, xv, s[3]);
}

// A block's per-channel sums of the backward into its partial rows (thread with the totals).
__device__ __forceinline__ void write_backward_partials(const Geometry& g, int64_t row, int64_t c,
                                                        const float (&s)[4], float* g_mask, float* dc) {
  if (g.mode != 0) g_mask[row * g.c + c] = s[0];
  dc[(row * 3 + 0) * g.c + c] = s[1];
  dc[(row * 3 + 1) * g.c + c] = g.s1 * s[2];
  dc[(row * 3 + 2) * g.c + c] = g.degree >= 2 ? g.s2 * s[3] : 0.f;
}

__device__ __forceinline__ void write_moment_partials(const Geometry& g, int64_t row, int64_t c,
                                                      const double (&s)[2], double* moments) {
  moments[(row * 2 + 0) * g.c + c] = s[0];
  moments[(row * 2 + 1) * g.c + c] = s[1];
}

// ---- channels_first -----------------------------------------------------------------------

template <typename T, bool MOMENTS>
__global__ void __launch_bounds__(kThreads)
    forward_cf(Geometry g, const T* __restrict__ x, const float* __restrict__ mask,
               const float* __restrict__ c0, const float* __restrict__ c1, const float* __restrict__ c2,
               T* __restrict__ y, double* __restrict__ moments) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * g.tile + threadIdx.x % g.tile;
  const int sub = threadIdx.x / g.tile;
  const bool active = sub < g.subs && p < g.p;
  const int64_t row = partial_row(GateLayout::channels_first);
  const int64_t step = static_cast<int64_t>(g.subs) * gridDim.z;
  for (int64_t c = blockIdx.y; c < g.c; c += gridDim.y) {
    const Coeffs q = coeffs_of(g, c0, c1, c2, c);
    double s[2] = {0.0, 0.0};
    if (active) {
      const bool kept = mask_at(g, mask, c, p) > 0.5f;
      for (int64_t n = static_cast<int64_t>(blockIdx.z) * g.subs + sub; n < g.n; n += step) {
        forward_element<T, MOMENTS>(x, y, (n * g.c + c) * g.p + p, kept, q, s);
      }
    }
    if (MOMENTS) {
      block_sum(s);
      if (threadIdx.x == 0) write_moment_partials(g, row, c, s, moments);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_cf(Geometry g, const T* __restrict__ x, const T* __restrict__ gy,
                const float* __restrict__ mask, const float* __restrict__ c0, const float* __restrict__ c1,
                const float* __restrict__ c2, T* __restrict__ dx, float* __restrict__ g_mask,
                float* __restrict__ dc) {
  __shared__ float tile_gm[kThreads];  // per-thread mask gradient (pixel masks)
  const int pt = threadIdx.x % g.tile;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * g.tile + pt;
  const int sub = threadIdx.x / g.tile;
  const bool active = sub < g.subs && p < g.p;
  const int64_t row = partial_row(GateLayout::channels_first);
  const int64_t step = static_cast<int64_t>(g.subs) * gridDim.z;
  for (int64_t c = blockIdx.y; c < g.c; c += gridDim.y) {
    const Coeffs q = coeffs_of(g, c0, c1, c2, c);
    // s: mask gradient, then the coefficient sums of g*(1-m)*{1, x, x^2}
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    if (active) {
      const bool kept = mask_at(g, mask, c, p) > 0.5f;
      for (int64_t n = static_cast<int64_t>(blockIdx.z) * g.subs + sub; n < g.n; n += step) {
        backward_element(x, gy, dx, (n * g.c + c) * g.p + p, kept, q, s[0], s);
      }
    }
    if (g.mode == 0) {
      // Each position's sum over the block's batch rows, in row order.
      tile_gm[threadIdx.x] = s[0];
      __syncthreads();
      if (sub == 0 && p < g.p) {
        float t = 0.f;
        for (int r = 0; r < g.subs; ++r) t += tile_gm[r * g.tile + pt];
        g_mask[static_cast<int64_t>(blockIdx.z) * (g.c * g.p) + c * g.p + p] = t;
      }
      __syncthreads();
      s[0] = 0.f;
    }
    block_sum(s);
    if (threadIdx.x == 0) write_backward_partials(g, row, c, s, g_mask, dc);
  }
}

// ---- channels_last --------------------------------------------------------------------------

// Sums K per-thread values over the `subs` positions of a block that share a channel, in order;
// the result is valid in the threads with sub == 0.
template <typename A, int K>
__device__ __forceinline__ void channel_sum(const Geometry& g, A (&v)[K]) {
  __shared__ A part[K][kThreads];
#pragma unroll
  for (int k = 0; k < K; ++k) part[k][threadIdx.x] = v[k];
  __syncthreads();
  if (threadIdx.x < g.tile) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      A t = part[k][threadIdx.x];
      for (int r = 1; r < g.subs; ++r) t += part[k][r * g.tile + threadIdx.x];
      v[k] = t;
    }
  }
  __syncthreads();
}

template <typename T, bool MOMENTS>
__global__ void __launch_bounds__(kThreads)
    forward_cl(Geometry g, const T* __restrict__ x, const float* __restrict__ mask,
               const float* __restrict__ c0, const float* __restrict__ c1, const float* __restrict__ c2,
               T* __restrict__ y, double* __restrict__ moments) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * g.tile + threadIdx.x % g.tile;
  const int sub = threadIdx.x / g.tile;
  const bool on = sub < g.subs && c < g.c;
  double s[2] = {0.0, 0.0};
  if (on) {
    const Coeffs q = coeffs_of(g, c0, c1, c2, c);
    for (int64_t p = static_cast<int64_t>(blockIdx.y) * g.subs + sub; p < g.p;
         p += static_cast<int64_t>(gridDim.y) * g.subs) {
      const bool kept = mask_at(g, mask, c, p) > 0.5f;
      for (int64_t n = blockIdx.z; n < g.n; n += gridDim.z) {
        forward_element<T, MOMENTS>(x, y, (n * g.p + p) * g.c + c, kept, q, s);
      }
    }
  }
  if (MOMENTS) {
    channel_sum(g, s);
    if (threadIdx.x < g.tile && c < g.c) write_moment_partials(g, partial_row(GateLayout::channels_last), c, s, moments);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_cl(Geometry g, const T* __restrict__ x, const T* __restrict__ gy,
                const float* __restrict__ mask, const float* __restrict__ c0, const float* __restrict__ c1,
                const float* __restrict__ c2, T* __restrict__ dx, float* __restrict__ g_mask,
                float* __restrict__ dc) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * g.tile + threadIdx.x % g.tile;
  const int sub = threadIdx.x / g.tile;
  const bool on = sub < g.subs && c < g.c;
  float s[4] = {0.f, 0.f, 0.f, 0.f};
  if (on) {
    const Coeffs q = coeffs_of(g, c0, c1, c2, c);
    for (int64_t p = static_cast<int64_t>(blockIdx.y) * g.subs + sub; p < g.p;
         p += static_cast<int64_t>(gridDim.y) * g.subs) {
      const bool kept = mask_at(g, mask, c, p) > 0.5f;
      float gm = 0.f;
      for (int64_t n = blockIdx.z; n < g.n; n += gridDim.z) {
        backward_element(x, gy, dx, (n * g.p + p) * g.c + c, kept, q, gm, s);
      }
      // One thread per (channel, position) and batch split: its own entry.
      if (g.mode == 0) {
        g_mask[static_cast<int64_t>(blockIdx.z) * (g.c * g.p) + c * g.p + p] = gm;
      } else {
        s[0] += gm;
      }
    }
  }
  channel_sum(g, s);
  if (threadIdx.x < g.tile && c < g.c) write_backward_partials(g, partial_row(GateLayout::channels_last), c, s, g_mask, dc);
}

// ---- launches -------------------------------------------------------------------------------

template <typename T>
int launch_forward(const GateProblem& pr, GateLayout layout, const void* x, const float* mask,
                   const float* c0, const float* c1, const float* c2, void* y, double* moments,
                   cudaStream_t stream) {
  if (pr.n * pr.c * pr.p == 0) return 0;
  const Geometry g = geometry_of(pr, layout);
  const dim3 grid(g.gx, g.gy, g.gz);
  const auto* xt = static_cast<const T*>(x);
  auto* yt = static_cast<T*>(y);
  if (layout == GateLayout::channels_first) {
    if (moments) {
      forward_cf<T, true><<<grid, kThreads, 0, stream>>>(g, xt, mask, c0, c1, c2, yt, moments);
    } else {
      forward_cf<T, false><<<grid, kThreads, 0, stream>>>(g, xt, mask, c0, c1, c2, yt, nullptr);
    }
  } else {
    if (moments) {
      forward_cl<T, true><<<grid, kThreads, 0, stream>>>(g, xt, mask, c0, c1, c2, yt, moments);
    } else {
      forward_cl<T, false><<<grid, kThreads, 0, stream>>>(g, xt, mask, c0, c1, c2, yt, nullptr);
    }
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_backward(const GateProblem& pr, GateLayout layout, const void* x, const void* gy,
                    const float* mask, const float* c0, const float* c1, const float* c2, void* dx,
                    float* g_mask, float* dc, cudaStream_t stream) {
  if (pr.n * pr.c * pr.p == 0) return 0;
  const Geometry g = geometry_of(pr, layout);
  const dim3 grid(g.gx, g.gy, g.gz);
  const auto* xt = static_cast<const T*>(x);
  const auto* gt = static_cast<const T*>(gy);
  auto* dxt = static_cast<T*>(dx);
  if (layout == GateLayout::channels_first) {
    backward_cf<T><<<grid, kThreads, 0, stream>>>(g, xt, gt, mask, c0, c1, c2, dxt, g_mask, dc);
  } else {
    backward_cl<T><<<grid, kThreads, 0, stream>>>(g, xt, gt, mask, c0, c1, c2, dxt, g_mask, dc);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

GatePartials gate_cuda_partials(const GateProblem& pr, GateLayout layout) {
  const Geometry g = geometry_of(pr, layout);
  GatePartials out;
  out.rows = layout == GateLayout::channels_first ? static_cast<int64_t>(g.gz) * g.gx
                                                  : static_cast<int64_t>(g.gz) * g.gy;
  out.mask_rows = g.gz;
  return out;
}

int gate_forward_cuda(const GateProblem& pr, GateDtype dt, GateLayout layout, const void* x,
                      const float* mask, const float* c0, const float* c1, const float* c2, void* y,
                      double* moments, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case GateDtype::f32: return launch_forward<float>(pr, layout, x, mask, c0, c1, c2, y, moments, s);
    case GateDtype::f16: return launch_forward<__half>(pr, layout, x, mask, c0, c1, c2, y, moments, s);
    case GateDtype::bf16:
      return launch_forward<__nv_bfloat16>(pr, layout, x, mask, c0, c1, c2, y, moments, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int gate_backward_cuda(const GateProblem& pr, GateDtype dt, GateLayout layout, const void* x,
                       const void* g, const float* mask, const float* c0, const float* c1,
                       const float* c2, void* dx, float* g_mask, float* dc, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case GateDtype::f32:
      return launch_backward<float>(pr, layout, x, g, mask, c0, c1, c2, dx, g_mask, dc, s);
    case GateDtype::f16:
      return launch_backward<__half>(pr, layout, x, g, mask, c0, c1, c2, dx, g_mask, dc, s);
    case GateDtype::bf16:
      return launch_backward<__nv_bfloat16>(pr, layout, x, g, mask, c0, c1, c2, dx, g_mask, dc, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace autorep::layers::kernels
