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

StepSnapshot::StepSnapshot(torch::nn::Module& model) {
  auto last_name = [](const std::string& name) {
    const auto dot = name.rfind('.');
    return dot == std::string::npos ? name : name.substr(dot + 1);
  };
  for (const auto& item : model.named_buffers()) {
    const std::string last = last_name(item.key());
    if (last == "running_mean" || last == "running_var" || last == "running_range" || last == "num_batches_tracked" || last == "step")
      buffers_.emplace_back(item.value(), torch::empty_like(item.value()));
  }
  for (const auto& item : model.named_parameters()) {
    const std::string last = last_name(item.key());
    if (last == "c0" || last == "c1" || last == "c2")
      buffers_.emplace_back(item.value(), torch::empty_like(item.value()));
  }
}

void StepSnapshot::save() {
  torch::NoGradGuard no_grad;
  for (auto& [live, copy] : buffers_) copy.copy_(live);
}

void StepSnapshot::restore() {
  torch::NoGradGuard no_grad;
  for (auto& [live, copy] : buffers_) live.copy_(copy);
}

}  // namespace autorep::trainer::engine
