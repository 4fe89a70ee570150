#include "tests/torch_catch.h"

#include <set>

#include "layers/gate.h"
#include "trainer/models/folded.h"
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
  ModelSpec reshaped{"resnet20", {1, 28, 28}, 10, true};
  reshaped.width = 0.5;
  reshaped.stem_stride = 2;
  for (const ModelSpec& spec : {ModelSpec{"cnn-small", {1, 28, 28}, 10, true}, ModelSpec{"resnet20", {1, 28, 28}, 10, true},
                                ModelSpec{"vgg16", {1, 28, 28}, 10, true}, reshaped}) {
    const std::string& name = spec.name;
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

namespace {

// Per stage: name, number of sites, ReLUs, and ReLUs left when the stage is thinned.
struct StageCount {
  std::string name;
  size_t sites;
  int64_t relus, thinned;
};

std::vector<StageCount> stage_counts(const ModelSpec& spec) {
  const Net net = build_model(spec, layers::relu_factory());
  std::vector<StageCount> out;
  size_t covered = 0;
  for (const auto& st : net->stages()) {
    StageCount c{st.name, st.sites.size(), 0, 0};
    for (size_t k = 0; k < st.sites.size(); ++k) {
      CHECK(st.sites[k] == covered++);  // stages partition the sites in forward order
      const int64_t n = net->sites()[st.sites[k]].elements();
      c.relus += n;
      if (!st.thinned[k]) c.thinned += n;
    }
    out.push_back(c);
  }
  CHECK(covered == net->sites().size());
  return out;
}

}  // namespace

TEST_CASE("every model declares its DeepReDuce stages and what thinning drops", "[models][stages]") {
  SECTION("resnet20: the stem with the first stage, one per resolution; thinning keeps each block's first ReLU") {
    const auto c = stage_counts({"resnet20", {1, 28, 28}, 10, true});
    REQUIRE(c.size() == 3);
    CHECK(c[0].name == "stem+layer1");
    CHECK(c[0].sites == 7);
    CHECK(c[0].relus == 7 * 16 * 28 * 28);
    CHECK(c[0].thinned == 4 * 16 * 28 * 28);  // the stem's ReLU and each block's act1
    CHECK(c[1].name == "layer2");
    CHECK(c[1].relus == 6 * 32 * 14 * 14);
    CHECK(c[1].thinned == 3 * 32 * 14 * 14);
    CHECK(c[2].name == "layer3");
    CHECK(c[2].relus == 6 * 64 * 7 * 7);
    CHECK(c[2].thinned == 3 * 64 * 7 * 7);
  }
  SECTION("resnet18 without the stem ReLU: stage 1 culled, the rest thinned, at widths 1 and 0.5 (published counts)") {
    ModelSpec spec{"resnet18", {3, 32, 32}, 10, false};
    auto culled_thinned = [](const std::vector<StageCount>& c) {
      int64_t sum = 0;
      for (size_t s = 1; s < c.size(); ++s) sum += c[s].thinned;
      return sum;
    };
    const auto full = stage_counts(spec);
    REQUIRE(full.size() == 4);
    CHECK(full[0].name == "layer1");
    CHECK(full[0].relus == 262144);
    CHECK(culled_thinned(full) == 114688);
    spec.width = 0.5;
    CHECK(culled_thinned(stage_counts(spec)) == 57344);
  }
  SECTION("wrn-22-8: one stage per group") {
    const auto c = stage_counts({"wrn-22-8", {3, 32, 32}, 10, true});
    REQUIRE(c.size() == 3);
    for (const auto& s : c) CHECK(s.sites == 6);
    CHECK(c[0].thinned * 2 == c[0].relus + 16 * 32 * 32 - 128 * 32 * 32);  // act1 of block 0 sees the 16-channel stem
  }
  SECTION("vgg16: one stage per block and the classifier") {
    const auto c = stage_counts({"vgg16", {3, 32, 32}, 10, true});
    REQUIRE(c.size() == 6);
    const std::vector<size_t> sites{2, 2, 3, 3, 3, 1};
    for (size_t s = 0; s < c.size(); ++s) CHECK(c[s].sites == sites[s]);
    CHECK(c[0].thinned == 64 * 32 * 32);
    CHECK(c[2].thinned == 2 * 256 * 8 * 8);  // every other ReLU layer: the 1st and 3rd
    CHECK(c[5].name == "classifier");
  }
  SECTION("cnn-small and mlp: one stage per layer") {
    CHECK(stage_counts({"cnn-small", {1, 28, 28}, 10, true}).size() == 3);
    CHECK(stage_counts({"mlp", {1, 28, 28}, 10, true}).size() == 2);
  }
}

TEST_CASE("width and stem stride reshape ResNets and WRNs and are refused elsewhere", "[models][stages]") {
  ModelSpec spec{"resnet20", {1, 28, 28}, 10, true};
  spec.width = 0.5;
  CHECK(layers::total_relus(build_model(spec, layers::relu_factory())->sites()) == 144256 / 2);
  spec.width = 1.0;
  spec.stem_stride = 2;  // 14x14, 7x7, 4x4 feature maps
  CHECK(layers::total_relus(build_model(spec, layers::relu_factory())->sites()) ==
        7 * 16 * 14 * 14 + 6 * 32 * 7 * 7 + 6 * 64 * 4 * 4);
  CHECK(spec_from_json(spec_to_json(spec)).stem_stride == 2);
  CHECK_FALSE(spec_to_json(ModelSpec{}).contains("width"));  // checkpoints of full-size models stay as they were
  ModelSpec small{"cnn-small", {1, 28, 28}, 10, true};
  small.width = 0.5;
  CHECK_THROWS_WITH(build_model(small, layers::relu_factory()), Catch::Contains("resnet18, resnet20 and wrn-22-8 only"));
  spec.width = 0;
  CHECK_THROWS_WITH(build_model(spec, layers::relu_factory()), Catch::Contains("width must be in (0, 16]"));
}

TEST_CASE("the folded network gives every model's eval logits to float rounding and leaves its input alone",
          "[models][folded]") {
  torch::manual_seed(5);
  for (const auto& name : model_names()) {
    const bool big = name == "wrn-22-8" || name == "vgg16";
    ModelSpec spec{name, big ? std::vector<int64_t>{3, 32, 32} : std::vector<int64_t>{1, 28, 28}, 7, true};
    if (name == "wrn-22-8") spec.width = 0.125;
    INFO(name);
    Net net = build_model(spec, layers::relu_factory());
    const auto x = torch::randn({4, spec.input_shape[0], spec.input_shape[1], spec.input_shape[2]});
    // A few training forwards, so the running statistics (hence the folding) are not the identity.
    for (int i = 0; i < 2; ++i) net->forward(torch::randn_like(x) * 2 + 0.5);
    net->eval();
    torch::Tensor want;
    {
      torch::NoGradGuard ng;
      want = net->forward(x);
    }
    const torch::Tensor before = x.clone();
    for (bool channels_last : {false, true}) {
      const FoldedNet folded(*net, torch::kFloat, torch::kCPU, channels_last);
      const torch::Tensor got = folded.forward(x);
      CHECK(torch::equal(x, before));  // in-place operations never touch the input
      CHECK_FALSE(got.requires_grad());
      REQUIRE(got.sizes() == want.sizes());
      const double scale = want.abs().max().item<double>();
      CHECK((got - want).abs().max().item<double>() <= 1e-4 * scale + 1e-5);
    }
  }
}

TEST_CASE("the folded network makes no batch-norm pass, copies its weights and refuses non-ReLU sites",
          "[models][folded]") {
  const ModelSpec spec{"resnet20", {1, 28, 28}, 10, true};
  Net net = build_model(spec, layers::relu_factory());
  net->eval();
  // resnet20: 21 convolutions (2 of them shortcuts), 19 ReLUs, 9 additions, pool, linear;
  // its 21 batch norms are folded away.
  const FoldedNet folded(*net, torch::kFloat, torch::kCPU);
  CHECK(folded.size() == 21 + 19 + 9 + 2);
  const auto x = torch::randn({2, 1, 28, 28});
  const torch::Tensor first = folded.forward(x);
  {
    torch::NoGradGuard ng;
    for (auto& p : net->parameters()) p.zero_();
  }
  CHECK(torch::equal(folded.forward(x), first));  // its own copy of the weights
  const FoldedNet bf16(*net, torch::kBFloat16, torch::kCPU);
  CHECK(bf16.forward(x).scalar_type() == torch::kBFloat16);

  Net gated = build_model(spec, layers::gate_factory(layers::GateOptions{}));
  CHECK_THROWS_WITH(FoldedNet(*gated, torch::kFloat, torch::kCPU), Catch::Contains("site act1 is not a ReLU"));
}
