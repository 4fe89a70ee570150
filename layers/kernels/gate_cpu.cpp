#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "layers/kernels/gate_kernels.h"

namespace autorep::layers::kernels {
namespace {

#define AUTOREP_GATE_ISA generic
#include "layers/kernels/gate_cpu_impl.h"
#undef AUTOREP_GATE_ISA

// A second copy for AVX2+FMA: ReLU itself runs ATen's AVX2 kernels, and the gate does several
// times its arithmetic per byte, so on the baseline ISA (SSE2) it would be compute bound.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AUTOREP_GATE_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define AUTOREP_GATE_ISA avx2
#include "layers/kernels/gate_cpu_impl.h"
#undef AUTOREP_GATE_ISA
#pragma GCC pop_options
#endif

std::atomic<bool> force_generic{false};

bool use_avx2() {
#ifdef AUTOREP_GATE_HAVE_AVX2
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported && !force_generic.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

}  // namespace

const char* gate_cpu_isa() { return use_avx2() ? "avx2" : "generic"; }

void gate_cpu_force_generic(bool on) { force_generic.store(on); }

#ifdef AUTOREP_GATE_HAVE_AVX2
#define AUTOREP_GATE_CALL(fn, ...) (use_avx2() ? avx2::fn(__VA_ARGS__) : generic::fn(__VA_ARGS__))
#else
#define AUTOREP_GATE_CALL(fn, ...) generic::fn(__VA_ARGS__)
#endif

void gate_forward_cpu(const GateProblem& pr, const float* x, const float* mask, const float* c0,
                      const float* c1, const float* c2, float* y, double* moments) {
  AUTOREP_GATE_CALL(forward_f, pr, x, mask, c0, c1, c2, y, moments);
}
void gate_forward_cpu(const GateProblem& pr, const double* x, const double* mask, const double* c0,
                      const double* c1, const double* c2, double* y, double* moments) {
  AUTOREP_GATE_CALL(forward_d, pr, x, mask, c0, c1, c2, y, moments);
}
void gate_backward_cpu(const GateProblem& pr, const float* x, const float* g, const float* mask,
                       const float* c0, const float* c1, const float* c2, float* dx, float* g_mask,
                       float* dc) {
  AUTOREP_GATE_CALL(backward_f, pr, x, g, mask, c0, c1, c2, dx, g_mask, dc);
}
void gate_backward_cpu(const GateProblem& pr, const double* x, const double* g, const double* mask,
                       const double* c0, const double* c1, const double* c2, double* dx,
                       double* g_mask, double* dc) {
  AUTOREP_GATE_CALL(backward_d, pr, x, g, mask, c0, c1, c2, dx, g_mask, dc);
}

}  // namespace autorep::layers::kernels
