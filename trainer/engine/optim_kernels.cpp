#include "trainer/engine/optim_kernels.h"

#include <cmath>

namespace autorep::trainer::engine::kernels {

template <typename T>
void adam_update(T* p, const T* grad, T* m, T* v, int64_t n, double beta1, double beta2, double weight_decay,
                 double sqrt_bc2, double eps, double step_size) {
  const T b1 = static_cast<T>(beta1), one_minus_b1 = static_cast<T>(1 - beta1);
  const T b2 = static_cast<T>(beta2), one_minus_b2 = static_cast<T>(1 - beta2);
  const T wd = static_cast<T>(weight_decay), root = static_cast<T>(sqrt_bc2), e = static_cast<T>(eps);
  const T neg_step = static_cast<T>(-step_size);
  const bool decay = weight_decay != 0;
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    if (decay) g = g + wd * p[i];
    const T mi = m[i] * b1 + one_minus_b1 * g;
    const T vi = v[i] * b2 + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] + neg_step * (mi / (std::sqrt(vi) / root + e));
  }
}

template void adam_update<float>(float*, const float*, float*, float*, int64_t, double, double, double, double, double,
                                 double);
template void adam_update<double>(double*, const double*, double*, double*, int64_t, double, double, double, double,
                                  double, double);

}  // namespace autorep::trainer::engine::kernels
