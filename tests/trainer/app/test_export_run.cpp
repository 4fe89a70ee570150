#include "tests/torch_catch.h"

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>

#include "search/budget.h"
#include "tests/search/export/export_fixtures.h"
#include "trainer/app/export_run.h"
#include "trainer/data/dataset.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/config.h"
#include "trainer/engine/device.h"
#include "trainer/methods/registry.h"
#include "trainer/methods/run_model.h"
#include "trainer/models/registry.h"

using namespace autorep;
using namespace autorep::trainer;
using namespace autorep::trainer::app;
using namespace autorep::test::export_fixtures;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;
using exports::ExportJson;
using autorep::test::read_text;

namespace {

models::ModelSpec model_spec(const TinySpec& s) { return models::ModelSpec{s.name, s.input_shape, s.classes, true}; }

// The real cnn-small with pixel gates of degree 2 (verify runs it forward).
models::Net gated_cnn(const TinySpec& spec) {
  return models::build_model(model_spec(spec), layers::gate_factory(gate_proto("pixel", 2)));
}

}  // namespace

TEST_CASE("verify passes on the trained model and fails when one mask bit is flipped", "[export]") {
  const auto spec = tiny_spec(8);
  auto trained = gated_cnn(spec);
  randomize_gates(*trained, 3);
  auto rebuilt = gated_cnn(spec);
  copy_state(*trained, *rebuilt);
  randomize_gates(*rebuilt, 4);  // the export, not the copy, must set masks and coefficients
  torch::manual_seed(5);
  const auto x = torch::randn({16, 1, 8, 8});
  const ExportJson doc = exports::build_export(trained->sites(), tiny_info(spec), exports::default_cost_table());

  auto ok = verify_models(exports::parse_export(doc, "e"), *trained, *rebuilt, x, 1e-5);
  INFO((ok.problems.empty() ? std::string() : ok.problems[0]));
  CHECK(ok.ok);
  CHECK(ok.max_abs_diff <= 1e-5);
  CHECK(ok.mask_mismatches == 0);
  CHECK(ok.samples == 16);

  // One bit of the linear site act3 (feeding the classifier directly), document kept consistent.
  ExportJson flipped = doc;
  flip_consistently(flipped, 2, 5);
  auto rebuilt2 = gated_cnn(spec);
  copy_state(*trained, *rebuilt2);
  auto bad = verify_models(exports::parse_export(flipped, "e"), *trained, *rebuilt2, x, 1e-5);
  CHECK(!bad.ok);
  CHECK(bad.mask_mismatches == 1);
  CHECK(bad.max_abs_diff > 1e-5);
  REQUIRE(!bad.problems.empty());
  CHECK_THAT(bad.problems[0], Contains("1 mask entries differ") && Contains("act3"));

  // A changed coefficient of a polynomial channel is caught too.
  ExportJson coef = doc;
  coef["sites"][2]["coefficients"]["c0"][0] = coef["sites"][2]["coefficients"]["c0"][0].get<double>() + 0.5;
  auto rebuilt3 = gated_cnn(spec);
  copy_state(*trained, *rebuilt3);
  auto bad2 = verify_models(exports::parse_export(coef, "e"), *trained, *rebuilt3, x, 1e-5);
  CHECK(!bad2.ok);
  CHECK(bad2.max_coefficient_diff == Approx(0.5));
}

TEST_CASE("export_checkpoint and verify_export work on a saved reduction checkpoint, also from the CLI",
          "[export][cli]") {
  if (!fs::exists(data::default_data_path("fashion-mnist") + "/t10k-images-idx3-ubyte.gz")) {
    WARN("Fashion-MNIST not installed: skipped");
    return;
  }
  // The threads the CLI calls below run with (`--threads 2`: LibTorch's and BLAS's), so the
  // export written here and the CLI's are computed alike, to the bit.
  const int threads_before = torch::get_num_threads();
  engine::configure_threads(2);
  engine::Config config;
  config.method = "autorep";
  config.model.name = "cnn-small";
  config.gate.granularity(layers::Granularity::Pixel);
  config.search.budget = "5%";
  config.train.device = "cpu";
  const auto spec = tiny_spec(28);
  auto method = methods::make_method(config);
  auto net = models::build_model(model_spec(spec), method->factory());
  randomize_gates(*net, 11);
  net->eval();
  const auto run = fresh_dir("run");
  const auto ckpt = (run / "checkpoints" / "best.pt").string();
  engine::save_checkpoint(ckpt, *net, nullptr,
                           {engine::to_json(config),
                            {{"model_spec", models::spec_to_json(model_spec(spec))}, {"epoch", 2}, {"step_in_epoch", 0}}});
  write_text(run / "metrics.jsonl",
             "{\"type\":\"eval\",\"epoch\":1,\"test_accuracy\":0.1}\n{\"type\":\"eval\",\"epoch\":2,\"test_accuracy\":0.42}\n");

  const auto out = (run / "export" / "mask.json").string();
  ExportOptions eo;
  eo.evaluate = false;
  const auto summary = export_checkpoint(ckpt, out, eo);
  CHECK(summary["kept"] == layers::kept_relus(net->sites()));
  CHECK(summary["target"] == search::resolve_budget(config.search.budget, layers::total_relus(net->sites())));
  const auto ex = exports::read_export(out);
  require_schema_valid(ex.doc);
  CHECK(ex.doc["accuracy"]["test"] == 0.42);
  CHECK(ex.doc["model"]["checkpoint_sha256"] == exports::sha256_file(ckpt));
  CHECK(ex.doc["method"] == "autorep");
  CHECK(ex.doc["dataset"] == "fashion-mnist");

  VerifyOptions vo;
  vo.batch = 32;
  const auto good = verify_export(out, ckpt, vo);
  INFO((good.problems.empty() ? std::string() : good.problems[0]));
  CHECK(good.ok);
  CHECK(good.samples == 32);

  ExportJson flipped = ex.doc;
  auto bytes = exports::base64_decode(flipped["sites"][0]["mask"]["data"].get<std::string>());
  bytes[0] ^= 1;
  flipped["sites"][0]["mask"]["data"] = exports::base64_encode(bytes);
  const auto flip_path = (run / "flip.json").string();
  write_text(flip_path, flipped.dump());
  const auto bad = verify_export(flip_path, ckpt, vo);
  CHECK(!bad.ok);
  REQUIRE(!bad.problems.empty());
  CHECK_THAT(bad.problems[0], Contains("sites[0].kept"));

  const std::string bin = AUTOREP_BINARY;
  if (!fs::exists(bin)) {
    WARN("no autorep binary at " << bin << ": CLI part skipped");
    return;
  }
  auto sh = [&](const std::string& args) {
    const std::string log = (run / "cli.log").string();
    const int rc = std::system((bin + " " + args + " > " + log + " 2>&1").c_str());
    return std::make_pair(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, read_text(log));
  };
  auto [rc, text] = sh("verify --threads 2 --batch 32 --export " + out + " --checkpoint " + ckpt);
  INFO(text);
  CHECK(rc == 0);
  CHECK_THAT(text, Contains("verify: OK"));
  std::tie(rc, text) = sh("verify --threads 2 --batch 32 --export " + flip_path + " --checkpoint " + ckpt);
  CHECK(rc != 0);
  CHECK_THAT(text, Contains("sites[0].kept"));
  std::tie(rc, text) = sh("inspect " + out);
  CHECK(rc == 0);
  CHECK_THAT(text, Contains("act1") && Contains("reduction") && Contains("kept=" + std::to_string(ex.kept)));
  std::tie(rc, text) = sh("inspect " + flip_path);
  CHECK(rc != 0);
  CHECK_THAT(text, Contains("sites[0].kept"));
  std::tie(rc, text) = sh("export --no-eval --threads 2 --run " + run.string() + " --out " + (run / "again.json").string());
  CHECK(rc == 0);
  CHECK(exports::read_export((run / "again.json").string()).doc["sites"] == ex.doc["sites"]);
  const auto cheap = run / "cheap.json";
  write_text(cheap, exports::to_json(exports::default_cost_table()).dump());
  std::tie(rc, text) = sh("inspect --cost-table " + cheap.string() + " " + out);
  CHECK(rc == 0);
  torch::set_num_threads(threads_before);
}

TEST_CASE("a checkpoint's own normalisation is what evaluation, verify and the ONNX graph use", "[export]") {
  if (!autorep::test::have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed: skipped");
    return;
  }
  engine::Config config;
  config.model.name = "cnn-small";
  const auto spec = tiny_spec(28);
  auto method = methods::make_method(config);
  auto net = models::build_model(model_spec(spec), method->factory());
  const auto run = fresh_dir("normalisation");
  const auto with = (run / "with.pt").string(), without = (run / "without.pt").string();
  const nlohmann::json base{{"model_spec", models::spec_to_json(model_spec(spec))}, {"epoch", 1}, {"step_in_epoch", 0}};
  nlohmann::json state = base;
  // What an image-folder run would record: its training set's statistics, not one image's.
  state["normalisation"] = {{"mean", {0.5}}, {"std", {0.25}}};
  engine::save_checkpoint(with, *net, nullptr, {engine::to_json(config), state});
  engine::save_checkpoint(without, *net, nullptr, {engine::to_json(config), base});
  data::DataOptions d = data::test_split_options(config.data);
  d.limit_test = 10;
  const auto a = methods::load_test_split(methods::load_model(with), d);
  CHECK(a.mean == std::vector<float>{0.5f});
  CHECK(a.std == std::vector<float>{0.25f});
  const auto b = methods::load_test_split(methods::load_model(without), d);
  CHECK(b.mean == std::vector<float>{0.2860f});  // the data set's own constants
  state["normalisation"] = {{"mean", {0.5, 0.5, 0.5}}, {"std", {0.25, 0.25, 0.25}}};
  const auto wrong = (run / "wrong.pt").string();
  engine::save_checkpoint(wrong, *net, nullptr, {engine::to_json(config), state});
  CHECK_THROWS_WITH(methods::load_test_split(methods::load_model(wrong), d), Contains("3-channel"));
}
