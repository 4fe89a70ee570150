#include "tests/torch_catch.h"

#include <vector>

#include "layers/pool.h"

using autorep::layers::max_pool2;

namespace {

// Outputs and input gradients of torch::max_pool2d(x, 2) and of max_pool2 for the same input and
// output gradient. NaN outputs compare equal to each other.
void check_same_as_torch(const torch::Tensor& x, bool channels_last) {
  const torch::Tensor in = channels_last ? x.contiguous(at::MemoryFormat::ChannelsLast) : x.contiguous();
  auto a = in.clone().requires_grad_(true);
  auto b = in.clone().requires_grad_(true);
  const torch::Tensor ya = torch::max_pool2d(a, 2), yb = max_pool2(b);
  const torch::Tensor gy = torch::randn(ya.sizes(), ya.options());
  ya.backward(gy);
  yb.backward(gy);
  CHECK(yb.sizes() == ya.sizes());
  CHECK(torch::equal(ya.isnan(), yb.isnan()));
  CHECK(torch::equal(ya.nan_to_num(0), yb.nan_to_num(0)));
  CHECK(torch::equal(a.grad(), b.grad()));
  // The output and the gradient keep the input's memory format.
  CHECK(yb.is_contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  CHECK(b.grad().is_contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  // Without gradients: the same outputs from the forward-only kernel.
  torch::NoGradGuard no_grad;
  CHECK(torch::equal(max_pool2(in).nan_to_num(0), ya.detach().nan_to_num(0)));
}

}  // namespace

TEST_CASE("max_pool2 gives torch::max_pool2d's outputs and gradients, ties and NaNs included", "[pool]") {
  torch::manual_seed(3);
  // Even and odd sizes (floor mode drops a last row or column), rows of fewer than, exactly and
  // more than four outputs, channel counts off the vector width.
  const std::vector<std::vector<int64_t>> shapes = {{2, 3, 2, 2}, {2, 5, 7, 9}, {3, 16, 14, 14}, {2, 4, 8, 17},
                                                    {1, 1, 5, 30}, {2, 32, 28, 28}};
  for (const auto& shape : shapes) {
    for (const auto dtype : {torch::kFloat, torch::kDouble}) {
      // Rounded ReLU outputs: most windows hold ties (equal values, often zeros).
      torch::Tensor x = torch::randn(shape, torch::TensorOptions().dtype(dtype)).mul(2).relu().round();
      x.view(-1)[1] = NAN;
      x.view(-1)[x.numel() - 1] = -INFINITY;
      for (const bool cl : {false, true}) {
        INFO("shape " << torch::IntArrayRef(shape) << " dtype " << dtype << (cl ? " channels_last" : " NCHW"));
        check_same_as_torch(x, cl);
        check_same_as_torch(torch::randn(shape, torch::TensorOptions().dtype(dtype)), cl);
      }
    }
  }
}

TEST_CASE("max_pool2 takes other inputs to torch::max_pool2d and refuses a double backward", "[pool]") {
  // A strided view is pooled like its contiguous copy.
  const auto base = torch::randn({2, 3, 12, 10});
  const auto view = base.narrow(2, 1, 9);
  CHECK_FALSE(view.is_contiguous());
  CHECK(torch::equal(max_pool2(view), torch::max_pool2d(view, 2)));
  // bfloat16 (the teacher's optional dtype) goes through LibTorch.
  const auto bf = torch::randn({2, 3, 6, 6}).to(torch::kBFloat16);
  CHECK(torch::equal(max_pool2(bf), torch::max_pool2d(bf, 2)));
  // A 3-d input is not an N×C×H×W batch: LibTorch's pooling takes it (and its error messages).
  const auto unbatched = torch::randn({3, 6, 6});
  CHECK(torch::equal(max_pool2(unbatched), torch::max_pool2d(unbatched, 2)));
  auto x = torch::randn({2, 3, 6, 6}, torch::requires_grad());
  const auto y = max_pool2(x).pow(2).sum();
  CHECK_THROWS_WITH(torch::autograd::grad({y}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true),
                    Catch::Contains("double backward"));
  CHECK(torch::autograd::grad({y}, {x})[0].sizes() == x.sizes());
}
