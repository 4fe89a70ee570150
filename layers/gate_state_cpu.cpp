#include "layers/gate_state_cpu.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace autorep::layers::state_cpu {

bool applies(std::initializer_list<const torch::Tensor*> tensors, torch::ScalarType dtype) {
  if (dtype != torch::kFloat && dtype != torch::kDouble) return false;
  for (const auto* t : tensors) {
    if (!t->defined() || !t->device().is_cpu() || t->scalar_type() != dtype || !t->is_contiguous()) return false;
  }
  return true;
}

void blend_moments(const torch::Tensor& sums, int64_t n, double momentum, torch::Tensor& running_mean,
                   torch::Tensor& running_var) {
  const int64_t c = running_mean.numel();
  TORCH_CHECK(sums.scalar_type() == torch::kDouble && sums.is_contiguous() && sums.numel() == 2 * c,
              "gate: moments must be float64 [2, C]");
  const double* s = sums.data_ptr<double>();
  const double count = static_cast<double>(n);
  AT_DISPATCH_FLOATING_TYPES(running_mean.scalar_type(), "gate_blend_moments", [&] {
    scalar_t* rm = running_mean.data_ptr<scalar_t>();
    scalar_t* rv = running_var.data_ptr<scalar_t>();
    const auto keep = static_cast<scalar_t>(1 - momentum), take = static_cast<scalar_t>(momentum);
    for (int64_t j = 0; j < c; ++j) {
      const double mean = s[j] / count;
      const double var = std::max((s[c + j] - s[j] * mean) / (count - 1), 0.0);
      rm[j] = rm[j] * keep + static_cast<scalar_t>(mean) * take;
      rv[j] = rv[j] * keep + static_cast<scalar_t>(var) * take;
    }
  });
  running_mean.unsafeGetTensorImpl()->bump_version();
  running_var.unsafeGetTensorImpl()->bump_version();
}

void cap_c2(torch::Tensor& c2, const torch::Tensor& running_var, double scale) {
  const int64_t c = c2.numel();
  const double phi0 = 1.0 / std::sqrt(2.0 * M_PI);
  AT_DISPATCH_FLOATING_TYPES(c2.scalar_type(), "gate_cap_c2", [&] {
    scalar_t* w = c2.data_ptr<scalar_t>();
    const scalar_t* var = running_var.data_ptr<scalar_t>();
    for (int64_t j = 0; j < c; ++j) {
      const auto sigma = static_cast<scalar_t>(std::sqrt(std::max(static_cast<double>(var[j]), 1e-5)));
      const scalar_t limit = static_cast<scalar_t>(phi0) / (static_cast<scalar_t>(scale) * sigma);
      w[j] = std::max(std::min(w[j], limit), -limit);
    }
  });
  c2.unsafeGetTensorImpl()->bump_version();
}

void hysteresis(torch::Tensor& mask, const torch::Tensor& aux, double threshold) {
  const int64_t n = mask.numel();
  TORCH_CHECK(aux.numel() == n, "gate: aux and mask differ in size");
  AT_DISPATCH_FLOATING_TYPES(mask.scalar_type(), "gate_hysteresis", [&] {
    scalar_t* m = mask.data_ptr<scalar_t>();
    const scalar_t* a = aux.data_ptr<scalar_t>();
    const auto low = static_cast<scalar_t>(-threshold), high = static_cast<scalar_t>(threshold);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t down = a[i] > low ? scalar_t(1) : scalar_t(0);
      const scalar_t up = a[i] > high ? scalar_t(1) : scalar_t(0);
      m[i] = m[i] * down + (1 - m[i]) * up;
    }
  });
  mask.unsafeGetTensorImpl()->bump_version();
}

}  // namespace autorep::layers::state_cpu
