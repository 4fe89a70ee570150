// CUDA kernels of the gate: one forward and one backward kernel, float32/float16/bfloat16
// elements with float32 math and accumulation. No torch headers: this file compiles stand-alone
// with `nvcc -c layers/kernels/gate_cuda.cu`.

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

// Sums K values over the block; the result is valid in thread 0.
template <int K>
__device__ __forceinline__ void block_sum(float (&v)[K]) {
  __shared__ float warp_sums[K][kWarps];
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
      v[k] = lane < kWarps ? warp_sums[k][lane] : 0.f;
      for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
  }
}

// Launch geometry. Every block works on one channel (blockIdx.y) so per-channel sums reduce in
// the block; threads cover a tile of positions and, when a channel row is shorter than the
// block, several rows of the batch at once. blockIdx.z splits the batch.
struct Geometry {
  int64_t n, c, p;
  int p_tile;  // positions per block
  int rows;    // batch rows a block covers per step (kThreads / p_tile)
  int mode;    // 0 pixel, 1 channel, 2 layer mask
  float s1, s2;
  int degree;
};

Geometry geometry_of(const GateProblem& pr) {
  Geometry g;
  g.n = pr.n;
  g.c = pr.c;
  g.p = pr.p;
  g.p_tile = static_cast<int>(std::min<int64_t>(pr.p, kThreads));
  g.rows = kThreads / g.p_tile;
  g.mode = pr.mask_numel == pr.c * pr.p ? 0 : (pr.mask_numel == pr.c ? 1 : 2);
  g.s1 = static_cast<float>(pr.s1);
  g.s2 = static_cast<float>(pr.s2);
  g.degree = pr.degree;
  return g;
}

dim3 grid_of(const Geometry& g) {
  int sms = 80;
  int dev = 0;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const int64_t gx = (g.p + g.p_tile - 1) / g.p_tile;
  const int64_t base = gx * g.c;
  const int64_t max_split = std::max<int64_t>(1, (g.n + g.rows - 1) / g.rows);
  // Aim for ~4 blocks per SM in total.
  const int64_t split = std::clamp<int64_t>((4 * sms + base - 1) / base, 1, std::min<int64_t>(max_split, 65535));
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(g.c), static_cast<unsigned>(split));
}

struct Coeffs {
  float a, b, d;
};

__device__ __forceinline__ Coeffs coeffs_of(const Geometry& g, const float* c0, const float* c1,
                                            const float* c2, int64_t c) {
  return {c0[c], g.s1 * c1[c], g.degree >= 2 ? g.s2 * c2[c] : 0.f};
}

template <typename T, bool MOMENTS>
__global__ void __launch_bounds__(kThreads)
    gate_forward_kernel(Geometry g, const T* __restrict__ x, const float* __restrict__ mask,
                        const float* __restrict__ c0, const float* __restrict__ c1,
                        const float* __restrict__ c2, T* __restrict__ y, float* __restrict__ moments) {
  const int64_t c = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * g.p_tile + threadIdx.x % g.p_tile;
  const int sub = threadIdx.x / g.p_tile;
  const bool active = sub < g.rows && p < g.p;
  const Coeffs q = coeffs_of(g, c0, c1, c2, c);
  float s[2] = {0.f, 0.f};
  if (active) {
    const float m = g.mode == 0 ? mask[c * g.p + p] : (g.mode == 1 ? mask[c] : mask[0]);
    const int64_t step = static_cast<int64_t>(g.rows) * gridDim.z;
    for (int64_t n = static_cast<int64_t>(blockIdx.z) * g.rows + sub; n < g.n; n += step) {
      const int64_t i = (n * g.c + c) * g.p + p;
      const float xv = to_float(x[i]);
      const float r = fmaxf(xv, 0.f);
      const float qv = fmaf(xv, fmaf(q.d, xv, q.b), q.a);
      y[i] = from_float<T>(m > 0.5f ? r : qv);
      if (MOMENTS) {
        s[0] += xv;
        s[1] = fmaf(xv, xv, s[1]);
      }
    }
  }
  if (MOMENTS) {
    block_sum<2>(s);
    if (threadIdx.x == 0) {
      atomicAdd(&moments[c], s[0]);
      atomicAdd(&moments[g.c + c], s[1]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gate_backward_kernel(Geometry g, const T* __restrict__ x, const T* __restrict__ gy,
                         const float* __restrict__ mask, const float* __restrict__ c0,
                         const float* __restrict__ c1, const float* __restrict__ c2, T* __restrict__ dx,
                         float* __restrict__ g_mask, float* __restrict__ dc) {
  __shared__ float tile_gm[kThreads];  // per-position mask gradient (pixel masks)
  const int64_t c = blockIdx.y;
  const int pt = threadIdx.x % g.p_tile;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * g.p_tile + pt;
  const int sub = threadIdx.x / g.p_tile;
  const bool active = sub < g.rows && p < g.p;
  const Coeffs q = coeffs_of(g, c0, c1, c2, c);
  const float two_d = 2.f * q.d;
  if (g.mode == 0) {
    tile_gm[threadIdx.x] = 0.f;
    __syncthreads();
  }
  // s: mask gradient, then the coefficient sums of g*(1-m)*{1, x, x^2}
  float s[4] = {0.f, 0.f, 0.f, 0.f};
  if (active) {
    const float m = g.mode == 0 ? mask[c * g.p + p] : (g.mode == 1 ? mask[c] : mask[0]);
    const bool kept = m > 0.5f;
    const int64_t step = static_cast<int64_t>(g.rows) * gridDim.z;
    for (int64_t n = static_cast<int64_t>(blockIdx.z) * g.rows + sub; n < g.n; n += step) {
      const int64_t i = (n * g.c + c) * g.p + p;
      const float xv = to_float(x[i]);
      const float gv = to_float(gy[i]);
      const float pos = xv > 0.f ? 1.f : 0.f;
      const float qv = fmaf(xv, fmaf(q.d, xv, q.b), q.a);
      dx[i] = from_float<T>(gv * (kept ? pos : fmaf(two_d, xv, q.b)));
      s[0] = fmaf(gv, xv * pos - qv, s[0]);
      const float gq = kept ? 0.f : gv;
      s[1] += gq;
      s[2] = fmaf(gq, xv, s[2]);
      s[3] = fmaf(gq * xv, xv, s[3]);
    }
  }
  if (g.mode == 0) {
    if (active) atomicAdd(&tile_gm[pt], s[0]);
    __syncthreads();
    if (threadIdx.x < g.p_tile && p < g.p) {
      if (gridDim.z == 1) {
        g_mask[c * g.p + p] = tile_gm[threadIdx.x];
      } else {
        atomicAdd(&g_mask[c * g.p + p], tile_gm[threadIdx.x]);
      }
    }
    s[0] = 0.f;
  }
  block_sum<4>(s);
  if (threadIdx.x == 0) {
    if (g.mode == 1) atomicAdd(&g_mask[c], s[0]);
    if (g.mode == 2) atomicAdd(&g_mask[0], s[0]);
    atomicAdd(&dc[c], s[1]);
    atomicAdd(&dc[g.c + c], g.s1 * s[2]);
    if (g.degree >= 2) atomicAdd(&dc[2 * g.c + c], g.s2 * s[3]);
  }
}

template <typename T>
int launch_forward(const GateProblem& pr, const void* x, const float* mask, const float* c0,
                   const float* c1, const float* c2, void* y, float* moments, cudaStream_t stream) {
  if (pr.n * pr.c * pr.p == 0) return 0;
  const Geometry g = geometry_of(pr);
  const dim3 grid = grid_of(g);
  if (moments) {
    gate_forward_kernel<T, true><<<grid, kThreads, 0, stream>>>(
        g, static_cast<const T*>(x), mask, c0, c1, c2, static_cast<T*>(y), moments);
  } else {
    gate_forward_kernel<T, false><<<grid, kThreads, 0, stream>>>(
        g, static_cast<const T*>(x), mask, c0, c1, c2, static_cast<T*>(y), nullptr);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_backward(const GateProblem& pr, const void* x, const void* gy, const float* mask,
                    const float* c0, const float* c1, const float* c2, void* dx, float* g_mask,
                    float* dc, cudaStream_t stream) {
  if (pr.n * pr.c * pr.p == 0) return 0;
  const Geometry g = geometry_of(pr);
  const dim3 grid = grid_of(g);
  gate_backward_kernel<T><<<grid, kThreads, 0, stream>>>(g, static_cast<const T*>(x),
                                                         static_cast<const T*>(gy), mask, c0, c1, c2,
                                                         static_cast<T*>(dx), g_mask, dc);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int gate_forward_cuda(const GateProblem& pr, GateDtype dt, const void* x, const float* mask,
                      const float* c0, const float* c1, const float* c2, void* y, float* moments,
                      void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case GateDtype::f32: return launch_forward<float>(pr, x, mask, c0, c1, c2, y, moments, s);
    case GateDtype::f16: return launch_forward<__half>(pr, x, mask, c0, c1, c2, y, moments, s);
    case GateDtype::bf16: return launch_forward<__nv_bfloat16>(pr, x, mask, c0, c1, c2, y, moments, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int gate_backward_cuda(const GateProblem& pr, GateDtype dt, const void* x, const void* g,
                       const float* mask, const float* c0, const float* c1, const float* c2, void* dx,
                       float* g_mask, float* dc, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case GateDtype::f32: return launch_backward<float>(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc, s);
    case GateDtype::f16: return launch_backward<__half>(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc, s);
    case GateDtype::bf16:
      return launch_backward<__nv_bfloat16>(pr, x, g, mask, c0, c1, c2, dx, g_mask, dc, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace autorep::layers::kernels
