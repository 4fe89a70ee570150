#include "layers/bench_gate.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iomanip>
#include <stdexcept>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "layers/gate.h"
#include "layers/gate_function.h"
#include "layers/kernels/gate_kernels.h"

namespace autorep::layers {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void clear_grads(std::initializer_list<torch::Tensor> ts) {
  for (const auto& t : ts) t.mutable_grad() = torch::Tensor();
}

}  // namespace

int run_gate_bench(const GateBenchOptions& o, std::ostream& out) {
  if (o.shape.size() != 2 && o.shape.size() != 4) {
    throw std::runtime_error("bench gate: --shape must be N,C,H,W or N,F");
  }
  for (auto d : o.shape) {
    if (d <= 0) throw std::runtime_error("bench gate: --shape sizes must be positive");
  }
  if (o.device != "cpu" && o.device != "cuda") {
    throw std::runtime_error("bench gate: --device must be cpu or cuda, got '" + o.device + "'");
  }
  if (o.device == "cuda" && !torch::cuda::is_available()) {
    throw std::runtime_error("bench gate: --device cuda but no CUDA device is available");
  }
  if (o.iters < 1) throw std::runtime_error("bench gate: iters must be >= 1");
  torch::Dtype dtype = torch::kFloat;
  if (o.dtype == "bfloat16") {
    dtype = torch::kBFloat16;
  } else if (o.dtype == "float16") {
    dtype = torch::kHalf;
  } else if (o.dtype != "float32") {
    throw std::runtime_error("bench gate: --dtype must be float32, bfloat16 or float16, got '" + o.dtype + "'");
  }
  if (dtype != torch::kFloat && o.device != "cuda") {
    throw std::runtime_error("bench gate: --dtype " + o.dtype + " needs --device cuda (the CPU kernels are float32/float64)");
  }
  std::string allocator = "default";
#if defined(__GLIBC__)
  if (o.device == "cpu") {
    // glibc returns the heap top to the system once ~2 freed big buffers sit there, so whether
    // a variant's outputs land on fresh (page-faulting) memory depends on the order of its small
    // allocations, not on its kernels: a few 100 KB tensors flip it. Keep buffers up to 32 MiB
    // on a heap that is never trimmed, for every variant alike.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    allocator = "glibc heap, no trim";
  }
#endif
  const torch::Device dev(o.device == "cuda" ? torch::kCUDA : torch::kCPU);
  const auto opt = torch::TensorOptions().dtype(torch::kFloat).device(dev);
  const bool cuda = dev.is_cuda();

  std::vector<int64_t> sample(o.shape.begin() + 1, o.shape.end());
  GateOptions go(sample);
  go.granularity(parse_granularity(o.granularity, "--granularity"));
  Gate module(go);
  module->to(dev);
  module->train();
  {
    torch::NoGradGuard ng;
    module->mask().copy_(torch::rand_like(module->mask()) > 0.5);
  }
  const auto mshape = module->mask().sizes().vec();
  const int64_t C = sample[0];

  if (o.channels_last && o.shape.size() != 4)
    throw std::runtime_error("bench gate: --channels-last needs an N,C,H,W shape, got " +
                             std::to_string(o.shape.size()) + " dimensions");
  const auto format = o.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto x = torch::randn(o.shape, opt.dtype(dtype)).contiguous(format).requires_grad_(true);
  const auto g = torch::randn(o.shape, opt.dtype(dtype)).contiguous(format);
  auto aux = torch::rand(mshape, opt).requires_grad_(true);
  const auto mask = (torch::rand(mshape, opt) > 0.5).to(torch::kFloat);
  auto c0 = torch::full({C}, 0.2, opt).requires_grad_(true);
  auto c1 = torch::full({C}, 0.5, opt).requires_grad_(true);
  auto c2 = torch::full({C}, 2.0, opt).requires_grad_(true);
  auto dst = torch::empty_like(x);

  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };
  const double s1 = go.scale1(), s2 = go.scale2();
  std::vector<std::pair<std::string, std::function<void()>>> variants = {
      {"relu", [&] {
         torch::relu(x).backward(g);
         clear_grads({x});
       }},
      {"composite", [&] {
         // float32 coefficients promote a half-precision x: the reference's output is float32.
         const auto y = gate_composite(x, aux, mask, c0, c1, c2, s1, s2, 2);
         y.backward(g.to(y.scalar_type()));
         clear_grads({x, aux, c0, c1, c2});
       }},
      {"fused", [&] {
         gate_fused(x, aux, mask, c0, c1, c2, s1, s2, 2).backward(g);
         clear_grads({x, aux, c0, c1, c2});
       }},
      {"module", [&] {
         const auto y = module->forward(x);
         y.backward(g.to(y.scalar_type()));
         clear_grads({x});
         for (auto& p : module->parameters()) p.mutable_grad() = torch::Tensor();
       }},
      {"copy", [&] { dst.copy_(x.detach()); }},
  };
  std::vector<std::vector<double>> ms(variants.size());
  auto time_one = [&](size_t v, int it) {
    // Every variant starts from the same cache state: dL/dy and x just written (as a layer's
    // output is when the next layer's activation reads it), instead of whatever the previous
    // variant left behind.
    dst.copy_(g);
    dst.copy_(x.detach());
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    variants[v].second();
    sync();
    const auto t1 = std::chrono::steady_clock::now();
    if (it >= o.warmup) ms[v].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  };
  // The fast variants interleaved, so drift of the machine hits them alike. The composite
  // reference (tens of temporaries, ~40x slower) in a block of its own: between the others it
  // would leave them a cold cache and a fragmented heap, which is not what they cost.
  constexpr size_t kComposite = 1;
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    for (size_t v = 0; v < variants.size(); ++v) {
      if (v != kComposite) time_one(v, it);
    }
  }
  const int composite_iters = std::min(o.iters, 20);
  for (int it = 0; it < o.warmup + composite_iters; ++it) time_one(kComposite, it);
  std::vector<double> med, best;
  for (const auto& m : ms) {
    med.push_back(median(m));
    best.push_back(*std::min_element(m.begin(), m.end()));
  }

  const double bytes = static_cast<double>(x.numel()) * x.element_size();
  out << "gate bench: shape " << x.sizes() << (o.channels_last ? " channels_last" : "") << " " << o.dtype
      << " on " << o.device << ", granularity "
      << o.granularity << ", "
      << (cuda ? std::string("")
               : std::to_string(torch::get_num_threads()) + " threads, " + kernels::gate_cpu_isa() +
                     " kernels, outputs from " + std::to_string(kernels::gate_cpu_stream_bytes() >> 10) +
                     " KiB streamed past the caches (" + (bytes >= kernels::gate_cpu_stream_bytes() ? "this one" : "not this one") + "), ")
      << o.iters << " iterations (median; composite " << composite_iters
      << " in its own block, the others interleaved), allocator: " << allocator << "\n";
  out << std::fixed;
  const char* notes[] = {"torch::relu through autograd", "composite ATen reference",
                         "fused autograd function", "Gate module, training mode (+ running stats)",
                         "tensor copy of the same size"};
  for (size_t v = 0; v < variants.size(); ++v) {
    const double passes = variants[v].first == "copy" ? 2.0 : 5.0;
    out << "  " << std::left << std::setw(10) << variants[v].first << std::right << std::setw(9)
        << std::setprecision(3) << med[v] << " ms " << std::setw(8) << std::setprecision(1)
        << passes * bytes / (med[v] * 1e-3) / 1e9 << " GB/s  min " << std::setprecision(3) << best[v]
        << " ms  (" << notes[v] << ")\n";
  }
  const double fused_over_relu = med[2] / med[0];
  out << std::setprecision(3) << "fused/relu=" << fused_over_relu << " composite/fused=" << med[1] / med[2]
      << " module/relu=" << med[3] / med[0] << "  (from minima: fused/relu=" << best[2] / best[0]
      << " module/relu=" << best[3] / best[0] << ")\n";
  const auto gbps = [&](size_t v, double passes) { return passes * bytes / (med[v] * 1e-3) / 1e9; };
  out << std::setprecision(1) << "bandwidth: fused " << gbps(2, 5) << " GB/s, relu " << gbps(0, 5)
      << " GB/s, copy " << gbps(4, 2) << " GB/s (fused at " << std::setprecision(0)
      << 100 * gbps(2, 5) / gbps(4, 2) << "% of a copy's)\n";
  out << std::setprecision(2) << "gate_over_relu=" << fused_over_relu << "\n";
  return 0;
}

}  // namespace autorep::layers
