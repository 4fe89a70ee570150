#include "tests/torch_catch.h"

#include "layers/site.h"

using namespace autorep::layers;

TEST_CASE("ReluSite counts every element of its shape and acts as a ReLU", "[site]") {
  ReluSite r(std::vector<int64_t>{4, 5, 6});
  CHECK(r->total_relus() == 120);
  CHECK(r->kept_relus() == 120);
  auto x = torch::randn({2, 4, 5, 6});
  CHECK(torch::equal(r->forward(x), torch::relu(x)));
  std::vector<Site> sites{{"a", {4, 5, 6}, r.ptr()}, {"b", {7}, ReluSite(std::vector<int64_t>{7}).ptr()}};
  CHECK(total_relus(sites) == 127);
  CHECK(kept_relus(sites) == 127);
  CHECK(sites[0].kind() == "conv");
  CHECK(sites[1].kind() == "linear");
}
