#include "trainer/engine/device.h"

#include <torch/torch.h>

#include <dlfcn.h>

#include <stdexcept>
#include <thread>

namespace autorep::trainer::engine {

int blas_single_threaded() {
  // The BLAS LibTorch was linked with, if it is OpenBLAS (Debian: the pthread build chosen by
  // the libblas.so.3 alternative), found by name so that no BLAS is linked here.
  using SetThreads = void (*)(int);
  using GetThreads = int (*)();
  auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  auto get = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (!set || !get) return 0;
  const int before = get();
  set(1);
  return before;
}

int64_t configure_threads(int64_t threads) {
  int64_t n = threads > 0 ? threads : static_cast<int64_t>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  torch::set_num_threads(static_cast<int>(n));
  blas_single_threaded();
  return n;
}

torch::Device resolve_device(const std::string& device) {
  if (device == "cpu") return torch::kCPU;
  if (device == "cuda") {
    if (!torch::cuda::is_available())
      throw std::runtime_error("--device cuda: no CUDA device is available (this LibTorch " +
                               std::string(torch::cuda::is_available() ? "has" : "may lack") + " CUDA support)");
    return torch::kCUDA;
  }
  if (device == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  throw std::runtime_error("device \"" + device + "\": expected auto, cpu or cuda");
}

void set_memory_format(torch::nn::Module& module, bool channels_last) {
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.dim() == 4 && !p.is_contiguous(format)) p.set_data(p.data().contiguous(format));
  }
}

bool is_channels_last(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) {
    if (p.dim() != 4) continue;
    const bool nchw = p.is_contiguous(), cl = p.is_contiguous(at::MemoryFormat::ChannelsLast);
    if (nchw != cl) return cl;  // both: a weight with one input channel (or 1x1 maps) says nothing
  }
  return false;
}

torch::Tensor in_format_of(const torch::nn::Module& module, const torch::Tensor& x) {
  if (x.dim() != 4 || !is_channels_last(module)) return x;
  return x.contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace autorep::trainer::engine
