#include "tests/torch_catch.h"
#include "tests/trainer/test_util.h"

#include <filesystem>
#include <fstream>

#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/train.h"

using namespace autorep::trainer;
namespace fs = std::filesystem;
using autorep::test::fresh_dir;
using autorep::test::have_fashion_mnist;

namespace {


Config tiny_config() {
  Config c;
  c.method = "baseline";
  c.model.name = "cnn-small";
  c.data.limit_train = 512;
  c.data.limit_test = 256;
  c.data.batch_size = 64;
  c.train.epochs = 2;
  c.train.threads = 2;
  c.train.device = "cpu";
  c.train.checkpoint_interval_s = 0;
  c.optim.lr = 0.05;
  return c;
}

std::vector<double> train_losses(const fs::path& run) {
  std::vector<double> out;
  for (const auto& j : autorep::test::read_metrics(run, "epoch")) out.push_back(j["train_loss"].get<double>());
  return out;
}


}  // namespace

TEST_CASE("a run stopped mid-epoch and resumed reproduces the uninterrupted run", "[train][resume]") {
  if (!have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed; skipped");
    return;
  }
  const Config c = tiny_config();
  const auto a = fresh_dir("full"), b = fresh_dir("resumed");
  RunOptions oa;
  oa.out_dir = a.string();
  oa.quiet = true;
  const RunResult ra = run_training(c, oa);
  REQUIRE(ra.completed);

  RunOptions ob = oa;
  ob.out_dir = b.string();
  ob.stop_after_steps = 5;  // inside the first epoch (8 steps per epoch)
  REQUIRE_FALSE(run_training(c, ob).completed);
  ob.stop_after_steps = 6;  // across the epoch boundary, into the second epoch
  ob.resume = true;
  REQUIRE_FALSE(run_training(c, ob).completed);
  ob.stop_after_steps = -1;
  const RunResult rb = run_training(c, ob);
  REQUIRE(rb.completed);

  const auto la = train_losses(a), lb = train_losses(b);
  REQUIRE(la.size() == 2);
  REQUIRE(lb.size() == 2);
  for (size_t i = 0; i < la.size(); ++i) CHECK(lb[i] == Approx(la[i]).epsilon(1e-9));
  CHECK(rb.final_accuracy == Approx(ra.final_accuracy).epsilon(1e-12));

  LoadedModel ma = load_model((a / "checkpoints" / "last.pt").string());
  LoadedModel mb = load_model((b / "checkpoints" / "last.pt").string());
  auto pa = ma.model->named_parameters(), pb = mb.model->named_parameters();
  for (const auto& kv : pa) CHECK(torch::allclose(kv.value(), pb[kv.key()], 1e-6, 1e-7));
  auto ba = ma.model->named_buffers(), bb = mb.model->named_buffers();
  for (const auto& kv : ba) CHECK(torch::allclose(kv.value().to(torch::kDouble), bb[kv.key()].to(torch::kDouble), 1e-6, 1e-7));
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST_CASE("checkpoints round-trip parameters, buffers and optimiser state", "[train][checkpoint]") {
  ModelSpec spec{"cnn-small", {1, 28, 28}, 10, true};
  Net net = build_model(spec, autorep::layers::relu_factory());
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  net->train();
  auto x = torch::randn({8, 1, 28, 28});
  auto loss = net->forward(x).pow(2).mean();
  loss.backward();
  opt.step();  // creates momentum buffers and moves the BN running statistics
  const auto dir = fresh_dir("ckpt");
  const std::string path = (dir / "c.pt").string();
  CheckpointMeta meta{nlohmann::json{{"method", "baseline"}}, nlohmann::json{{"model_spec", spec_to_json(spec)}, {"epoch", 3}}};
  save_checkpoint(path, *net, &opt, meta);
  REQUIRE(fs::exists(path));
  for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename() == "c.pt");  // no temp files left

  Net other = build_model(spec, autorep::layers::relu_factory());
  torch::optim::SGD opt2(other->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  load_checkpoint(path, *other, &opt2);
  for (const auto& kv : net->named_parameters()) CHECK(torch::equal(kv.value(), other->named_parameters()[kv.key()]));
  for (const auto& kv : net->named_buffers()) CHECK(torch::equal(kv.value(), other->named_buffers()[kv.key()]));
  // Same momentum: one more identical step keeps the two models identical.
  for (auto* m : {&net, &other}) {
    (*m)->zero_grad();
    (*m)->forward(x).pow(2).mean().backward();
  }
  opt.step();
  opt2.step();
  for (const auto& kv : net->named_parameters()) CHECK(torch::equal(kv.value(), other->named_parameters()[kv.key()]));
  const CheckpointMeta back = read_checkpoint_meta(path);
  CHECK(back.state["epoch"] == 3);
  CHECK(back.config["method"] == "baseline");
  CHECK_THROWS_WITH(read_checkpoint_meta((dir / "missing.pt").string()), Catch::Contains("missing.pt"));
  fs::remove_all(dir);
}

TEST_CASE("result.json: the exported model's numbers for reductions, the best checkpoint's for baselines",
          "[train]") {
  RunResult r;
  r.out_dir = "runs/x";
  r.best_accuracy = 0.9;
  r.final_accuracy = 0.89;
  r.kept_relus = 1000;
  r.total_relus = 18880;
  r.seconds = 12.5;
  r.completed = true;
  Config c;
  const nlohmann::json b = run_result_json(c, r);
  CHECK(b.at("method") == "baseline");
  CHECK(b.at("accuracy") == 0.9);
  CHECK(b.at("checkpoint") == "checkpoints/best.pt");
  c.method = "autorep";
  c.search.budget = "5%";
  r.summary = {{"path", "runs/x/export/mask.json"}, {"kept", 944}, {"accuracy", 0.88}};
  const nlohmann::json a = run_result_json(c, r);
  CHECK(a.at("method") == "autorep");
  CHECK(a.at("budget") == "5%");
  CHECK(a.at("relu_count") == 944);
  CHECK(a.at("accuracy") == 0.88);
  CHECK(a.at("best_accuracy") == 0.9);
  CHECK(a.at("seconds") == 12.5);
  CHECK(a.at("export_path") == "export/mask.json");
}
