#include "tests/torch_catch.h"

#include "layers/granularity.h"
#include "layers/magnitude_recorder.h"

using namespace autorep::layers;

TEST_CASE("magnitudes are mean |x| and reduce to the granularity", "[magnitude]") {
  MagnitudeRecorder r(std::vector<int64_t>{2, 1, 2});
  r->forward(torch::tensor({1.0f, -2.0f, 3.0f, -4.0f}).view({1, 2, 1, 2}));
  r->forward(torch::tensor({-3.0f, 0.0f, 1.0f, 0.0f}).view({1, 2, 1, 2}));
  auto m = r->mean_magnitude();
  CHECK(torch::allclose(m.view(-1), torch::tensor({2.0, 1.0, 2.0, 2.0}, torch::kDouble)));
  CHECK(torch::allclose(reduce_to_mask_shape(m, Granularity::Channel), torch::tensor({1.5, 2.0}, torch::kDouble)));
  CHECK(reduce_to_mask_shape(m, Granularity::Layer).item<double>() == Approx(1.75));
}
