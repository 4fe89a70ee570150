#include "trainer/engine/spike_guard.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace autorep::trainer::engine {

SpikeGuard::SpikeGuard(double factor, int64_t warmup, double decay, int64_t max_consecutive)
    : factor_(factor), warmup_(warmup), decay_(decay), max_consecutive_(max_consecutive) {}

bool SpikeGuard::skip(double loss) {
  if (!enabled()) return false;
  const bool spike = !std::isfinite(loss) || (accepted_ >= warmup_ && loss > factor_ * mean_);
  if (spike) {
    ++consecutive_;
    return true;
  }
  consecutive_ = 0;
  ++accepted_;
  const double w = std::max(1.0 - decay_, 1.0 / static_cast<double>(accepted_));
  mean_ += w * (loss - mean_);
  return false;
}

void SpikeGuard::reset_mean() {
  mean_ = 0.0;
  accepted_ = 0;
  consecutive_ = 0;
}

nlohmann::json SpikeGuard::state() const {
  return {{"mean", mean_}, {"accepted", accepted_}, {"consecutive", consecutive_}};
}

void SpikeGuard::load_state(const nlohmann::json& s) {
  mean_ = s.at("mean").get<double>();
  accepted_ = s.at("accepted").get<int64_t>();
  consecutive_ = s.at("consecutive").get<int64_t>();
}

BatchNormSnapshot::BatchNormSnapshot(torch::nn::Module& model) {
  for (const auto& item : model.named_buffers()) {
    const std::string& name = item.key();
    for (const char* suffix : {"running_mean", "running_var", "num_batches_tracked"}) {
      const std::string s(suffix);
      if (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
        buffers_.emplace_back(item.value(), torch::empty_like(item.value()));
        break;
      }
    }
  }
}

void BatchNormSnapshot::save() {
  torch::NoGradGuard no_grad;
  for (auto& [live, copy] : buffers_) copy.copy_(live);
}

void BatchNormSnapshot::restore() {
  torch::NoGradGuard no_grad;
  for (auto& [live, copy] : buffers_) live.copy_(copy);
}

}  // namespace autorep::trainer::engine
