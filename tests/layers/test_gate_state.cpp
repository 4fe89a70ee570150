#include "tests/torch_catch.h"

#include <cmath>

#include "layers/gate_state_cpu.h"

namespace sc = autorep::layers::state_cpu;

// Each loop against the ATen expressions GateImpl uses on other devices (layers/gate.cpp).
TEST_CASE("the gate's CPU state loops compute what its ATen expressions compute", "[gate][state]") {
  torch::manual_seed(11);
  for (const auto dtype : {torch::kFloat, torch::kDouble}) {
    INFO("dtype " << dtype);
    const auto opt = torch::TensorOptions().dtype(dtype);
    const int64_t c = 37, n = 4096;
    // Running statistics from [Σx, Σx²] over n values.
    auto x = torch::randn({n, c}, torch::kDouble) * torch::rand({c}, torch::kDouble) * 3 + 0.5;
    const auto sums = torch::stack({x.sum(0), (x * x).sum(0)});
    auto mean = torch::randn({c}, opt), var = torch::rand({c}, opt) + 0.1;
    auto ref_mean = mean.clone(), ref_var = var.clone();
    const double momentum = 0.1;
    {
      const auto bm = sums[0] / n;
      const auto bv = ((sums[1] - sums[0] * bm) / (n - 1)).clamp_min(0);
      ref_mean.copy_(ref_mean * (1 - momentum) + bm.to(opt) * momentum);
      ref_var.copy_(ref_var * (1 - momentum) + bv.to(opt) * momentum);
    }
    CHECK(sc::applies({&mean, &var}, dtype));
    sc::blend_moments(sums, n, momentum, mean, var);
    CHECK(torch::equal(mean, ref_mean));
    CHECK(torch::equal(var, ref_var));

    // The curvature cap, with channels below and above their bound and a dead channel.
    auto running_var = torch::rand({c}, opt) * 4;
    running_var[3] = 0;
    auto c2 = torch::randn({c}, opt);
    const double scale = 2.0 * 2.5 * 0.5;
    auto ref = c2.clone();
    const auto c2_before = c2.clone();
    {
      const auto limit =
          (1.0 / std::sqrt(2.0 * M_PI)) / (scale * running_var.to(torch::kDouble).clamp_min(1e-5).sqrt().to(dtype));
      ref.copy_(torch::max(torch::min(ref, limit), -limit));
    }
    sc::cap_c2(c2, running_var, scale);
    CHECK(torch::equal(c2, ref));
    CHECK((c2 != c2_before).any().item<bool>());  // some channels were over their bound

    // Hysteresis: masks switch only past ±threshold.
    auto mask = (torch::rand({4, 5, 6}, opt) > 0.5).to(dtype);
    const auto aux = torch::randn({4, 5, 6}, opt) * 0.2;
    const double t = 0.1;
    const auto ref_mask = mask * (aux > -t).to(dtype) + (1 - mask) * (aux > t).to(dtype);
    sc::hysteresis(mask, aux, t);
    CHECK(torch::equal(mask, ref_mask));
  }
  // Only contiguous CPU tensors of the one dtype.
  const auto f = torch::zeros({3}), d = torch::zeros({3}, torch::kDouble), strided = torch::zeros({6}).slice(0, 0, 6, 2);
  CHECK_FALSE(sc::applies({&f, &d}, torch::kFloat));
  CHECK_FALSE(sc::applies({&f, &strided}, torch::kFloat));
  CHECK_FALSE(sc::applies({&f}, torch::kHalf));
}
