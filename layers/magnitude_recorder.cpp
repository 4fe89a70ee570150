#include "layers/magnitude_recorder.h"

#include <torch/torch.h>

namespace autorep::layers {

MagnitudeRecorderImpl::MagnitudeRecorderImpl(std::vector<int64_t> shape) : shape_(std::move(shape)) {
  sum_abs_ = torch::zeros(shape_, torch::kDouble);
}

torch::Tensor MagnitudeRecorderImpl::forward(const torch::Tensor& x) {
  {
    torch::NoGradGuard no_grad;
    sum_abs_ += x.detach().abs().sum(0).to(torch::kCPU, torch::kDouble);
    samples_ += x.size(0);
  }
  return torch::relu(x);
}

torch::Tensor MagnitudeRecorderImpl::mean_magnitude() const {
  return samples_ > 0 ? sum_abs_ / static_cast<double>(samples_) : sum_abs_.clone();
}

int64_t MagnitudeRecorderImpl::kept_relus() const { return total_relus(); }
int64_t MagnitudeRecorderImpl::total_relus() const { return sum_abs_.numel(); }

ActivationFactory magnitude_recorder_factory() {
  return [](const std::string&, const std::vector<int64_t>& shape) {
    return torch::nn::AnyModule(MagnitudeRecorder(shape));
  };
}

}  // namespace autorep::layers
