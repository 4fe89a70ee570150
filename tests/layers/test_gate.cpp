#include "tests/torch_catch.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "layers/curvature.h"
#include "layers/gate.h"
#include "layers/gate_function.h"
#include "layers/kernels/gate_kernels.h"
#include "layers/site.h"

using namespace autorep::layers;

namespace {

struct GateInputs {
  torch::Tensor x, aux, mask, c0, c1, c2, g;
};

std::vector<int64_t> mask_shape(const std::vector<int64_t>& xshape, const std::string& gran) {
  if (gran == "pixel") return std::vector<int64_t>(xshape.begin() + 1, xshape.end());
  if (gran == "channel") return {xshape[1]};
  return {1};
}

GateInputs make_inputs(const std::vector<int64_t>& xshape, const std::string& gran,
                       torch::Dtype dtype) {
  const auto o = torch::TensorOptions().dtype(dtype);
  const auto ms = mask_shape(xshape, gran);
  const int64_t c = xshape[1];
  GateInputs in;
  in.x = torch::randn(xshape, o).requires_grad_(true);
  in.aux = torch::randn(ms, o).requires_grad_(true);
  in.mask = (torch::rand(ms, o) > 0.5).to(dtype);
  in.mask.view(-1)[0] = 0;  // at least one polynomial entry (a layer mask is then all 0)
  in.c0 = torch::randn({c}, o).requires_grad_(true);
  in.c1 = torch::randn({c}, o).requires_grad_(true);
  in.c2 = torch::randn({c}, o).requires_grad_(true);
  in.g = torch::randn(xshape, o);
  return in;
}

struct GateResult {
  torch::Tensor y, dx, daux, dc0, dc1, dc2;
};

GateResult run_gate(const GateInputs& in, bool fused, int64_t degree, double s1 = 1.0, double s2 = 0.1) {
  auto y = fused ? gate_fused(in.x, in.aux, in.mask, in.c0, in.c1, in.c2, s1, s2, degree)
                 : gate_composite(in.x, in.aux, in.mask, in.c0, in.c1, in.c2, s1, s2, degree);
  std::vector<torch::Tensor> wrt{in.x, in.aux, in.c0, in.c1};
  if (degree == 2) wrt.push_back(in.c2);
  auto grads = torch::autograd::grad({y}, wrt, {in.g}, /*retain_graph=*/false, /*create_graph=*/false,
                                     /*allow_unused=*/true);
  GateResult r{y.detach(), grads[0], grads[1], grads[2], grads[3], degree == 2 ? grads[4] : torch::Tensor()};
  return r;
}

bool close(const torch::Tensor& a, const torch::Tensor& b, double rtol, double atol) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  return a.sizes() == b.sizes() && torch::allclose(a, b, rtol, atol);
}

// The fused gate's output and every gradient against the reference's.
void check_same(const GateResult& f, const GateResult& c, double rtol, double atol) {
  CHECK(close(f.y, c.y, rtol, atol));
  CHECK(close(f.dx, c.dx, rtol, atol));
  CHECK(close(f.daux, c.daux, rtol, atol));
  CHECK(close(f.dc0, c.dc0, rtol, atol));
  CHECK(close(f.dc1, c.dc1, rtol, atol));
  CHECK(close(f.dc2, c.dc2, rtol, atol));
}

// Weights of a Gauss–Hermite-free quadrature: Simpson's rule for E[f(X)], X ~ N(mu, sigma^2),
// over mu ± 12 sigma (the tail beyond is below 1e-30).
double normal_expectation(double mu, double sigma, const std::function<double(double)>& f) {
  const int n = 200000;  // even
  const double a = mu - 12 * sigma, b = mu + 12 * sigma, h = (b - a) / n;
  double s = 0;
  for (int i = 0; i <= n; ++i) {
    const double x = a + i * h;
    const double w = (i == 0 || i == n) ? 1 : (i % 2 ? 4 : 2);
    const double z = (x - mu) / sigma;
    s += w * f(x) * std::exp(-0.5 * z * z) / (sigma * std::sqrt(2 * M_PI));
  }
  return s * h / 3;
}

// Runs `body` under every CPU code path this build and CPU have (ISA) at 1 and 3 threads, with
// outputs stored through the caches and streamed past them (every size), then restores the
// defaults.
void for_each_cpu_path(const std::function<void(const char* isa, int threads, bool streamed)>& body) {
  const int threads = torch::get_num_threads();
  for (const char* isa : {"generic", "avx2", "avx512"}) {
    if (!kernels::gate_cpu_set_isa(isa)) continue;  // not on this CPU / build
    for (int t : {1, 3}) {
      torch::set_num_threads(t);
      for (bool streamed : {false, true}) {
        kernels::gate_cpu_set_stream_bytes(streamed ? 0 : std::numeric_limits<int64_t>::max());
        body(isa, t, streamed);
      }
    }
  }
  CHECK(kernels::gate_cpu_set_isa(""));
  kernels::gate_cpu_set_stream_bytes(-1);
  torch::set_num_threads(threads);
}

}  // namespace

TEST_CASE("fused gate matches the composite reference: outputs and every gradient", "[gate][fused]") {
  torch::manual_seed(1);
  const std::vector<std::vector<int64_t>> shapes = {
      {3, 4, 5, 6},    // batch blocks > 1 (few channels)
      {2, 64, 3, 3},   // one batch block per channel
      {4, 2, 5, 7},    // positions not a multiple of the lane width
      {2, 3, 8, 8},    // whole lane blocks
      {5, 7},          // linear
      {3, 300},        // linear, two feature blocks
      {1, 1, 1, 1}};
  for (auto dtype : {torch::kDouble, torch::kFloat}) {
    const double rtol = dtype == torch::kDouble ? 1e-6 : 1e-4;
    const double atol = dtype == torch::kDouble ? 1e-9 : 1e-4;
    for (const auto& shape : shapes) {
      for (std::string gran : {"pixel", "channel", "layer"}) {
        for (int64_t degree : {1, 2}) {
          CAPTURE(shape, gran, degree, dtype);
          const auto in = make_inputs(shape, gran, dtype);
          const auto f = run_gate(in, true, degree, 0.7, 0.3);
          const auto c = run_gate(in, false, degree, 0.7, 0.3);
          check_same(f, c, rtol, atol);
          // The polynomial part must matter for this to mean anything.
          CHECK_FALSE(torch::allclose(f.y, torch::relu(in.x.detach())));
        }
      }
    }
  }
}

TEST_CASE("every CPU code path (ISA, thread count) gives the composite's results", "[gate][fused]") {
  torch::manual_seed(11);
  for_each_cpu_path([](const char* isa, int t, bool streamed) {
    // {4, 37} and {9, 300}: N×F rows of odd length (streamed stores only where a row is aligned).
    for (std::vector<int64_t> shape : {std::vector<int64_t>{5, 4, 3, 7}, std::vector<int64_t>{2, 5, 6, 6},
                                       std::vector<int64_t>{1, 3, 9, 9}, std::vector<int64_t>{4, 37},
                                       std::vector<int64_t>{9, 300}}) {
      for (std::string gran : {"pixel", "channel", "layer"}) {
        for (auto dtype : {torch::kDouble, torch::kFloat}) {
          CAPTURE(isa, t, streamed, shape, gran, dtype, kernels::gate_cpu_isa());
          REQUIRE(std::string(kernels::gate_cpu_isa()) == isa);
          const double rtol = dtype == torch::kDouble ? 1e-6 : 1e-4;
          const double atol = dtype == torch::kDouble ? 1e-9 : 1e-4;
          const auto in = make_inputs(shape, gran, dtype);
          torch::Tensor moments;
          auto y = gate_fused(in.x, in.aux, in.mask, in.c0, in.c1, in.c2, 1.0, 0.1, 2, &moments);
          const auto f = run_gate(in, true, 2);
          const auto c = run_gate(in, false, 2);
          check_same(f, c, rtol, atol);
          std::vector<int64_t> dims{0};
          for (size_t d = 2; d < shape.size(); ++d) dims.push_back(static_cast<int64_t>(d));
          const double mtol = dtype == torch::kDouble ? 1e-9 : 1e-4;
          CHECK(torch::allclose(moments[0], in.x.detach().to(torch::kDouble).sum(dims), mtol, mtol));
        }
      }
    }
  });
  CHECK_FALSE(kernels::gate_cpu_set_isa("neon"));
}

TEST_CASE("outputs are streamed past the caches from a size that can be set and reset", "[gate][fused]") {
  const int64_t fallback = kernels::gate_cpu_stream_bytes();
  CHECK(fallback > 0);
  kernels::gate_cpu_set_stream_bytes(12345);
  CHECK(kernels::gate_cpu_stream_bytes() == 12345);
  kernels::gate_cpu_set_stream_bytes(-1);
  CHECK(kernels::gate_cpu_stream_bytes() == fallback);
  // The same bits either way, at sizes where both kinds of store run (aligned rows, threads);
  // N×F inputs also walk a different number of rows per pass when streaming (4, else 8), with
  // 37 rows leaving a remainder either way.
  torch::manual_seed(5);
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{4, 8, 16, 16}, {37, 64}}) {
    for (const char* gran : {"pixel", "layer"}) {
      CAPTURE(shape, gran);
      const auto in = make_inputs(shape, gran, torch::kFloat);
      kernels::gate_cpu_set_stream_bytes(std::numeric_limits<int64_t>::max());
      const auto plain = run_gate(in, true, 2);
      kernels::gate_cpu_set_stream_bytes(0);
      const auto streamed = run_gate(in, true, 2);
      kernels::gate_cpu_set_stream_bytes(-1);
      CHECK(torch::equal(plain.y, streamed.y));
      CHECK(torch::equal(plain.dx, streamed.dx));
      CHECK(torch::equal(plain.daux, streamed.daux));
      CHECK(torch::equal(plain.dc0, streamed.dc0));
      CHECK(torch::equal(plain.dc1, streamed.dc1));
      CHECK(torch::equal(plain.dc2, streamed.dc2));
    }
  }
}

TEST_CASE("STE gradient of aux is softplus(aux) * sum_batch (relu(x) - p(x)) * dL/dy", "[gate][ste]") {
  torch::manual_seed(2);
  const auto in = make_inputs({4, 3, 2, 5}, "pixel", torch::kDouble);
  const double s1 = 1.0, s2 = 0.1;
  const auto r = run_gate(in, true, 2, s1, s2);
  const auto x = in.x.detach();
  const auto v = [](const torch::Tensor& t) { return t.detach().view({1, 3, 1, 1}); };
  const auto p = v(in.c0) + s1 * v(in.c1) * x + s2 * v(in.c2) * x * x;
  const auto expected = torch::softplus(in.aux.detach()) * ((torch::relu(x) - p) * in.g).sum(0);
  CHECK(torch::allclose(r.daux, expected, 1e-10, 1e-12));
  // The STE derivative of a channel mask also sums over positions.
  const auto inc = make_inputs({4, 3, 2, 5}, "channel", torch::kDouble);
  const auto rc = run_gate(inc, true, 2, s1, s2);
  const auto xc = inc.x.detach();
  const auto pc = v(inc.c0) + s1 * v(inc.c1) * xc + s2 * v(inc.c2) * xc * xc;
  const auto expected_c = torch::softplus(inc.aux.detach()) * ((torch::relu(xc) - pc) * inc.g).sum({0, 2, 3});
  CHECK(torch::allclose(rc.daux, expected_c, 1e-10, 1e-12));
}

TEST_CASE("the CPU straight-through factor is softplus(aux) to about an ulp, NaN and infinities included",
          "[gate][ste]") {
  // Long enough for the parallel split and a vector tail; values from deep underflow of exp to
  // where softplus(a) = a.
  const int64_t n = 100003;
  const auto base = torch::linspace(-750, 750, n, torch::kDouble);
  for_each_cpu_path([&](const char* isa, int t, bool) {
    for (auto dtype : {torch::kFloat, torch::kDouble}) {
      CAPTURE(isa, t, dtype);
      auto aux = base.to(dtype);
      aux[0] = 0.0;
      aux[1] = -1e-30;
      aux[2] = 1e-30;
      aux[3] = std::numeric_limits<double>::quiet_NaN();
      aux[4] = std::numeric_limits<double>::infinity();
      aux[5] = -std::numeric_limits<double>::infinity();
      auto gm = torch::full({n}, 3.0, torch::TensorOptions().dtype(dtype));
      AT_DISPATCH_FLOATING_TYPES(dtype, "test", [&] {
        kernels::gate_straight_through_cpu(aux.data_ptr<scalar_t>(), gm.data_ptr<scalar_t>(), n);
      });
      const double ulp = dtype == torch::kFloat ? 6e-8 : 1.2e-16;
      const auto a = aux.to(torch::kDouble);
      const auto got = gm.to(torch::kDouble);
      CHECK(std::isnan(got[3].item<double>()));
      CHECK(got[4].item<double>() == std::numeric_limits<double>::infinity());
      CHECK(got[5].item<double>() == 0.0);
      int bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (i >= 3 && i <= 5) continue;
        const long double v = a[i].item<double>();
        const long double want = 3 * ((v > 0 ? v : 0) + std::log1p(std::exp(-std::fabs(v))));
        const long double err = std::fabs(got[i].item<double>() - want);
        // A few ulp of the value; below a = -87 (float) or -708 (double), where exp(a) leaves the
        // type's normal range, the factor is 0.
        const long double tiny = 3 * (dtype == torch::kFloat ? std::exp(-87.0L) : std::exp(-708.0L));
        if (err > 4 * ulp * want && err > tiny) ++bad;
      }
      CHECK(bad == 0);
    }
  });
}

TEST_CASE("composite and fused gates agree with central differences away from the kink", "[gate][gradcheck]") {
  torch::manual_seed(3);
  for (bool fused : {false, true}) {
    for (std::string gran : {"pixel", "channel", "layer"}) {
      CAPTURE(fused, gran);
      auto in = make_inputs({2, 3, 2, 2}, gran, torch::kDouble);
      {
        torch::NoGradGuard ng;
        // keep |x| > 0.05 so that +-eps never crosses the ReLU kink
        in.x.copy_(torch::sign(in.x) * (in.x.abs() + 0.05));
        if (gran == "layer") in.mask.fill_(0);
        if (gran == "pixel") in.mask.copy_(torch::arange(12).view({3, 2, 2}).remainder(2).to(torch::kDouble));
      }
      const auto w = torch::randn(in.x.sizes(), torch::kDouble);
      auto loss = [&](const torch::Tensor& x, const torch::Tensor& c0, const torch::Tensor& c1,
                      const torch::Tensor& c2) {
        auto y = fused ? gate_fused(x, in.aux, in.mask, c0, c1, c2, 0.9, 0.2, 2)
                       : gate_composite(x, in.aux, in.mask, c0, c1, c2, 0.9, 0.2, 2);
        return (y * w).sum();
      };
      const auto grads = torch::autograd::grad({loss(in.x, in.c0, in.c1, in.c2)}, {in.x, in.c0, in.c1, in.c2});
      const double eps = 1e-6;
      torch::NoGradGuard ng;
      std::vector<torch::Tensor> vars{in.x.detach().clone(), in.c0.detach().clone(), in.c1.detach().clone(),
                                      in.c2.detach().clone()};
      for (size_t k = 0; k < vars.size(); ++k) {
        auto flat = vars[k].view(-1);
        auto fd = torch::empty_like(flat);
        for (int64_t i = 0; i < flat.numel(); ++i) {
          const double orig = flat[i].item<double>();
          flat[i] = orig + eps;
          const double lp = loss(vars[0], vars[1], vars[2], vars[3]).item<double>();
          flat[i] = orig - eps;
          const double lm = loss(vars[0], vars[1], vars[2], vars[3]).item<double>();
          flat[i] = orig;
          fd[i] = (lp - lm) / (2 * eps);
        }
        CAPTURE(k);
        CHECK(torch::allclose(grads[k].view(-1), fd, 1e-5, 1e-7));
      }
    }
  }
}

TEST_CASE("fused gate refuses double backward", "[gate][fused]") {
  const auto in = make_inputs({2, 3, 4, 4}, "pixel", torch::kDouble);
  auto y = gate_fused(in.x, in.aux, in.mask, in.c0, in.c1, in.c2, 1.0, 0.1, 2);
  CHECK_THROWS_WITH(torch::autograd::grad({y.sum()}, {in.x}, {}, true, /*create_graph=*/true),
                    Catch::Contains("double backward"));
}

TEST_CASE("channels_last inputs run without a copy, keep their format and match the composite (every CPU path)",
          "[gate][fused]") {
  torch::manual_seed(12);
  for_each_cpu_path([](const char* isa, int t, bool streamed) {
    // 75 and 162 rows: row chunks end inside a thread's block and inside a sample.
    for (std::vector<int64_t> shape : {std::vector<int64_t>{5, 4, 3, 7}, std::vector<int64_t>{1, 3, 9, 9},
                                       std::vector<int64_t>{3, 70, 5, 5}, std::vector<int64_t>{2, 16, 9, 9},
                                       std::vector<int64_t>{8, 16, 28, 28}}) {
      for (std::string gran : {"pixel", "channel", "layer"}) {
        for (auto dtype : {torch::kDouble, torch::kFloat}) {
          CAPTURE(isa, t, streamed, shape, gran, dtype);
          const double rtol = dtype == torch::kDouble ? 1e-6 : 1e-4;
          const double atol = dtype == torch::kDouble ? 1e-9 : 1e-4;
          const auto in = make_inputs(shape, gran, dtype);
          GateInputs cl = in;
          cl.x = in.x.detach().contiguous(at::MemoryFormat::ChannelsLast).requires_grad_(true);
          cl.g = in.g.contiguous(at::MemoryFormat::ChannelsLast);
          REQUIRE_FALSE(cl.x.is_contiguous());
          torch::Tensor moments;
          {
            torch::NoGradGuard ng;
            const auto y = gate_fused(cl.x, in.aux, in.mask, in.c0, in.c1, in.c2, 1.0, 0.1, 2, &moments);
            CHECK(y.is_contiguous(at::MemoryFormat::ChannelsLast));
          }
          const auto f = run_gate(cl, true, 2);
          const auto c = run_gate(in, false, 2);
          CHECK(f.dx.is_contiguous(at::MemoryFormat::ChannelsLast));
          check_same(f, c, rtol, atol);
          const auto xd = in.x.detach().to(torch::kDouble);
          CHECK(torch::allclose(moments[0], xd.sum({0, 2, 3}), rtol, atol));
          CHECK(torch::allclose(moments[1], (xd * xd).sum({0, 2, 3}), rtol, atol));
        }
      }
    }
  });
}

TEST_CASE("fused forward returns per-channel moments of x from the same pass", "[gate][fused]") {
  torch::manual_seed(4);
  for (std::vector<int64_t> shape : {std::vector<int64_t>{5, 3, 4, 7}, std::vector<int64_t>{6, 9}}) {
    const auto in = make_inputs(shape, "pixel", torch::kFloat);
    torch::Tensor moments;
    gate_fused(in.x, in.aux, in.mask, in.c0, in.c1, in.c2, 1.0, 0.1, 2, &moments);
    std::vector<int64_t> dims{0};
    for (size_t d = 2; d < shape.size(); ++d) dims.push_back(static_cast<int64_t>(d));
    const auto xd = in.x.detach().to(torch::kDouble);
    REQUIRE(moments.sizes() == torch::IntArrayRef({2, shape[1]}));
    CHECK(torch::allclose(moments[0], xd.sum(dims), 1e-5, 1e-4));
    CHECK(torch::allclose(moments[1], (xd * xd).sum(dims), 1e-5, 1e-4));
  }
}

TEST_CASE("hysteresis: a kept ReLU drops only below -t, a dropped one returns only above +t", "[gate][hysteresis]") {
  const double t = 0.003;
  const std::vector<double> aux_values{-1.0, -0.0031, -0.003, -0.002, 0.0, 0.002, 0.003, 0.0031, 1.0};
  const int64_t k = static_cast<int64_t>(aux_values.size());
  torch::nn::Sequential model(Gate(GateOptions({2 * k})), torch::nn::Identity());
  auto gate = gates(*model).at(0);
  {
    torch::NoGradGuard ng;
    auto aux = torch::tensor(aux_values, torch::kFloat);
    gate->aux().copy_(torch::cat({aux, aux}));
    gate->mask().copy_(torch::cat({torch::ones({k}), torch::zeros({k})}));
  }
  hysteresis_update(*model, t);
  const auto m = gate->mask();
  for (int64_t i = 0; i < k; ++i) {
    const float a = static_cast<float>(aux_values[i]);
    CAPTURE(aux_values[i]);
    CHECK(m[i].item<float>() == (a > -static_cast<float>(t) ? 1.f : 0.f));       // was kept
    CHECK(m[k + i].item<float>() == (a > static_cast<float>(t) ? 1.f : 0.f));     // was dropped
  }
  CHECK(m[0].item<float>() == 0.f);
  CHECK(m[3].item<float>() == 1.f);   // -0.002 within the band: stays kept
  CHECK(m[k + 5].item<float>() == 0.f);  // +0.002 within the band: stays dropped
  CHECK(m[k + 8].item<float>() == 1.f);

  // Frozen masks do not move.
  const auto before = m.clone();
  {
    torch::NoGradGuard ng;
    gate->aux().fill_(-1);
  }
  set_frozen(*model, true);
  hysteresis_update(*model);
  CHECK(torch::equal(gate->mask(), before));
  set_frozen(*model, false);
  hysteresis_update(*model);
  CHECK(gate->mask().sum().item<float>() == 0.f);
}

TEST_CASE("DaPa closed form is the least-squares fit of relu under N(mu, sigma^2)", "[gate][dapa]") {
  const std::vector<std::pair<double, double>> cases{{0.0, 1.0}, {1.0, 0.5}, {-1.0, 2.0}, {0.3, 3.0}, {-2.0, 0.7}};
  for (auto [mu, sigma] : cases) {
    for (int64_t degree : {1, 2}) {
      CAPTURE(mu, sigma, degree);
      const int k = static_cast<int>(degree) + 1;
      // Normal equations: E[x^i x^j] w = E[relu(x) x^i].
      auto gram = torch::empty({k, k}, torch::kDouble);
      auto rhs = torch::empty({k, 1}, torch::kDouble);
      for (int i = 0; i < k; ++i) {
        for (int j = 0; j < k; ++j) {
          gram[i][j] = normal_expectation(mu, sigma, [&](double x) { return std::pow(x, i + j); });
        }
        rhs[i][0] = normal_expectation(mu, sigma, [&](double x) { return std::max(x, 0.0) * std::pow(x, i); });
      }
      const auto w = torch::linalg_solve(gram, rhs).view(-1);
      const auto f = dapa_fit(torch::tensor({mu}, torch::kDouble), torch::tensor({sigma}, torch::kDouble), degree);
      CHECK(f.w0.item<double>() == Approx(w[0].item<double>()).epsilon(1e-7).margin(1e-9));
      CHECK(f.w1.item<double>() == Approx(w[1].item<double>()).epsilon(1e-7).margin(1e-9));
      CHECK(f.w2.item<double>() == Approx(degree == 2 ? w[2].item<double>() : 0.0).epsilon(1e-7).margin(1e-9));
    }
  }
}

TEST_CASE("DaPa refit stores exact coefficients (std) or the reference's scaled ones (var)", "[gate][dapa]") {
  GateOptions o({2, 3, 3});
  o.scale1(0.5).scale2(0.2);
  o.dapa().sigma_scale(1);
  Gate std_gate(o);
  o.dapa().sigma_scale(3);
  Gate wide_gate(o);
  o.dapa().sigma("var").var_floor(0.5).w0_div(5).w2_div(10);
  Gate var_gate(o);
  const auto mean = torch::tensor({0.4, -1.2});
  const auto var = torch::tensor({2.0, 0.1});
  for (Gate* g : {&std_gate, &wide_gate, &var_gate}) {
    torch::NoGradGuard ng;
    (*g)->running_mean().copy_(mean);
    (*g)->running_var().copy_(var);
    (*g)->refit();
  }
  const auto md = mean.to(torch::kDouble), vd = var.to(torch::kDouble);
  const auto fs = dapa_fit(md, vd.sqrt(), 2);
  CHECK(torch::allclose(std_gate->c0().to(torch::kDouble), fs.w0, 1e-5, 1e-7));
  CHECK(torch::allclose(0.5 * std_gate->c1().to(torch::kDouble), fs.w1, 1e-5, 1e-7));
  CHECK(torch::allclose(0.2 * std_gate->c2().to(torch::kDouble), fs.w2, 1e-5, 1e-7));
  // sigma_scale k: the fit under N(mean, (k sigma)^2).
  const auto fw = dapa_fit(md, 3 * vd.sqrt(), 2);
  CHECK(torch::allclose(wide_gate->c0().to(torch::kDouble), fw.w0, 1e-5, 1e-7));
  CHECK(torch::allclose(0.5 * wide_gate->c1().to(torch::kDouble), fw.w1, 1e-5, 1e-7));
  CHECK(torch::allclose(0.2 * wide_gate->c2().to(torch::kDouble), fw.w2, 1e-5, 1e-7));
  const auto fv = dapa_fit(md, vd.clamp_min(0.5), 2);
  CHECK(torch::allclose(var_gate->c0().to(torch::kDouble), fv.w0 / 5, 1e-5, 1e-7));
  CHECK(torch::allclose(var_gate->c1().to(torch::kDouble), fv.w1 / 0.5, 1e-5, 1e-7));
  CHECK(torch::allclose(var_gate->c2().to(torch::kDouble), fv.w2 / 10, 1e-5, 1e-7));

  // The initial coefficients are the fit of the N(0, 1) prior (widened by the default k = 3).
  Gate fresh(GateOptions({3}));
  const auto f01 = dapa_fit(torch::zeros({3}, torch::kDouble), 3 * torch::ones({3}, torch::kDouble), 2);
  CHECK(torch::allclose(fresh->c0().to(torch::kDouble), f01.w0, 1e-6, 1e-7));
  CHECK(torch::allclose(0.1 * fresh->c2().to(torch::kDouble), f01.w2, 1e-6, 1e-7));
}

TEST_CASE("running statistics and the step counter move only in training mode", "[gate][dapa]") {
  torch::manual_seed(5);
  for (bool fused : {true, false}) {
    CAPTURE(fused);
    GateOptions o({3, 4, 4});
    o.fused(fused);
    Gate gate(o);
    const auto x = torch::randn({6, 3, 4, 4}) * 2 + 1;
    gate->eval();
    gate->forward(x);
    CHECK(torch::equal(gate->running_mean(), torch::zeros({3})));
    CHECK(torch::equal(gate->running_var(), torch::ones({3})));
    CHECK(gate->step() == 0);
    gate->train();
    gate->forward(x);
    const auto xd = x.to(torch::kDouble);
    const auto bm = xd.mean({0, 2, 3});
    const auto bv = xd.var({0, 2, 3}, /*unbiased=*/true);
    CHECK(torch::allclose(gate->running_mean().to(torch::kDouble), 0.1 * bm, 1e-5, 1e-6));
    CHECK(torch::allclose(gate->running_var().to(torch::kDouble), 0.9 + 0.1 * bv, 1e-5, 1e-6));
    CHECK(gate->step() == 1);
  }
}

TEST_CASE("DaPa refits on schedule, before the step's graph, and optimiser state can be reset", "[gate][dapa]") {
  torch::manual_seed(6);
  GateOptions o({2, 3, 3});
  o.dapa().refit_every(2).refit_until(5);
  Gate gate(o);
  gate->train();
  torch::optim::Adam opt(coefficient_parameters(*gate), torch::optim::AdamOptions(1e-2));
  std::vector<int64_t> refit_steps;
  for (int64_t k = 0; k < 7; ++k) {
    const auto mean_before = gate->running_mean().clone();
    const auto var_before = gate->running_var().clone();
    opt.zero_grad();
    auto y = gate->forward(torch::randn({4, 2, 3, 3}) * 3 + 2);
    if (gate->refitted_last_step()) {
      refit_steps.push_back(k);
      const auto f = dapa_fit(mean_before.to(torch::kDouble), 3 * var_before.to(torch::kDouble).sqrt(), 2);
      CHECK(torch::allclose(gate->c1().to(torch::kDouble), f.w1, 1e-5, 1e-6));
      REQUIRE(refitted_coefficients(*gate).size() == 3);
      const auto n_before = opt.state().size();
      reset_optimizer_state(opt, refitted_coefficients(*gate));
      CHECK(opt.state().size() + 3 == n_before);
    } else {
      CHECK(refitted_coefficients(*gate).empty());
    }
    y.square().sum().backward();  // must not trip over the refit (no in-place change after use)
    opt.step();
    CHECK(opt.state().size() == 3);
  }
  CHECK((refit_steps == std::vector<int64_t>{2, 4}));
  CHECK(gate->refit_count() == 2);
  CHECK(gate->step() == 7);
}

TEST_CASE("save/load keeps masks, aux, coefficients, running statistics and the step", "[gate][serialize]") {
  torch::manual_seed(7);
  auto make = [] {
    GateOptions a({3, 4, 4});
    GateOptions b({3});
    b.granularity(Granularity::Channel);
    return torch::nn::Sequential(Gate(a), torch::nn::Flatten(), torch::nn::Linear(48, 3), Gate(b));
  };
  auto model = make();
  model->train();
  for (int i = 0; i < 3; ++i) model->forward(torch::randn({5, 3, 4, 4}) + 0.5);
  {
    torch::NoGradGuard ng;
    for (const auto& g : gates(*model)) {
      g->mask().copy_(torch::rand_like(g->mask()) > 0.5);
      g->aux().normal_();
      g->c0().normal_();
      g->c2().normal_();
    }
  }
  std::stringstream buf;
  torch::save(model, buf);
  auto loaded = make();
  REQUIRE(gates(*loaded).at(0)->step() == 0);  // a cached step must not survive the load
  torch::load(loaded, buf);
  const auto a = model->named_buffers(), b = loaded->named_buffers();
  REQUIRE(a.size() == b.size());
  REQUIRE(a.size() == 2 * 5);  // mask, running_mean, running_var, running_range, step per gate
  for (const auto& item : a) {
    CAPTURE(item.key());
    CHECK(torch::equal(item.value(), b[item.key()]));
  }
  for (const auto& item : model->named_parameters()) {
    CAPTURE(item.key());
    CHECK(torch::equal(item.value(), loaded->named_parameters()[item.key()]));
  }
  const auto ga = gates(*model), gb = gates(*loaded);
  REQUIRE(gb.size() == 2);
  CHECK(gb[0]->step() == 3);
  CHECK(gb[0]->kept_relus() == ga[0]->kept_relus());
  CHECK_FALSE(torch::equal(gb[0]->running_mean(), torch::zeros({3})));
}

namespace {
// A tiny model built from an activation factory, as the models of trainer/ are.
struct TinyNetImpl : torch::nn::Module {
  TinyNetImpl(const ActivationFactory& act) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).padding(1)));
    act1 = act("act1", {4, 6, 6});
    register_module("act1", act1.ptr());
    fc = register_module("fc", torch::nn::Linear(4 * 36, 5));
    act2 = act("act2", {5});
    register_module("act2", act2.ptr());
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = act1.forward(conv->forward(x)).flatten(1);
    return act2.forward(fc->forward(h));
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::Linear fc{nullptr};
  torch::nn::AnyModule act1, act2;
};
TORCH_MODULE(TinyNet);
}  // namespace

TEST_CASE("a gated model with every mask 1 gives exactly the plain ReLU model's outputs", "[gate]") {
  torch::manual_seed(8);
  TinyNet plain(relu_factory());
  for (std::string gran : {"pixel", "channel", "layer"}) {
    for (bool fused : {true, false}) {
      CAPTURE(gran, fused);
      GateOptions proto;
      proto.granularity(parse_granularity(gran)).fused(fused);
      TinyNet gated(gate_factory(proto));
      {
        torch::NoGradGuard ng;
        gated->conv->weight.copy_(plain->conv->weight);
        gated->conv->bias.copy_(plain->conv->bias);
        gated->fc->weight.copy_(plain->fc->weight);
        gated->fc->bias.copy_(plain->fc->bias);
      }
      const auto x = torch::randn({4, 3, 6, 6});
      for (bool train : {false, true}) {
        gated->train(train);
        CHECK(torch::equal(gated->forward(x), plain->forward(x)));
      }
      CHECK(gates(*gated).size() == 2);
      CHECK(aux_parameters(*gated).size() == 2);
      CHECK(coefficient_parameters(*gated).size() == 6);
    }
  }
  Gate g(GateOptions({4, 3, 3}));
  const auto x = torch::randn({2, 4, 3, 3}, torch::kDouble);
  CHECK(torch::equal(g->forward(x), torch::relu(x)));
}

TEST_CASE("a mask of zeros gives the polynomial", "[gate]") {
  Gate g(GateOptions({2, 3}).granularity(Granularity::Layer).scale2(0.5));
  {
    torch::NoGradGuard ng;
    g->mask().zero_();
    g->c0().copy_(torch::tensor({1.f, 2.f}));
    g->c1().copy_(torch::tensor({3.f, 4.f}));
    g->c2().copy_(torch::tensor({5.f, 6.f}));
  }
  g->eval();
  const auto x = torch::randn({3, 2, 3});
  const auto c = [](float a, float b) { return torch::tensor({a, b}).view({1, 2, 1}); };
  CHECK(torch::allclose(g->forward(x), c(1, 2) + c(3, 4) * x + 0.5 * c(5, 6) * x * x));
}

TEST_CASE("a wrong input shape is a clear error", "[gate]") {
  Gate g(GateOptions({4, 3, 3}));
  CHECK_THROWS_WITH(g->forward(torch::randn({2, 4, 3, 4})), Catch::Contains("per-sample shape [4, 3, 3]"));
  CHECK_THROWS_WITH(g->forward(torch::randn({2, 36})), Catch::Contains("per-sample shape"));
  CHECK_THROWS_WITH(parse_granularity("row"), Catch::Contains("granularity") && Catch::Contains("row"));
  CHECK_THROWS_WITH(Gate(GateOptions({4}).degree(3)), Catch::Contains("degree"));
  GateOptions bad_sigma({4});
  bad_sigma.dapa().sigma("mad");
  CHECK_THROWS_WITH(Gate(bad_sigma), Catch::Contains("dapa.sigma 'mad'"));
}

TEST_CASE("kept_relus counts ReLU elements at every granularity", "[gate][count]") {
  torch::NoGradGuard ng;
  Gate pixel(GateOptions({4, 3, 5}));
  CHECK(pixel->total_relus() == 60);
  CHECK(pixel->kept_relus() == 60);
  pixel->mask().view(-1).narrow(0, 10, 7).zero_();
  CHECK(pixel->kept_relus() == 53);

  Gate channel(GateOptions({4, 3, 5}).granularity(Granularity::Channel));
  CHECK(channel->mask().sizes() == torch::IntArrayRef({4}));
  channel->mask()[1] = 0;
  CHECK(channel->kept_relus() == 45);
  CHECK(channel->total_relus() == 60);

  Gate layer(GateOptions({4, 3, 5}).granularity(Granularity::Layer));
  CHECK(layer->mask().sizes() == torch::IntArrayRef({1}));
  CHECK(layer->kept_relus() == 60);
  layer->mask().zero_();
  CHECK(layer->kept_relus() == 0);

  Gate linear(GateOptions({7}));
  linear->mask()[2] = 0;
  CHECK(linear->kept_relus() == 6);
  std::vector<Site> sites{{"a", {4, 3, 5}, pixel.ptr()}, {"b", {7}, linear.ptr()}};
  CHECK(kept_relus(sites) == 59);
  CHECK(total_relus(sites) == 67);
}

TEST_CASE("gate_factory builds a gate of the site's shape from the prototype", "[gate]") {
  GateOptions proto;
  proto.granularity(Granularity::Channel).degree(1).threshold(0.01);
  auto m = gate_factory(proto)("layer1.0.act1", {8, 4, 4});
  auto g = std::dynamic_pointer_cast<GateImpl>(m.ptr());
  REQUIRE(g != nullptr);
  CHECK((g->options().shape() == std::vector<int64_t>{8, 4, 4}));
  CHECK(g->aux().sizes() == torch::IntArrayRef({8}));
  CHECK(g->options().degree() == 1);
  CHECK(g->coefficients().size() == 2);
  CHECK_FALSE(g->c2().requires_grad());
  CHECK(g->total_relus() == 128);
}

TEST_CASE("frozen gates give aux no gradient", "[gate]") {
  Gate g(GateOptions({2, 2, 2}));
  {
    torch::NoGradGuard ng;
    g->mask().zero_();
  }
  g->forward(torch::randn({3, 2, 2, 2})).sum().backward();
  CHECK(g->aux().grad().defined());
  g->aux().mutable_grad() = torch::Tensor();
  g->set_frozen(true);
  g->forward(torch::randn({3, 2, 2, 2})).sum().backward();
  CHECK_FALSE(g->aux().grad().defined());
  CHECK(g->c0().grad().defined());
}

#ifdef AUTOREP_WITH_CUDA
TEST_CASE("CUDA kernels match the composite reference (float32, float16, bfloat16)", "[gate][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("built with CUDA kernels but no CUDA device is available: skipped");
    return;
  }
  torch::manual_seed(12);
  const torch::Device dev(torch::kCUDA);
  for (std::vector<int64_t> shape : {std::vector<int64_t>{6, 5, 7, 9}, std::vector<int64_t>{3, 4, 20, 20},
                                     std::vector<int64_t>{64, 300}}) {
    for (std::string gran : {"pixel", "channel", "layer"}) {
      for (auto dt : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
        CAPTURE(shape, gran, dt);
        const auto in = make_inputs(shape, gran, torch::kDouble);
        // Inputs rounded to the element type, everything else float32, on the GPU.
        auto xg = in.x.detach().to(dt).to(dev).requires_grad_(true);
        auto aux = in.aux.detach().to(torch::kFloat).to(dev).requires_grad_(true);
        auto c0 = in.c0.detach().to(torch::kFloat).to(dev).requires_grad_(true);
        auto c1 = in.c1.detach().to(torch::kFloat).to(dev).requires_grad_(true);
        auto c2 = in.c2.detach().to(torch::kFloat).to(dev).requires_grad_(true);
        torch::Tensor moments;
        auto y = gate_fused(xg, aux, in.mask.to(torch::kFloat).to(dev), c0, c1, c2, 1.0, 0.1, 2, &moments);
        auto grads = torch::autograd::grad({y}, {xg, aux, c0, c1, c2}, {in.g.to(dt).to(dev)});
        const double tol = dt == torch::kFloat ? 1e-4 : 5e-2;
        const auto cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU).to(torch::kDouble); };
        // Compare against the reference evaluated at the rounded inputs.
        GateInputs r = in;
        r.x = in.x.detach().to(dt).to(torch::kDouble).requires_grad_(true);
        r.g = in.g.to(dt).to(torch::kDouble);
        const auto rr = run_gate(r, false, 2);
        const double scale = rr.dc2.abs().max().item<double>() + 1;
        CHECK(torch::allclose(cpu(y), rr.y, tol, tol));
        CHECK(torch::allclose(cpu(grads[0]), rr.dx, tol, tol));
        CHECK(torch::allclose(cpu(grads[1]), rr.daux, 1e-3, 1e-3 * scale));
        CHECK(torch::allclose(cpu(grads[2]), rr.dc0, 1e-3, 1e-3 * scale));
        CHECK(torch::allclose(cpu(grads[3]), rr.dc1, 1e-3, 1e-3 * scale));
        CHECK(torch::allclose(cpu(grads[4]), rr.dc2, 1e-3, 1e-3 * scale));
        std::vector<int64_t> dims{0};
        for (size_t d = 2; d < shape.size(); ++d) dims.push_back(static_cast<int64_t>(d));
        CHECK(torch::allclose(cpu(moments[0]), r.x.detach().sum(dims), 1e-3, 1e-2));
      }
    }
  }
}

namespace {

// The fused gate on the GPU at `x` (any layout; float32 coefficients), with every gradient and
// the moments, returned on the CPU in float64.
struct CudaGate {
  torch::Tensor y, dx, daux, dc0, dc1, dc2, moments;
};
CudaGate cuda_gate(const GateInputs& in, const torch::Tensor& x_on_gpu) {
  const torch::Device dev(torch::kCUDA);
  auto x = x_on_gpu.detach().requires_grad_(true);
  auto aux = in.aux.detach().to(torch::kFloat).to(dev).requires_grad_(true);
  auto c0 = in.c0.detach().to(torch::kFloat).to(dev).requires_grad_(true);
  auto c1 = in.c1.detach().to(torch::kFloat).to(dev).requires_grad_(true);
  auto c2 = in.c2.detach().to(torch::kFloat).to(dev).requires_grad_(true);
  torch::Tensor moments;
  auto y = gate_fused(x, aux, in.mask.to(torch::kFloat).to(dev), c0, c1, c2, 1.0, 0.1, 2, &moments);
  const auto g = in.g.to(x.scalar_type()).to(dev).contiguous(x.is_contiguous() ? at::MemoryFormat::Contiguous
                                                                               : at::MemoryFormat::ChannelsLast);
  auto grads = torch::autograd::grad({y}, {x, aux, c0, c1, c2}, {g});
  const auto cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU).to(torch::kDouble); };
  return {cpu(y), cpu(grads[0]), cpu(grads[1]), cpu(grads[2]), cpu(grads[3]), cpu(grads[4]), cpu(moments)};
}

void check_against_reference(const CudaGate& c, const GateInputs& in, double tol) {
  GateInputs r = in;
  r.x = in.x.detach().to(torch::kDouble).requires_grad_(true);
  const auto rr = run_gate(r, false, 2);
  const double scale = rr.dc2.abs().max().item<double>() + 1;
  CHECK(torch::allclose(c.y, rr.y, tol, tol));
  CHECK(torch::allclose(c.dx, rr.dx, tol, tol));
  CHECK(torch::allclose(c.daux, rr.daux, 1e-3, 1e-3 * scale));
  CHECK(torch::allclose(c.dc0, rr.dc0, 1e-3, 1e-3 * scale));
  CHECK(torch::allclose(c.dc1, rr.dc1, 1e-3, 1e-3 * scale));
  CHECK(torch::allclose(c.dc2, rr.dc2, 1e-3, 1e-3 * scale));
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < in.x.dim(); ++d) dims.push_back(d);
  const auto xd = r.x.detach();
  CHECK(torch::allclose(c.moments[0], xd.sum(dims), 1e-6, 1e-6));
  CHECK(torch::allclose(c.moments[1], (xd * xd).sum(dims), 1e-6, 1e-6));
}

}  // namespace

TEST_CASE("CUDA kernels: channels_last, non-contiguous and N x F beyond 65,535 features", "[gate][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("built with CUDA kernels but no CUDA device is available: skipped");
    return;
  }
  torch::manual_seed(13);
  const torch::Device dev(torch::kCUDA);
  for (std::string gran : {"pixel", "channel", "layer"}) {
    CAPTURE(gran);
    // channels_last memory: the result keeps that format (no hidden copy) and matches.
    for (std::vector<int64_t> shape : {std::vector<int64_t>{5, 40, 7, 7}, std::vector<int64_t>{3, 300, 4, 4},
                                       std::vector<int64_t>{2, 8, 33, 31}}) {
      CAPTURE(shape);
      const auto in = make_inputs(shape, gran, torch::kFloat);
      const auto xcl = in.x.detach().to(dev).contiguous(at::MemoryFormat::ChannelsLast);
      torch::Tensor y_format;
      {
        torch::NoGradGuard ng;
        const auto c = [&](const torch::Tensor& t) { return t.detach().to(dev); };
        y_format = gate_fused(xcl, c(in.aux), c(in.mask), c(in.c0), c(in.c1), c(in.c2), 1.0, 0.1, 2);
      }
      CHECK(y_format.is_contiguous(at::MemoryFormat::ChannelsLast));
      check_against_reference(cuda_gate(in, xcl), in, 1e-4);
      // A non-contiguous view (every other sample).
      const auto wide = torch::randn({2 * shape[0], shape[1], shape[2], shape[3]}).to(dev);
      GateInputs strided = in;
      strided.x = wide.slice(0, 0, 2 * shape[0], 2).cpu();
      check_against_reference(cuda_gate(strided, wide.slice(0, 0, 2 * shape[0], 2)), strided, 1e-4);
    }
    // N x F with more features than a grid dimension holds.
    const auto in = make_inputs({4, 70000}, gran, torch::kFloat);
    check_against_reference(cuda_gate(in, in.x.detach().to(dev)), in, 1e-4);
  }
}

TEST_CASE("CUDA kernels: moments and gradients are the same bits run to run, and accurate for |mean| >> std",
          "[gate][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("built with CUDA kernels but no CUDA device is available: skipped");
    return;
  }
  torch::manual_seed(14);
  const torch::Device dev(torch::kCUDA);
  for (std::vector<int64_t> shape : {std::vector<int64_t>{256, 64, 32, 32}, std::vector<int64_t>{512, 3000}}) {
    CAPTURE(shape);
    auto in = make_inputs(shape, "pixel", torch::kFloat);
    {
      torch::NoGradGuard ng;
      in.x.mul_(0.01).add_(1000);  // mean 1000, sd 0.01
    }
    const auto xg = in.x.detach().to(dev);
    const auto a = cuda_gate(in, xg), b = cuda_gate(in, xg);
    CHECK(torch::equal(a.moments, b.moments));
    CHECK(torch::equal(a.daux, b.daux));
    CHECK(torch::equal(a.dc0, b.dc0));
    CHECK(torch::equal(a.dc1, b.dc1));
    CHECK(torch::equal(a.dc2, b.dc2));
    // The variance from the sums, against the float64 variance of the same float32 values.
    std::vector<int64_t> dims{0};
    for (size_t d = 2; d < shape.size(); ++d) dims.push_back(static_cast<int64_t>(d));
    const auto xd = in.x.detach().to(torch::kDouble);
    const double n = static_cast<double>(xd.numel() / shape[1]);
    const auto mean = a.moments[0] / n;
    const auto var = (a.moments[1] - a.moments[0] * mean) / (n - 1);
    CHECK(torch::allclose(var, xd.var(dims, /*unbiased=*/true), 1e-3, 0.0));
  }
}

TEST_CASE("the Gate module trains the same on CUDA as on the CPU", "[gate][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("built with CUDA kernels but no CUDA device is available: skipped");
    return;
  }
  torch::manual_seed(15);
  GateOptions o({6, 5, 5});
  Gate cpu_gate(o), gpu_gate(o);
  {
    torch::NoGradGuard ng;
    cpu_gate->mask().copy_(torch::rand_like(cpu_gate->mask()) > 0.5);
    gpu_gate->mask().copy_(cpu_gate->mask());
  }
  gpu_gate->to(torch::kCUDA);
  cpu_gate->train();
  gpu_gate->train();
  for (int step = 0; step < 5; ++step) {
    const auto x = torch::randn({16, 6, 5, 5}) * 2 + 0.5;
    const auto g = torch::randn({16, 6, 5, 5});
    cpu_gate->forward(x).backward(g);
    gpu_gate->forward(x.to(torch::kCUDA)).backward(g.to(torch::kCUDA));
  }
  CHECK(torch::allclose(gpu_gate->running_mean().cpu(), cpu_gate->running_mean(), 1e-5, 1e-6));
  CHECK(torch::allclose(gpu_gate->running_var().cpu(), cpu_gate->running_var(), 1e-5, 1e-6));
  CHECK(torch::allclose(gpu_gate->c0().cpu(), cpu_gate->c0(), 1e-5, 1e-6));
  CHECK(torch::allclose(gpu_gate->c2().cpu(), cpu_gate->c2(), 1e-5, 1e-6));
  CHECK(torch::allclose(gpu_gate->aux().grad().cpu(), cpu_gate->aux().grad(), 1e-3, 1e-4));
  CHECK(torch::allclose(gpu_gate->c1().grad().cpu(), cpu_gate->c1().grad(), 1e-3, 1e-4));
}
#endif

TEST_CASE("a kept position stays relu where the polynomial overflows (fused and composite)", "[gate][overflow]") {
  for (const char* gran : {"pixel", "channel", "layer"}) {
    for (bool fused : {true, false}) {
      for (const std::vector<int64_t>& shape : {std::vector<int64_t>{4, 3, 5, 5}, std::vector<int64_t>{4, 7}}) {
        CAPTURE(gran, fused, shape);
        GateInputs in = make_inputs(shape, gran, torch::kFloat);
        {
          torch::NoGradGuard ng;
          in.mask.fill_(1);
          const bool layer = std::string(gran) == "layer";
          if (!layer) in.mask.view(-1)[0] = 0;  // one polynomial entry, the rest kept (a layer: all kept)
          in.c2.fill_(1e38f);       // s2 * c2 * x^2 overflows float for |x| > ~0.3
          in.x.mul_(100);
        }
        const GateResult r = run_gate(in, fused, 2);
        std::vector<int64_t> view(shape.begin(), shape.end());
        view[0] = 1;  // pixel: the per-sample shape
        if (std::string(gran) != "pixel") {
          std::fill(view.begin(), view.end(), 1);
          if (std::string(gran) == "channel") view[1] = shape[1];
        }
        const auto kept = in.mask.reshape(view).expand_as(in.x) > 0.5;
        REQUIRE(kept.any().item<bool>());
        CHECK(torch::equal(r.y.masked_select(kept), torch::relu(in.x.detach()).masked_select(kept)));
        CHECK(torch::isfinite(r.dx.masked_select(kept)).all().item<bool>());
        // The polynomial entry did overflow (without the select, 0 * inf would be NaN at every
        // kept position too).
        if (std::string(gran) != "layer") CHECK(!torch::isfinite(r.y).all().item<bool>());
      }
    }
  }
}

TEST_CASE("calibration starts the running statistics and the fit from the data, not the prior", "[gate][dapa]") {
  torch::manual_seed(11);
  for (bool fused : {true, false}) {
    CAPTURE(fused);
    GateOptions o({3, 4, 4});
    o.fused(fused);
    o.dapa().sigma_scale(1);  // the exact fit, so the polynomial is close to relu on the data
    Gate gate(o);
    const auto x1 = torch::randn({16, 3, 4, 4}) * 0.05 + torch::tensor({2.0f, -1.0f, 0.3f}).view({1, 3, 1, 1});
    const auto x2 = torch::randn({8, 3, 4, 4}) * 0.05 + torch::tensor({2.0f, -1.0f, 0.3f}).view({1, 3, 1, 1});
    gate->eval();
    gate->begin_calibration();
    CHECK(gate->calibrating());
    gate->forward(x1);
    gate->forward(x2);
    gate->end_calibration();
    CHECK_FALSE(gate->calibrating());
    CHECK(gate->step() == 0);  // calibration is not a training step
    const auto all = torch::cat({x1, x2}).to(torch::kDouble);
    const auto mean = all.mean({0, 2, 3}), var = all.var({0, 2, 3}, /*unbiased=*/true);
    CHECK(torch::allclose(gate->running_mean().to(torch::kDouble), mean, 1e-5, 1e-6));
    CHECK(torch::allclose(gate->running_var().to(torch::kDouble), var, 1e-4, 1e-7));
    // The coefficients are the exact fit of the calibrated statistics (far from the N(0, 1) fit).
    const auto f = dapa_fit(mean, var.sqrt(), 2);
    CHECK(torch::allclose(gate->c0().to(torch::kDouble), f.w0, 1e-3, 1e-6));
    CHECK(torch::allclose(gate->c1().to(torch::kDouble), f.w1, 1e-3, 1e-6));
    // On data like the calibration's, the polynomial is close to relu (the prior's fit is not).
    gate->mask().zero_();
    const auto err = (gate->forward(x2) - torch::relu(x2)).abs().max().item<double>();
    CHECK(err < 0.02);
    Gate prior(o);
    prior->eval();
    prior->mask().zero_();
    CHECK((prior->forward(x2) - torch::relu(x2)).abs().max().item<double>() > 5 * err);
  }
  Gate idle(GateOptions({2}));
  idle->begin_calibration();
  idle->end_calibration();  // nothing seen: the statistics stay the prior
  CHECK(torch::equal(idle->running_var(), torch::ones({2})));
  CHECK_THROWS_WITH(idle->end_calibration(), Catch::Contains("without begin_calibration"));
}

TEST_CASE("the curvature bound caps the quadratic term at the widest fit's and leaves smaller ones", "[gate][dapa]") {
  GateOptions o({3, 2, 2});
  o.scale2(0.1);
  o.dapa().sigma_scale(3);
  torch::nn::Sequential net{Gate(o)};
  auto gate = gates(*net).front();
  {
    torch::NoGradGuard ng;
    gate->running_var().copy_(torch::tensor({0.01f, 1.0f, 4.0f}));
    gate->c2().copy_(torch::tensor({1e3f, -1e3f, 0.01f}));
  }
  cap_curvature(*net);
  const auto sigma = torch::tensor({0.1, 1.0, 2.0}, torch::kDouble);
  const auto limit = (1.0 / std::sqrt(2 * M_PI)) / (2 * 3 * sigma);  // for s2 * c2
  const auto eff = 0.1 * gate->c2().to(torch::kDouble);
  CHECK(eff[0].item<double>() == Approx(limit[0].item<double>()).epsilon(1e-5));
  CHECK(eff[1].item<double>() == Approx(-limit[1].item<double>()).epsilon(1e-5));
  CHECK(gate->c2()[2].item<float>() == 0.01f);  // within the bound: untouched
  // A fit is never capped: its curvature phi(z)/(2 k sigma) is at most phi(0)/(2 k sigma).
  {
    torch::NoGradGuard ng;
    gate->running_mean().copy_(torch::tensor({0.5f, 0.3f, -1.0f}));  // z != 0: strictly below the bound
    gate->refit();
  }
  const auto fitted = gate->c2().clone();
  cap_curvature(*net);
  CHECK(torch::equal(gate->c2(), fitted));
}

TEST_CASE("the gate kernels refuse tensors on another device or of a non-float type, naming them", "[gate]") {
  GateInputs in = make_inputs({2, 3, 4, 4}, "channel", torch::kFloat);
  const auto on_meta = torch::empty({3}, torch::TensorOptions().device(torch::kMeta));
  CHECK_THROWS_WITH(gate_fused(in.x, in.aux, in.mask, on_meta, in.c1, in.c2, 1.0, 0.1, 2),
                    Catch::Contains("c0 is on meta") && Catch::Contains("the input is on cpu"));
  CHECK_THROWS_WITH(gate_composite(in.x, in.aux, in.mask, in.c0, in.c1, on_meta, 1.0, 0.1, 2),
                    Catch::Contains("c2 is on meta"));
  CHECK_THROWS_WITH(gate_fused(in.x, in.aux, in.mask.to(torch::kLong), in.c0, in.c1, in.c2, 1.0, 0.1, 2),
                    Catch::Contains("mask must be a floating-point tensor"));
}

TEST_CASE("the range bound tracks the largest |x| at polynomial positions and caps the curvature by it", "[gate][dapa]") {
  GateOptions o({2, 2, 2});
  o.scale2(0.1);
  o.dapa().sigma_scale(3).range_bound(0.5).enabled(false);
  Gate gate(o);
  // Calibration: every position counts (which will be polynomial is not known yet); the range
  // is the mean of the batches' per-channel maxima.
  auto x1 = torch::zeros({1, 2, 2, 2}), x2 = torch::zeros({1, 2, 2, 2});
  x1[0][0][0][0] = -4.0f;
  x1[0][1][1][1] = 2.0f;
  x2[0][0][1][0] = 2.0f;
  x2[0][1][0][1] = -6.0f;
  gate->eval();
  gate->begin_calibration();
  gate->forward(x1);
  gate->forward(x2);
  gate->end_calibration();
  CHECK(torch::allclose(gate->running_range(), torch::tensor({3.0f, 4.0f})));
  // Training: only polynomial positions count, as an EMA (momentum 0.1).
  gate->train();
  {
    torch::NoGradGuard ng;
    gate->mask().zero_();
    gate->mask()[0][0][0] = 1.0f;  // channel 0, position (0, 0) keeps its ReLU
  }
  auto x3 = torch::zeros({1, 2, 2, 2});
  x3[0][0][0][0] = 100.0f;  // at the kept position: not a polynomial input
  x3[0][0][1][1] = -13.0f;
  x3[0][1][0][0] = 14.0f;
  // Two processes seeing the same batch (a reducer that doubles every sum) keep the same range.
  Gate twin(o);
  {
    torch::NoGradGuard ng;
    twin->mask().copy_(gate->mask());
    twin->running_range().copy_(gate->running_range());
  }
  twin->train();
  twin->set_moment_reducer([](torch::Tensor& t) { t.mul_(2); });
  twin->forward(x3);
  gate->forward(x3);
  CHECK(torch::allclose(twin->running_range(), gate->running_range()));
  CHECK(torch::allclose(gate->running_range(), torch::tensor({0.9f * 3 + 0.1f * 13, 0.9f * 4 + 0.1f * 14})));
  // The cap: |s2 c2| <= 0.5 / R where that is below the fit's bound phi(0) / (2 k sigma).
  {
    torch::NoGradGuard ng;
    gate->running_var().fill_(1.0f);
    gate->running_range().copy_(torch::tensor({1.0f, 50.0f}));
    gate->c2().fill_(1e3f);
  }
  gate->cap_curvature();
  const double fit_bound = (1.0 / std::sqrt(2 * M_PI)) / (2 * 3);
  CHECK(0.1 * gate->c2()[0].item<double>() == Approx(fit_bound).epsilon(1e-5));  // 0.5 / 1 is looser
  CHECK(0.1 * gate->c2()[1].item<double>() == Approx(0.5 / 50).epsilon(1e-5));
}

TEST_CASE("with the range bound an outlier through a residual stream of polynomials stays in range", "[gate][dapa]") {
  // x_{l+1} = p_l(x_l + F_l), F_l unit noise (a batch-normed residual branch), six sites each
  // calibrated on its own input, one input at 20 sd: the fit's quadratic squares the outlier
  // site after site, the range-bounded one passes it on at about its size.
  auto run = [](double range_bound) {
    torch::manual_seed(3);
    auto x = torch::randn({64, 1, 4, 4});
    x[0][0][0][0] = 20.0f;
    torch::NoGradGuard ng;
    for (int l = 0; l < 6; ++l) {
      GateOptions o({1, 4, 4});
      o.dapa().range_bound(range_bound).enabled(false);
      Gate g(o);
      g->mask().zero_();
      g->eval();
      x = x + torch::randn_like(x);
      g->begin_calibration();
      g->forward(x);
      g->end_calibration();
      x = g->forward(x);
    }
    return x.abs().max().item<double>();
  };
  const double without = run(0.0), with = run(0.5);
  CAPTURE(without, with);
  CHECK(without > 500.0);
  CHECK(with < 30.0);
}

TEST_CASE("with a moment reducer the global count stays on the device and one value changes nothing",
          "[gate][dapa][distributed]") {
  torch::manual_seed(16);
  GateOptions o({3});
  Gate plain(o), reduced(o);
  plain->train();
  reduced->train();
  reduced->set_moment_reducer([](torch::Tensor&) {});  // one process: the sums are the global sums
  const auto mean0 = reduced->running_mean().clone(), var0 = reduced->running_var().clone();
  reduced->forward(torch::randn({1, 3}));  // one value per channel: no variance to take
  CHECK(torch::equal(reduced->running_mean(), mean0));
  CHECK(torch::equal(reduced->running_var(), var0));
  // A real batch: the same statistics as without a reducer.
  const auto x = torch::randn({16, 3}) * 3 + 1;
  plain->forward(x);
  reduced->forward(x);
  CHECK(torch::allclose(reduced->running_mean(), plain->running_mean(), 1e-6, 1e-7));
  CHECK(torch::allclose(reduced->running_var(), plain->running_var(), 1e-6, 1e-7));
  CHECK_FALSE(torch::equal(reduced->running_var(), var0));
}
