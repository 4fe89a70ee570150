#include "tests/torch_catch.h"

#include <dlfcn.h>
#include <torch/torch.h>

#include <thread>

#include "trainer/engine/device.h"

using namespace autorep::trainer::engine;

TEST_CASE("configure_threads sets LibTorch's threads and runs BLAS on the calling thread", "[device]") {
  const int before = torch::get_num_threads();
  CHECK(configure_threads(1) == 1);
  CHECK(torch::get_num_threads() == 1);
  CHECK(configure_threads(2) == 2);
  CHECK(torch::get_num_threads() == 2);
  const auto all = static_cast<int64_t>(std::thread::hardware_concurrency());
  if (all > 0) CHECK(configure_threads(0) == all);

  using GetThreads = int (*)();
  auto get = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (get) {
    CHECK(get() == 1);
    CHECK(blas_single_threaded() == 1);  // the count before: already one
    // A matrix product (OpenBLAS sgemm) still gives LibTorch's result on one BLAS thread.
    torch::manual_seed(0);
    const auto a = torch::randn({300, 200}, torch::kFloat64), b = torch::randn({200, 100}, torch::kFloat64);
    const auto ref = (a.unsqueeze(2) * b.unsqueeze(0)).sum(1);
    CHECK(torch::allclose(torch::mm(a, b), ref, 1e-10, 1e-10));
  } else {
    WARN("this LibTorch's BLAS is not OpenBLAS: nothing to set");
    CHECK(blas_single_threaded() == 0);
  }
  torch::set_num_threads(before);
}
