#include "tests/torch_catch.h"

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "layers/gate.h"
#include "tests/search/export/export_fixtures.h"
#include "trainer/deploy/onnx_export.h"
#include "trainer/deploy/onnx_runtime.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/config.h"
#include "trainer/methods/registry.h"
#include "trainer/models/registry.h"

using namespace autorep;
using namespace autorep::trainer;
using namespace autorep::test::export_fixtures;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

TempDirs temp_dirs;

fs::path temp_dir(const std::string& name) {
  const auto p = fresh_dir("onnx-" + name);
  fs::create_directories(p);
  temp_dirs.paths.push_back(p);
  return p;
}

// Every site gets one of the four forms by its index: all kept (Relu), all replaced by a
// polynomial, mixed (random mask; layer masks have one entry, so a random 0/1 there), and the
// identity (what snl and DeepReDuce's identity replacement leave).
void set_site_forms(models::NetImpl& net, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  const auto& sites = net.sites();
  for (size_t i = 0; i < sites.size(); ++i) {
    auto g = std::dynamic_pointer_cast<layers::GateImpl>(sites[i].module);
    REQUIRE(g);
    g->c0().copy_(0.1 * torch::randn_like(g->c0()));
    g->c1().copy_((1.0 + 0.2 * torch::randn_like(g->c1())) / g->options().scale1());
    g->c2().copy_(0.05 * torch::randn_like(g->c2()) / g->options().scale2());
    switch (i % 4) {
      case 0: g->mask().fill_(1.0); break;
      case 1: g->mask().fill_(0.0); break;
      case 2: g->mask().copy_(torch::bernoulli(torch::full_like(g->mask(), 0.5))); break;
      default:
        g->mask().fill_(0.0);
        g->c0().zero_();
        g->c1().fill_(1.0 / g->options().scale1());
        g->c2().zero_();
    }
  }
}

// Batch norms with running statistics and affine parameters away from their initial values,
// so folding them is really tested.
void randomize_batchnorms(torch::nn::Module& net, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& m : net.modules(/*include_self=*/false)) {
    if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      bn->running_mean.copy_(0.1 * torch::randn_like(bn->running_mean));
      bn->running_var.copy_(0.5 + torch::rand_like(bn->running_var));
      bn->weight.copy_(1.0 + 0.2 * torch::randn_like(bn->weight));
      bn->bias.copy_(0.1 * torch::randn_like(bn->bias));
    }
  }
}

const deploy::Normalisation& norm_for(int64_t channels) {
  static const deploy::Normalisation one{{0.2860f}, {0.3530f}};
  static const deploy::Normalisation three{{0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}};
  return channels == 1 ? one : three;
}

torch::Tensor normalised(const torch::Tensor& x01, const deploy::Normalisation& n) {
  const auto mean = torch::tensor(n.mean).view({1, -1, 1, 1});
  const auto std = torch::tensor(n.std).view({1, -1, 1, 1});
  return (x01 - mean) / std;
}

double max_relative_difference(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() /
         a.to(torch::kDouble).abs().max().item<double>();
}

bool have_python_onnx() { return std::system("/usr/bin/python3 -c 'import onnx' >/dev/null 2>&1") == 0; }

// python3-onnx's checker on the file, and every node a site names in the mask export exists.
void check_with_python_onnx(const fs::path& onnx_file, const exports::ExportJson& mask_doc) {
  if (!have_python_onnx()) {
    WARN("python3-onnx not installed: its checker skipped");
    return;
  }
  const auto names = onnx_file.string() + ".sites.json";
  write_text(names, mask_doc.dump());
  const std::string script =
      "import onnx, json, sys\n"
      "m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True)\n"
      "nodes = {n.name for n in m.graph.node}\n"
      "sites = json.load(open(sys.argv[2]))['sites']\n"
      "missing = [x for s in sites for x in s.get('onnx_nodes', []) if x not in nodes]\n"
      "sys.exit(3 if missing or not all('onnx_nodes' in s for s in sites) else 0)\n";
  const auto py = onnx_file.string() + ".check.py";
  write_text(py, script);
  const int rc = std::system(("/usr/bin/python3 " + py + " " + onnx_file.string() + " " + names).c_str());
  CHECK(WIFEXITED(rc));
  CHECK(WEXITSTATUS(rc) == 0);
}

// A model with gates of `granularity`, its sites in the four forms, batch norms randomised.
models::Net prepared(const models::ModelSpec& spec, const std::string& granularity, uint64_t seed) {
  auto net = models::build_model(spec, layers::gate_factory(gate_proto(granularity, 2)));
  set_site_forms(*net, seed);
  randomize_batchnorms(*net, seed + 1);
  net->eval();
  return net;
}

exports::ExportJson mask_doc(models::NetImpl& net) {
  return exports::build_export(net.sites(), tiny_info(net.spec()), exports::default_cost_table());
}

struct Family {
  std::string name;
  std::vector<int64_t> input;
  double width;
};

}  // namespace

TEST_CASE("the ONNX graph run by OpenCV DNN computes the LibTorch logits for every model family and granularity",
          "[onnx]") {
  // Narrow widths keep resnet18 and wrn-22-8 quick; the graphs have the same ops and sites.
  const Family family = GENERATE(Family{"mlp", {1, 8, 8}, 1.0}, Family{"cnn-small", {1, 12, 12}, 1.0},
                                 Family{"resnet20", {1, 16, 16}, 1.0}, Family{"resnet18", {3, 16, 16}, 0.25},
                                 Family{"wrn-22-8", {3, 16, 16}, 0.125}, Family{"vgg16", {3, 32, 32}, 1.0});
  const std::string granularity = GENERATE(std::string("pixel"), std::string("channel"), std::string("layer"));
  INFO(family.name << " " << granularity);
  models::ModelSpec spec;
  spec.name = family.name;
  spec.input_shape = family.input;
  spec.classes = 10;
  spec.width = family.width;
  auto net = prepared(spec, granularity, 7);
  exports::ExportJson doc = mask_doc(*net);
  const auto ex = exports::parse_export(doc, "mask");
  const auto& norm = norm_for(family.input[0]);
  const auto dir = temp_dir(family.name + "-" + granularity);
  const auto file = dir / "model.onnx";
  const auto summary = deploy::write_onnx(*net, ex, norm, file.string());
  CHECK(summary.bytes == static_cast<int64_t>(fs::file_size(file)));
  REQUIRE(summary.sites.size() == net->sites().size());
  for (size_t i = 0; i < summary.sites.size(); ++i) {
    const auto& s = summary.sites[i];
    CHECK(s.name == net->sites()[i].name);
    if (ex.sites[i].decision == "relu") {
      CHECK(s.form == "relu");
      CHECK(s.nodes.size() == 1);
    } else if (i % 4 == 3) {
      CHECK(s.form == "identity");
      CHECK(s.nodes.empty());
    } else {
      CHECK(s.form == (ex.sites[i].decision == "mixed" ? "mixed" : "polynomial"));
      CHECK(!s.nodes.empty());
    }
  }

  torch::manual_seed(9);
  const auto x01 = torch::rand({3, family.input[0], family.input[1], family.input[2]});
  torch::NoGradGuard no_grad;
  const auto expected = net->forward(normalised(x01, norm));
  deploy::OpenCvNet cv(file.string());
  const auto got = cv.forward(x01);
  REQUIRE(got.sizes() == expected.sizes());
  CHECK(max_relative_difference(expected, got) <= 1e-4);

  deploy::add_onnx_nodes(doc, summary);
  CHECK_NOTHROW(exports::parse_export(doc, "mask with nodes"));  // the optional field reads back
  require_schema_valid(doc);
  if (family.name == "resnet20" || family.name == "mlp") check_with_python_onnx(file, doc);
}

TEST_CASE("batch norms kept as BatchNormalization nodes compute the same as folded ones", "[onnx]") {
  models::ModelSpec spec;
  spec.name = GENERATE(std::string("resnet20"), std::string("wrn-22-8"));
  spec.input_shape = {1, 16, 16};
  spec.width = spec.name == "wrn-22-8" ? 0.125 : 1.0;
  auto net = prepared(spec, "channel", 3);
  const auto ex = exports::parse_export(mask_doc(*net), "m");
  const auto dir = temp_dir("bn-" + spec.name);
  deploy::OnnxOptions keep;
  keep.keep_batchnorm = true;
  const auto folded = deploy::write_onnx(*net, ex, norm_for(1), (dir / "folded.onnx").string());
  const auto kept = deploy::write_onnx(*net, ex, norm_for(1), (dir / "kept.onnx").string(), keep);
  CHECK(kept.nodes > folded.nodes);  // one BatchNormalization per batch norm instead of none

  torch::manual_seed(1);
  const auto x01 = torch::rand({2, 1, 16, 16});
  torch::NoGradGuard no_grad;
  const auto expected = net->forward(normalised(x01, norm_for(1)));
  deploy::OpenCvNet a((dir / "folded.onnx").string()), b((dir / "kept.onnx").string());
  CHECK(max_relative_difference(expected, a.forward(x01)) <= 1e-4);
  CHECK(max_relative_difference(expected, b.forward(x01)) <= 1e-4);
}

TEST_CASE("an export that does not fit the model, or a file OpenCV cannot read, is refused with the reason", "[onnx]") {
  models::ModelSpec spec;
  spec.input_shape = {1, 12, 12};
  auto net = models::build_model(spec, layers::gate_factory(gate_proto("pixel", 2)));
  set_site_forms(*net, 1);
  models::ModelSpec other = spec;
  other.name = "mlp";
  auto mlp = models::build_model(other, layers::gate_factory(gate_proto("pixel", 2)));
  const auto ex = exports::parse_export(mask_doc(*mlp), "m");
  const auto dir = temp_dir("refused");
  CHECK_THROWS_WITH(deploy::write_onnx(*net, ex, norm_for(1), (dir / "x.onnx").string()),
                    Contains("does not fit the model"));
  CHECK(!fs::exists(dir / "x.onnx"));
  CHECK_THROWS_WITH(deploy::write_onnx(*mlp, ex, norm_for(3), (dir / "x.onnx").string()), Contains("normalisation"));
  write_text(dir / "junk.onnx", "not a protobuf");
  CHECK_THROWS_WITH(deploy::OpenCvNet((dir / "junk.onnx").string()), Contains("OpenCV DNN cannot load it"));
}

TEST_CASE("autorep export --onnx and verify --onnx on a saved reduction checkpoint", "[onnx][cli]") {
  if (!autorep::test::have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed: skipped");
    return;
  }
  const std::string bin = AUTOREP_BINARY;
  REQUIRE(fs::exists(bin));
  engine::Config config;
  config.method = "autorep";
  config.model.name = "cnn-small";
  config.gate.granularity(layers::Granularity::Channel);
  config.search.budget = "5%";
  config.data.limit_test = 500;
  models::ModelSpec spec;
  spec.input_shape = {1, 28, 28};
  auto make = [&](uint64_t seed, const fs::path& run) {
    auto method = methods::make_method(config);
    auto net = models::build_model(spec, method->factory());
    set_site_forms(*net, seed);
    randomize_batchnorms(*net, seed + 1);  // (the method's own gate options, not prepared()'s)
    engine::save_checkpoint((run / "checkpoints" / "best.pt").string(), *net, nullptr,
                            {engine::to_json(config),
                             {{"model_spec", models::spec_to_json(spec)}, {"epoch", 2}, {"step_in_epoch", 0}}});
  };
  const auto run = temp_dir("cli-run"), other = temp_dir("cli-other");
  make(21, run);
  make(22, other);
  auto sh = [&](const std::string& args) {
    const std::string log = (run / "cli.log").string();
    const int rc = std::system((bin + " " + args + " > " + log + " 2>&1").c_str());
    return std::make_pair(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, read_text(log));
  };
  const auto onnx = (run / "model.onnx").string(), mask = (run / "mask.json").string();
  auto [rc, text] = sh("export --no-eval --threads 2 --run " + run.string() + " --onnx " + onnx + " --out " + mask);
  INFO(text);
  REQUIRE(rc == 0);
  CHECK_THAT(text, Contains("ONNX opset 13"));
  const auto ex = exports::read_export(mask);
  for (const auto& s : ex.sites) CHECK(!s.onnx_nodes.empty());  // relu, polynomial and mixed sites: none is the identity
  std::tie(rc, text) = sh("verify --threads 2 --eval --onnx " + onnx + " --checkpoint " + run.string() + "/checkpoints/best.pt");
  CHECK(rc == 0);
  CHECK_THAT(text, Contains("verify: OK") && Contains("0 predictions differ") && Contains("over 500 images"));
  // The graph of another checkpoint does not reproduce this one.
  std::tie(rc, text) = sh("verify --threads 2 --onnx " + onnx + " --checkpoint " + other.string() + "/checkpoints/best.pt");
  CHECK(rc == 1);
  CHECK_THAT(text, Contains("verify: FAILED") && Contains("logits differ"));
  std::tie(rc, text) = sh("verify --export " + mask + " --onnx " + onnx + " --checkpoint " + onnx);
  CHECK(rc != 0);

  // Value ranges (recorded by default) and the integer bits they need; fixed-point evaluation.
  CHECK(ex.doc["sites"][0].contains("range"));
  std::tie(rc, text) = sh("inspect " + mask);
  CHECK(rc == 0);
  CHECK_THAT(text, Contains("in bits") && Contains("value ranges over 10,000 training images"));
  const std::string ckpt = run.string() + "/checkpoints/best.pt";
  std::tie(rc, text) = sh("verify --threads 2 --fixed-point 64.13 --checkpoint " + ckpt);
  CHECK(rc == 0);
  CHECK_THAT(text, Contains("0 images leave the range") && Contains("over 256 images"));
  // 6.4 holds |x| < 2: the normalised white pixels (2.02) already leave it.
  std::tie(rc, text) = sh("verify --threads 2 --fixed-point 6.4 --checkpoint " + ckpt);
  CHECK(rc == 1);
  CHECK_THAT(text, Contains("leave the range of 6.4"));
  std::tie(rc, text) = sh("verify --fixed-point 64 --checkpoint " + ckpt);
  CHECK(rc != 0);
  CHECK_THAT(text, Contains("TOTAL.FRACTION"));
}
