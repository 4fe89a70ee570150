#include "tests/torch_catch.h"

#include <set>

#include "trainer/models/net.h"
#include "trainer/models/registry.h"

using namespace autorep;
using namespace autorep::trainer;
using namespace autorep::trainer::models;

namespace {
int64_t total_for(const std::string& name, std::vector<int64_t> input, bool stem_relu = true) {
  ModelSpec spec{name, std::move(input), 10, stem_relu};
  return layers::total_relus(build_model(spec, layers::relu_factory())->sites());
}
}  // namespace

TEST_CASE("ReLU totals match the published counts", "[models]") {
  CHECK(total_for("resnet18", {3, 32, 32}) == 557056);
  CHECK(total_for("resnet18", {3, 32, 32}, false) == 491520);
  CHECK(total_for("resnet18", {3, 64, 64}, false) == 1966080);
  CHECK(total_for("wrn-22-8", {3, 32, 32}) == 1359872);
  CHECK(total_for("resnet20", {1, 28, 28}) == 144256);
}

TEST_CASE("every model gives logits of the right shape and names its sites uniquely", "[models]") {
  for (const auto& name : model_names()) {
    const bool big = name == "wrn-22-8" || name == "vgg16";
    ModelSpec spec{name, big ? std::vector<int64_t>{3, 32, 32} : std::vector<int64_t>{1, 28, 28}, 7, true};
    Net net = build_model(spec, layers::relu_factory());
    net->eval();
    torch::NoGradGuard ng;
    auto y = net->forward(torch::randn({2, spec.input_shape[0], spec.input_shape[1], spec.input_shape[2]}));
    INFO(name);
    CHECK(y.sizes() == torch::IntArrayRef({2, 7}));
    std::set<std::string> names;
    for (const auto& s : net->sites()) names.insert(s.name);
    CHECK(names.size() == net->sites().size());
    CHECK(net->sites().size() >= 2);
  }
}

TEST_CASE("sites are listed in forward order with the shapes the activations receive", "[models]") {
  for (const auto& name : {std::string("cnn-small"), std::string("resnet20"), std::string("vgg16")}) {
    ModelSpec spec{name, {1, 28, 28}, 10, true};
    std::vector<std::pair<std::string, std::vector<int64_t>>> seen;
    // A recording activation: checks each call's per-sample shape against the declared one.
    struct Recorder : torch::nn::Module, layers::ActivationSite {
      Recorder(std::string n, std::vector<int64_t> s, decltype(seen)* log) : name(std::move(n)), shape(std::move(s)), log(log) {}
      torch::Tensor forward(const torch::Tensor& x) {
        log->emplace_back(name, x.sizes().slice(1).vec());
        return torch::relu(x);
      }
      int64_t kept_relus() const override { return 0; }
      int64_t total_relus() const override { return 0; }
      std::string name;
      std::vector<int64_t> shape;
      decltype(seen)* log;
    };
    auto factory = [&seen](const std::string& n, const std::vector<int64_t>& s) {
      return torch::nn::AnyModule(std::make_shared<Recorder>(n, s, &seen));
    };
    Net net = build_model(spec, factory);
    net->eval();
    torch::NoGradGuard ng;
    net->forward(torch::randn({2, 1, 28, 28}));
    INFO(name);
    REQUIRE(seen.size() == net->sites().size());
    for (size_t i = 0; i < seen.size(); ++i) {
      CHECK(seen[i].first == net->sites()[i].name);
      CHECK(seen[i].second == net->sites()[i].shape);
    }
  }
}

TEST_CASE("bad model requests are clear errors", "[models]") {
  CHECK_THROWS_WITH(build_model({"resnet99", {3, 32, 32}, 10, true}, layers::relu_factory()),
                    Catch::Contains("unknown model \"resnet99\""));
  CHECK_THROWS_WITH(parse_shape("3x32"), Catch::Contains("3x32"));
  CHECK_THROWS_WITH(parse_shape("3xax32"), Catch::Contains("CxHxW"));
  CHECK((parse_shape("3x64x64") == std::vector<int64_t>{3, 64, 64}));
}
