#include "tests/torch_catch.h"

#include <limits>

#include "layers/gate.h"
#include "tests/search/export/export_fixtures.h"
#include "trainer/deploy/graph_eval.h"
#include "trainer/models/registry.h"

using namespace autorep;
using namespace autorep::trainer;
using namespace autorep::test::export_fixtures;
using Catch::Matchers::Contains;

namespace {

// cnn-small (or resnet20) with pixel gates: act1 all kept, act2 mixed, the rest polynomial.
models::Net gated(const std::string& name, uint64_t seed) {
  models::ModelSpec spec;
  spec.name = name;
  spec.input_shape = {1, 12, 12};
  auto net = models::build_model(spec, layers::gate_factory(gate_proto("pixel", 2)));
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  const auto& sites = net->sites();
  for (size_t i = 0; i < sites.size(); ++i) {
    auto g = std::dynamic_pointer_cast<layers::GateImpl>(sites[i].module);
    g->c0().copy_(0.1 * torch::randn_like(g->c0()));
    g->c1().copy_(torch::ones_like(g->c1()) / g->options().scale1());
    g->c2().copy_(0.05 * torch::rand_like(g->c2()) / g->options().scale2());
    g->mask().copy_(i == 0 ? torch::ones_like(g->mask())
                           : (i == 1 ? torch::bernoulli(torch::full_like(g->mask(), 0.5)) : torch::zeros_like(g->mask())));
  }
  net->eval();
  return net;
}

exports::MaskExport export_of(models::NetImpl& net) {
  exports::ExportInfo info = tiny_info(net.spec());
  return exports::parse_export(exports::build_export(net.sites(), info, exports::default_cost_table()), "m");
}

const deploy::Normalisation kNorm{{0.2860f}, {0.3530f}};

torch::Tensor libtorch_logits(models::NetImpl& net, const torch::Tensor& x01) {
  torch::NoGradGuard no_grad;
  return net.forward((x01 - kNorm.mean[0]) / kNorm.std[0]);
}

}  // namespace

TEST_CASE("the graph evaluator computes the model's logits; fine fixed point stays close, a narrow format overflows",
          "[onnx][fixed-point]") {
  const std::string name = GENERATE(std::string("cnn-small"), std::string("resnet20"));
  auto net = gated(name, 3);
  const auto ex = export_of(*net);
  torch::manual_seed(4);
  const auto x01 = torch::rand({4, 1, 12, 12});
  const auto expected = libtorch_logits(*net, x01).to(torch::kDouble);
  const double scale = expected.abs().max().item<double>();

  deploy::GraphEvaluator as_float(*net, ex, kNorm);
  CHECK((as_float.forward(x01).to(torch::kDouble) - expected).abs().max().item<double>() <= 1e-4 * scale);

  deploy::GraphEvaluator fine(*net, ex, kNorm, deploy::FixedPoint::parse("64.24"));
  torch::Tensor outside;
  const auto q = fine.forward(x01, &outside);
  CHECK(!outside.any().item<bool>());
  CHECK((q - expected).abs().max().item<double>() <= 1e-3 * scale);

  // 12 bits with 8 after the point hold |x| < 8: the first convolution's outputs already leave it.
  deploy::GraphEvaluator narrow(*net, ex, kNorm, deploy::FixedPoint::parse("12.8"));
  narrow.forward(x01 * 40, &outside);
  CHECK(outside.all().item<bool>());
}

TEST_CASE("observed ranges are the true extremes of each site's input and output", "[onnx][fixed-point]") {
  auto net = gated("cnn-small", 5);
  const auto ex = export_of(*net);
  torch::manual_seed(6);
  const auto images = torch::randint(0, 256, {30, 1, 12, 12}, torch::kLong).to(torch::kUInt8);
  const auto ranges = deploy::observe_ranges(*net, ex, kNorm, images, /*batch=*/7, 0.99);
  REQUIRE(ranges.size() == 3);

  // The first site's input by hand: bn1(conv1(normalised x)).
  torch::NoGradGuard no_grad;
  const auto x = (images.to(torch::kFloat) / 255.0f - kNorm.mean[0]) / kNorm.std[0];
  const auto conv1 = net->named_modules()["conv1"]->as<torch::nn::Conv2d>();
  const auto bn1 = net->named_modules()["bn1"]->as<torch::nn::BatchNorm2d>();
  const auto in = bn1->forward(conv1->forward(x));
  CHECK(ranges[0].input.min == Approx(in.min().item<double>()).margin(1e-5));
  CHECK(ranges[0].input.max == Approx(in.max().item<double>()).margin(1e-5));
  CHECK(ranges[0].output.min >= 0.0);  // act1 keeps every ReLU
  CHECK(ranges[0].output.max == Approx(in.max().item<double>()).margin(1e-5));
  // The percentile lies within a 1/16 octave above the true quantile of |x|.
  const auto sorted = std::get<0>(in.abs().flatten().sort());
  const double q = sorted[static_cast<int64_t>(0.99 * (sorted.numel() - 1))].item<double>();
  CHECK(ranges[0].input.abs_percentile >= q * 0.999);
  CHECK(ranges[0].input.abs_percentile <= q * std::exp2(1.0 / 16) * 1.001);

  exports::ExportJson doc = exports::build_export(net->sites(), tiny_info(net->spec()), exports::default_cost_table());
  deploy::add_ranges(doc, ranges, 30, 0.99);
  CHECK_NOTHROW(exports::parse_export(doc, "ranges"));
  require_schema_valid(doc);
  doc["sites"][1]["range"]["output"]["min"] = 1e9;  // min > max
  CHECK_THROWS_WITH(exports::parse_export(doc, "ranges"), Contains("sites[1].range.output") && Contains("min > max"));
}

TEST_CASE("the |x| histogram bins every value as floor(16 (log2|x| + 48)), at any thread count", "[onnx][fixed-point]") {
  using deploy::AbsHistogram;
  torch::manual_seed(8);
  // Magnitudes over the whole binned span and beyond, both signs, zeros, subnormals, infinities
  // and NaNs; edges of the octave's sub-bins (2^(k/16)) and their float neighbours.
  auto values = torch::cat({torch::randn({20000}, torch::kDouble) * torch::exp2(torch::randint(-60, 90, {20000}).to(torch::kDouble)),
                            torch::zeros({50}, torch::kDouble),
                            torch::exp2(torch::arange(0, 16, torch::kDouble) / 16) * 3.0,
                            torch::tensor({1e-300, -1e-310, 1.0, -2.0, 0.5, std::exp2(-48.0), std::exp2(80.0), 1e30,
                                           std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                                           std::numeric_limits<double>::quiet_NaN()},
                                          torch::kDouble)});
  for (const auto dtype : {torch::kFloat, torch::kDouble}) {
    const auto x = values.to(dtype);
    // The formula, with ATen ops in float64 (how the ranges were first computed).
    const auto a = x.to(torch::kDouble).abs();
    const auto nz = a.masked_select(a > 0);
    const auto pos = ((nz.log2().clamp(AbsHistogram::kLow, AbsHistogram::kHigh - 1e-9) - AbsHistogram::kLow) *
                      AbsHistogram::kPerOctave).floor().to(torch::kLong);
    const auto expected = torch::bincount(pos, {}, AbsHistogram::kBins).to(torch::kDouble);
    const int threads = torch::get_num_threads();
    for (const int t : {1, 2, 3}) {
      torch::set_num_threads(t);
      AbsHistogram h;
      h.add(x.slice(0, 0, 7000));
      h.add(x.slice(0, 7000));
      torch::set_num_threads(threads);
      INFO((dtype == torch::kFloat ? "float32, " : "float64, ") << t << " threads");
      const auto got = torch::tensor(h.counts(), torch::kDouble);
      CHECK(torch::equal(got, expected));
      CHECK(h.total() == static_cast<double>(x.numel()));
      CHECK(h.zeros() == static_cast<double>(x.numel() - nz.numel()));  // NaN counts with the zeros
      const auto r = h.range(0.5);
      CHECK(r.min == -std::numeric_limits<double>::infinity());
      CHECK(r.max == std::numeric_limits<double>::infinity());
      // The median |x| lies in the bin whose upper edge is reported.
      const auto sorted = std::get<0>(torch::nan_to_num(a, 0.0).sort());  // NaN as a zero, as counted
      const double median = sorted[static_cast<int64_t>(std::ceil(0.5 * static_cast<double>(x.numel()))) - 1].item<double>();
      CHECK(r.abs_percentile >= median);
      CHECK(r.abs_percentile <= median * std::exp2(1.0 / 16) * (1 + 1e-12));
    }
  }
  AbsHistogram empty;
  CHECK(empty.range(0.99).abs_percentile == 0.0);
}

TEST_CASE("fixed-point formats are parsed with a clear error; integer bits count the sign", "[fixed-point]") {
  const auto f = deploy::FixedPoint::parse("64.13");
  CHECK(f.total == 64);
  CHECK(f.fraction == 13);
  CHECK(f.limit() == std::ldexp(1.0, 50));
  for (const char* bad : {"64", "64.", ".13", "13.64", "64.13x", "65.1", "64.5"})
    CHECK_THROWS_WITH(deploy::FixedPoint::parse(bad), Contains(bad));
  CHECK(deploy::integer_bits(0.5) == 1);
  CHECK(deploy::integer_bits(1.0) == 2);
  CHECK(deploy::integer_bits(7.9) == 4);
  CHECK(deploy::integer_bits(8.0) == 5);
}
