#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "layers/kernels/gate_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <unistd.h>

namespace autorep::layers::kernels {
namespace {

// Outputs (y, dx) of at least this many bytes are written with non-temporal stores: by default
// the size of the last-level cache. A tensor that large does not stay in the cache for the layer
// that reads it next, so a plain store only adds the read of each line before it is overwritten
// (three streams of memory traffic where two do). Below it, plain stores keep the output cached.
// -1: not set by gate_cpu_set_stream_bytes.
std::atomic<int64_t> forced_stream_bytes{-1};

// The last-level cache as the kernel describes it to this machine (Linux sysfs: on a virtual
// machine the share it was given, where CPUID may report the host's whole cache), else
// sysconf's, else 8 MiB. AUTOREP_GATE_STREAM_BYTES overrides it.
int64_t default_stream_bytes() {
  static const int64_t bytes = [] {
    if (const char* env = std::getenv("AUTOREP_GATE_STREAM_BYTES")) {
      char* end = nullptr;
      const long long v = std::strtoll(env, &end, 10);
      if (end != env && *end == '\0' && v >= 0) return static_cast<int64_t>(v);
    }
    int64_t best = 0;
    for (int i = 0; i < 8; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
      std::ifstream level(dir + "level"), size(dir + "size");
      int lv = 0;
      std::string sz;
      if (!(level >> lv) || !(size >> sz) || lv < 3) continue;
      int64_t v = std::atoll(sz.c_str());
      if (sz.back() == 'K') v <<= 10;
      if (sz.back() == 'M') v <<= 20;
      if (v > 0) best = v;
    }
    long l3 = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
    l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    if (best <= 0 && l3 > 0) best = l3;
    return best > 0 ? best : int64_t{8} << 20;
  }();
  return bytes;
}

int64_t stream_bytes() {
  const int64_t forced = forced_stream_bytes.load(std::memory_order_relaxed);
  return forced >= 0 ? forced : default_stream_bytes();
}

inline bool stream_output(int64_t bytes) { return bytes >= stream_bytes(); }

// Orders this thread's non-temporal stores before whatever it does next (the end of a task).
inline void stream_fence() {
#if defined(__x86_64__) && defined(__GNUC__)
  _mm_sfence();
#endif
}

#define AUTOREP_GATE_ISA generic
#define AUTOREP_GATE_VEC_BYTES 16
#include "layers/kernels/gate_cpu_impl.h"
#include "layers/kernels/gate_cpu_softplus_impl.h"
#undef AUTOREP_GATE_VEC_BYTES
#undef AUTOREP_GATE_ISA

// Copies for AVX2+FMA and AVX-512, as ATen dispatches its own kernels (ReLU runs AVX-512 where
// it can): the gate does several times ReLU's arithmetic per byte, so on the baseline ISA
// (SSE2) it would be compute bound.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AUTOREP_GATE_HAVE_X86 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define AUTOREP_GATE_ISA avx2
#define AUTOREP_GATE_VEC_BYTES 32
#include "layers/kernels/gate_cpu_impl.h"
#include "layers/kernels/gate_cpu_softplus_impl.h"
#undef AUTOREP_GATE_VEC_BYTES
#undef AUTOREP_GATE_ISA
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#define AUTOREP_GATE_ISA avx512
#define AUTOREP_GATE_VEC_BYTES 64
#include "layers/kernels/gate_cpu_impl.h"
#include "layers/kernels/gate_cpu_softplus_impl.h"
#undef AUTOREP_GATE_VEC_BYTES
#undef AUTOREP_GATE_ISA
#pragma GCC pop_options
#endif

enum class Isa { generic, avx2, avx512 };

std::atomic<int> forced_isa{-1};

Isa detect_isa() {
#ifdef AUTOREP_GATE_HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    return Isa::avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::generic;
}

Isa detected_isa() {
  static const Isa detected = detect_isa();
  return detected;
}

// A build's name, as gate_cpu_isa() prints it; false for any other name.
bool parse_isa(const std::string& name, Isa* out) {
  if (name != "avx512" && name != "avx2" && name != "generic") return false;
  *out = name == "avx512" ? Isa::avx512 : name == "avx2" ? Isa::avx2 : Isa::generic;
  return true;
}

// The instruction set the kernels run with: AVX2 where the CPU has it, also where it has
// AVX-512. The kernels are bound by memory, not arithmetic, and on a Xeon with AVX-512 the
// 64-byte build ran slower than the 32-byte one (`bench gate`, 64×64×28×28 pixel mask, 2 threads,
// three alternating pairs: gate over ReLU 1.10–1.14 against 1.02–1.03). AUTOREP_GATE_ISA=avx512,
// avx2 or generic chooses another build the CPU has; any other value is reported on stderr once
// and leaves the default.
Isa default_isa() {
  static const Isa chosen = [] {
    const Isa detected = detected_isa();
    const Isa preferred = detected == Isa::avx512 ? Isa::avx2 : detected;
    const char* env = std::getenv("AUTOREP_GATE_ISA");
    if (!env) return preferred;
    Isa want = preferred;
    if (parse_isa(env, &want) && static_cast<int>(want) <= static_cast<int>(detected)) return want;
    std::fprintf(stderr, "autorep: AUTOREP_GATE_ISA=%s is not avx512, avx2 or generic, or this CPU lacks it; "
                 "the gate kernels run their default build\n", env);
    return preferred;
  }();
  return chosen;
}

Isa isa() {
  const int forced = forced_isa.load(std::memory_order_relaxed);
  return forced < 0 ? default_isa() : static_cast<Isa>(forced);
}

}  // namespace

const char* gate_cpu_isa() {
  switch (isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

int64_t gate_cpu_stream_bytes() { return stream_bytes(); }

void gate_cpu_set_stream_bytes(int64_t bytes) { forced_stream_bytes.store(bytes < 0 ? -1 : bytes); }

bool gate_cpu_set_isa(const char* name) {
  const std::string n = name ? name : "";
  if (n.empty()) {
    forced_isa.store(-1);
    return true;
  }
  Isa want = Isa::generic;
  if (!parse_isa(n, &want) || static_cast<int>(want) > static_cast<int>(detected_isa())) return false;
  forced_isa.store(static_cast<int>(want));
  return true;
}

#ifdef AUTOREP_GATE_HAVE_X86
#define AUTOREP_GATE_CALL(fn, ...)                                   \
  switch (isa()) {                                                   \
    case Isa::avx512: return avx512::fn(__VA_ARGS__);                \
    case Isa::avx2: return avx2::fn(__VA_ARGS__);                    \
    default: return generic::fn(__VA_ARGS__);                        \
  }
#else
#define AUTOREP_GATE_CALL(fn, ...) return generic::fn(__VA_ARGS__)
#endif

void gate_forward_cpu(const GateProblem& pr, const float* x, const float* mask, const float* c0,
                      const float* c1, const float* c2, float* y, double* moments, GateLayout layout) {
  AUTOREP_GATE_CALL(forward_f, pr, x, mask, c0, c1, c2, y, moments, layout);
}
void gate_forward_cpu(const GateProblem& pr, const double* x, const double* mask, const double* c0,
                      const double* c1, const double* c2, double* y, double* moments,
                      GateLayout layout) {
  AUTOREP_GATE_CALL(forward_d, pr, x, mask, c0, c1, c2, y, moments, layout);
}
void gate_backward_cpu(const GateProblem& pr, const float* x, const float* g, const float* mask,
                       const float* c0, const float* c1, const float* c2, float* dx, float* g_mask,
                       float* dc, GateLayout layout) {
  AUTOREP_GATE_CALL(backward_f, pr, x, g, mask, c0, c1, c2, dx, g_mask, dc, layout);
}
void gate_backward_cpu(const GateProblem& pr, const double* x, const double* g, const double* mask,
                       const double* c0, const double* c1, const double* c2, double* dx,
                       double* g_mask, double* dc, GateLayout layout) {
  AUTOREP_GATE_CALL(backward_d, pr, x, g, mask, c0, c1, c2, dx, g_mask, dc, layout);
}

void gate_straight_through_cpu(const float* aux, float* g_mask, int64_t n) {
  AUTOREP_GATE_CALL(straight_through_f, aux, g_mask, n);
}
void gate_straight_through_cpu(const double* aux, double* g_mask, int64_t n) {
  AUTOREP_GATE_CALL(straight_through_d, aux, g_mask, n);
}

}  // namespace autorep::layers::kernels
