#include "tests/torch_catch.h"

#include <vector>

#include "layers/stem_conv.h"

using autorep::layers::stem_conv2d;

namespace {

struct Case {
  int64_t in, out, kernel, stride, padding, size;
  bool bias, input_grad;
};

// Output and gradients of stem_conv2d against the module's own forward (oneDNN / ATen) on the
// same weights, input and output gradient.
void check_against_module(const Case& c, torch::Dtype dtype, double tol) {
  INFO("in " << c.in << " out " << c.out << " kernel " << c.kernel << " stride " << c.stride << " padding "
             << c.padding << " size " << c.size << " bias " << c.bias << " input grad " << c.input_grad << " "
             << (dtype == torch::kFloat ? "float32" : "float64"));
  torch::nn::Conv2d conv(
      torch::nn::Conv2dOptions(c.in, c.out, c.kernel).stride(c.stride).padding(c.padding).bias(c.bias));
  conv->to(dtype);
  const auto x = torch::randn({5, c.in, c.size, c.size + 3}, dtype);
  auto xa = x.clone().requires_grad_(c.input_grad), xb = x.clone().requires_grad_(c.input_grad);
  const auto ya = conv->forward(xa);
  const auto gy = torch::randn(ya.sizes(), ya.options());
  ya.backward(gy);
  const auto wa = conv->weight.grad().clone();
  const auto ba = c.bias ? conv->bias.grad().clone() : torch::Tensor();
  conv->weight.mutable_grad() = torch::Tensor();
  if (c.bias) conv->bias.mutable_grad() = torch::Tensor();
  const auto yb = stem_conv2d(*conv, xb);
  yb.backward(gy);
  CHECK(torch::equal(ya, yb));  // the forward is the module's convolution
  const double scale = wa.abs().max().item<double>();
  CHECK((conv->weight.grad() - wa).abs().max().item<double>() <= tol * scale);
  if (c.bias) CHECK((conv->bias.grad() - ba).abs().max().item<double>() <= tol * ba.abs().max().item<double>());
  if (c.input_grad) CHECK(torch::allclose(xb.grad(), xa.grad(), tol, tol));
  else CHECK(!xb.grad().defined());
}

}  // namespace

TEST_CASE("stem_conv2d gives the module's output and its gradients, at any stride, padding and kernel",
          "[stem]") {
  torch::manual_seed(3);
  const std::vector<Case> cases = {
      {1, 16, 3, 1, 1, 28, false, false},  // the Fashion-MNIST stems
      {3, 8, 3, 1, 1, 12, true, false},    {1, 4, 5, 1, 2, 9, false, true}, {2, 6, 3, 2, 1, 11, true, false},
      {4, 5, 3, 1, 0, 7, false, false},    {1, 3, 3, 2, 0, 8, true, true},  {3, 4, 1, 1, 0, 6, false, false},
      {1, 2, 3, 1, 3, 5, true, false},  // padding wider than the kernel's reach
  };
  for (const auto& c : cases) {
    check_against_module(c, torch::kDouble, 1e-12);
    check_against_module(c, torch::kFloat, 1e-5);
  }
}

TEST_CASE("stem_conv2d's weight gradient is the same bits at any thread count", "[stem]") {
  torch::manual_seed(4);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(1, 16, 3).padding(1).bias(false));
  const auto x = torch::randn({64, 1, 28, 28});
  const auto gy = torch::randn({64, 16, 28, 28});
  const int threads = torch::get_num_threads();
  std::vector<torch::Tensor> grads;
  for (const int t : {1, 2, 3}) {
    torch::set_num_threads(t);
    conv->weight.mutable_grad() = torch::Tensor();
    stem_conv2d(*conv, x).backward(gy);
    grads.push_back(conv->weight.grad().clone());
  }
  torch::set_num_threads(threads);
  CHECK(torch::equal(grads[0], grads[1]));
  CHECK(torch::equal(grads[0], grads[2]));
}

TEST_CASE("stem_conv2d is the module's forward where its path does not apply", "[stem]") {
  torch::manual_seed(5);
  torch::nn::Conv2d wide(torch::nn::Conv2dOptions(8, 4, 3).padding(1));  // more than 4 input channels
  const auto x = torch::randn({2, 8, 6, 6}, torch::requires_grad());
  const auto y = stem_conv2d(*wide, x);
  CHECK(y.grad_fn()->name() == wide->forward(x).grad_fn()->name());
  torch::nn::Conv2d stem(torch::nn::Conv2dOptions(1, 4, 3).padding(1));
  const auto img = torch::randn({2, 1, 6, 6});
  {
    torch::NoGradGuard no_grad;  // evaluation: no autograd node at all
    CHECK(torch::equal(stem_conv2d(*stem, img), stem->forward(img)));
  }
  CHECK(stem_conv2d(*stem, img).grad_fn()->name() != stem->forward(img).grad_fn()->name());
  // A channels_last input keeps LibTorch's convolution.
  torch::nn::Conv2d rgb(torch::nn::Conv2dOptions(3, 4, 3).padding(1));
  const auto cl = torch::randn({2, 3, 6, 6}).contiguous(at::MemoryFormat::ChannelsLast);
  REQUIRE(!cl.is_contiguous());
  CHECK(stem_conv2d(*rgb, cl).grad_fn()->name() == rgb->forward(cl).grad_fn()->name());
  // Double backward is refused with a message, not computed wrong.
  const auto y2 = stem_conv2d(*stem, img).pow(2).sum();
  CHECK_THROWS_WITH(torch::autograd::grad({y2}, {stem->weight}, {}, /*retain_graph=*/true, /*create_graph=*/true),
                    Catch::Matchers::Contains("double backward"));
}
