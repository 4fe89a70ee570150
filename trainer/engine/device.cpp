#include "trainer/engine/device.h"

#include <torch/torch.h>

#include <stdexcept>
#include <thread>

namespace autorep::trainer::engine {

int64_t configure_threads(int64_t threads) {
  int64_t n = threads > 0 ? threads : static_cast<int64_t>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  torch::set_num_threads(static_cast<int>(n));
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

}  // namespace autorep::trainer::engine
