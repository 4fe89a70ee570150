#include "tests/torch_catch.h"
#include "tests/trainer/engine/plain_method.h"
#include "tests/trainer/test_util.h"

#include <chrono>
#include <filesystem>
#include <fstream>

#include "layers/gate.h"
#include "trainer/engine/device.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/config.h"
#include "trainer/data/dataset.h"
#include "trainer/engine/evaluate.h"
#include "trainer/engine/run_result.h"
#include "trainer/models/registry.h"
#include "trainer/engine/spike_guard.h"
#include "trainer/engine/step.h"
#include "trainer/engine/interrupt.h"
#include "trainer/engine/loop.h"
#include "trainer/engine/reporter.h"

#include <sys/resource.h>

#include <csignal>

using namespace autorep::trainer;
using namespace autorep::trainer::engine;
using namespace autorep::trainer::models;
using namespace autorep::trainer::data;
using autorep::test::load_model;
using autorep::test::run_training;
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

  auto ma = load_model((a / "checkpoints" / "last.pt").string());
  auto mb = load_model((b / "checkpoints" / "last.pt").string());
  auto pa = ma.model->named_parameters(), pb = mb.model->named_parameters();
  for (const auto& kv : pa) CHECK(torch::allclose(kv.value(), pb[kv.key()], 1e-6, 1e-7));
  auto ba = ma.model->named_buffers(), bb = mb.model->named_buffers();
  for (const auto& kv : ba) CHECK(torch::allclose(kv.value().to(torch::kDouble), bb[kv.key()].to(torch::kDouble), 1e-6, 1e-7));
  fs::remove_all(a);
  fs::remove_all(b);
}

namespace {

// The plain method, signalling its own process after a chosen step (as `kill -TERM` would).
class SignalAfterStep : public autorep::test::PlainMethod {
 public:
  SignalAfterStep(const Config& config, int64_t step) : PlainMethod(config), step_(step) {}
  void after_step(TrainContext& ctx) override {
    if (ctx.global_step == step_) std::raise(SIGTERM);
  }

 private:
  int64_t step_;
};

}  // namespace

TEST_CASE("SIGTERM mid-epoch writes last.pt, stops with the signal, and the resume reproduces the run",
          "[train][resume][signal]") {
  if (!have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed; skipped");
    return;
  }
  interrupt::install();
  const Config c = tiny_config();
  const auto a = fresh_dir("sig-full"), b = fresh_dir("sig-stopped");
  RunOptions oa;
  oa.out_dir = a.string();
  oa.quiet = true;
  const RunResult ra = run_training(c, oa);
  REQUIRE(ra.completed);

  RunOptions ob = oa;
  ob.out_dir = b.string();
  SignalAfterStep signalling(c, 5);  // raised in step 5; the run stops after step 6 (of 7)
  try {
    autorep::trainer::engine::run_training(c, signalling, ob);
    FAIL("the run did not stop on SIGTERM");
  } catch (const interrupt::Interrupted& e) {
    CHECK(e.signal == SIGTERM);
    CHECK(interrupt::exit_code(e.signal) == 143);
    CHECK_THAT(e.what(), Catch::Contains("SIGTERM") && Catch::Contains("epoch 1 step 6 of ") &&
                             Catch::Contains("last.pt") && Catch::Contains("--resume"));
  }
  interrupt::clear();
  REQUIRE(fs::exists(b / "checkpoints" / "last.pt"));
  CHECK(read_checkpoint_meta((b / "checkpoints" / "last.pt").string()).state["step_in_epoch"] == 6);
  CHECK(autorep::test::read_metrics(b, "epoch").empty());  // stopped inside the first epoch

  ob.resume = true;
  const RunResult rb = run_training(c, ob);
  REQUIRE(rb.completed);
  const auto la = train_losses(a), lb = train_losses(b);
  REQUIRE(lb.size() == la.size());
  for (size_t i = 0; i < la.size(); ++i) CHECK(lb[i] == Approx(la[i]).epsilon(1e-9));
  CHECK(rb.final_accuracy == Approx(ra.final_accuracy).epsilon(1e-12));
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST_CASE("a checkpoint write that fails (file-size limit) is one error naming the file and keeps the old one",
          "[train][checkpoint]") {
  ModelSpec spec{"cnn-small", {1, 28, 28}, 10, true};
  Net net = build_model(spec, autorep::layers::relu_factory());
  const auto dir = fresh_dir("ckpt-full");
  const std::string path = (dir / "last.pt").string();
  const CheckpointMeta meta{nlohmann::json{{"method", "baseline"}}, nlohmann::json{{"epoch", 1}}};
  save_checkpoint(path, *net, nullptr, meta);
  const auto old_size = fs::file_size(path);
  REQUIRE(old_size > 64 * 1024);

  {
    torch::NoGradGuard no_grad;
    for (auto& p : net->parameters()) p.add_(1.0);
  }
  auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);  // as autorep does: EFBIG instead of a kill
  rlimit saved{};
  REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  rlimit small = saved;
  small.rlim_cur = 64 * 1024;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
  std::string error;
  try {
    save_checkpoint(path, *net, nullptr, meta);
  } catch (const std::exception& e) {
    error = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  CHECK_THAT(error, Catch::Contains(path) && Catch::Contains("cannot write") && Catch::Contains("too large"));
  CHECK(fs::file_size(path) == old_size);
  for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename() == "last.pt");  // no temp file
  Net back = build_model(spec, autorep::layers::relu_factory());
  load_checkpoint(path, *back, nullptr);  // the old checkpoint is whole
  for (const auto& kv : back->named_parameters())
    CHECK_FALSE(torch::equal(kv.value(), net->named_parameters()[kv.key()]));
  fs::remove_all(dir);
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

TEST_CASE("loading a checkpoint leaves the global RNG alone unless it resumes", "[train][checkpoint]") {
  ModelSpec spec{"mlp", {1, 4, 4}, 3, true};
  Net net = build_model(spec, autorep::layers::relu_factory());
  const auto dir = fresh_dir("ckpt-rng");
  const std::string path = (dir / "c.pt").string();
  torch::manual_seed(11);
  save_checkpoint(path, *net, nullptr, CheckpointMeta{nlohmann::json::object(), nlohmann::json::object()});
  const auto saved_draw = torch::rand({4});  // what the generator gives right after the save

  torch::manual_seed(22);
  const auto own_draw = torch::rand({4}).clone();
  torch::manual_seed(22);
  load_checkpoint(path, *net, nullptr);  // a teacher or an evaluated model: the run's stream goes on
  CHECK(torch::equal(torch::rand({4}), own_draw));
  load_checkpoint(path, *net, nullptr, RngState::restore);  // a resume: the saved stream goes on
  CHECK(torch::equal(torch::rand({4}), saved_draw));
  fs::remove_all(dir);
}

TEST_CASE("evaluation counts samples with non-finite logits as wrong and keeps them out of the loss",
          "[train][eval]") {
  // mlp: each sample's logits depend on that sample only. Huge hidden weights overflow to inf for
  // any non-zero input; an all-zero input (mean 0) gives the finite bias-only logits.
  ModelSpec spec{"mlp", {1, 4, 4}, 3, true};
  Net net = build_model(spec, autorep::layers::relu_factory());
  {
    torch::NoGradGuard no_grad;
    for (const auto& kv : net->named_parameters())
      if (kv.key() == "fc1.weight" || kv.key() == "fc2.weight") kv.value().fill_(1e30f);
  }
  DataSplits d;
  d.name = "synthetic";
  d.classes = 3;
  d.input_shape = {1, 4, 4};
  d.mean = {0.0f};
  d.std = {1.0f};
  d.test.images = torch::zeros({5, 1, 4, 4}, torch::kUInt8);
  d.test.images.slice(0, 1, 3).fill_(255);  // samples 1 and 2 overflow
  {
    // The overflowing samples are labelled with what argmax would pick from their logits, so
    // only the non-finite check keeps them from counting as correct.
    torch::NoGradGuard no_grad;
    net->eval();
    const auto bad_logits = net->forward(torch::ones({1, 1, 4, 4}));
    REQUIRE_FALSE(torch::isfinite(bad_logits).all().item<bool>());
    const int64_t bad_pred = bad_logits.argmax(1).item<int64_t>();
    d.test.labels = torch::tensor({int64_t{0}, bad_pred, bad_pred, int64_t{1}, int64_t{2}}, torch::kLong);
  }
  d.train = d.test;

  const EvalResult r = evaluate(*net, d, d.test, torch::kCPU, /*batch_size=*/2);
  CHECK(r.samples == 5);
  CHECK(r.nonfinite == 2);
  // By hand: the three zero inputs share one finite logit row.
  torch::NoGradGuard no_grad;
  net->eval();
  const auto logits = net->forward(torch::zeros({1, 1, 4, 4}));
  REQUIRE(torch::isfinite(logits).all().item<bool>());
  const auto logp = torch::log_softmax(logits, 1)[0];
  const double loss = -(logp[0].item<double>() + logp[1].item<double>() + logp[2].item<double>()) / 3.0;
  CHECK(r.loss == Approx(loss).epsilon(1e-5));
  const int64_t pred = logits.argmax(1).item<int64_t>();
  const int64_t correct = (pred == 0) + (pred == 1) + (pred == 2);  // labels of samples 0, 3, 4
  CHECK(r.accuracy == Approx(correct / 5.0));
  CHECK(std::isfinite(r.loss));
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

TEST_CASE("the spike guard judges losses against the running mean after its warm-up", "[train][spike]") {
  SpikeGuard off(0.0);
  CHECK_FALSE(off.enabled());
  CHECK_FALSE(off.skip(1e9));

  SpikeGuard g(10.0, /*warmup=*/4, /*decay=*/0.9, /*max_consecutive=*/3);
  for (double l : {2.0, 1.0, 1.0, 100.0}) CHECK_FALSE(g.skip(l));  // the warm-up judges nothing
  CHECK(g.mean() == Approx(26.0));                                    // plain mean of the warm-up
  CHECK(g.skip(std::nan("")));                                        // not finite: always a spike
  CHECK(g.skip(261.0));
  CHECK_FALSE(g.diverged());
  CHECK_FALSE(g.skip(259.0));  // just under 10 x 26; accepted, into the moving average
  CHECK(g.mean() == Approx(26.0 + (259.0 - 26.0) / 5));  // still the plain mean: 5 < 1 / (1 - 0.9)
  CHECK(g.consecutive() == 0);

  const auto saved = g.state();
  for (int i = 0; i < 3; ++i) CHECK(g.skip(1e9));
  CHECK(g.diverged());
  SpikeGuard h(10.0, 4, 0.9, 3);
  h.load_state(saved);
  CHECK(h.mean() == Approx(g.mean()));
  CHECK_FALSE(h.diverged());
  h.reset_mean();
  CHECK(h.mean() == 0.0);
  CHECK_FALSE(h.skip(1e6));  // a new phase warms up again
}

TEST_CASE("a step snapshot undoes a gate's refit, step count and running statistics", "[train][spike]") {
  autorep::layers::GateOptions o({3, 4, 4});
  o.dapa().refit_every(2).refit_until(100);
  torch::nn::Sequential net{autorep::layers::Gate(o)};
  net->train();
  auto gate = autorep::layers::gates(*net).front();
  for (int i = 0; i < 2; ++i) net->forward(torch::randn({4, 3, 4, 4}) * 3 + 2);  // the next forward refits
  StepSnapshot snap(*net);
  snap.save();
  std::vector<torch::Tensor> before;
  for (const auto& t : {gate->c0(), gate->c1(), gate->c2(), gate->running_mean(), gate->running_var()})
    before.push_back(t.detach().clone());
  const int64_t step = gate->step();
  net->forward(torch::randn({4, 3, 4, 4}) * 50);
  REQUIRE(gate->refitted_last_step());
  CHECK_FALSE(torch::equal(gate->c0(), before[0]));
  snap.restore();
  CHECK(gate->step() == step);
  const std::vector<torch::Tensor> after = {gate->c0(), gate->c1(), gate->c2(), gate->running_mean(),
                                            gate->running_var()};
  for (size_t i = 0; i < before.size(); ++i) CHECK(torch::equal(after[i], before[i]));
}

TEST_CASE("a skipped step names the gate where its batch's activations ran out", "[train][spike]") {
  ModelSpec spec{"cnn-small", {1, 28, 28}, 10, true};
  autorep::layers::GateOptions o;
  o.dapa().enabled(false);
  Net net = build_model(spec, autorep::layers::gate_factory(o));
  for (const auto& g : autorep::layers::gates(*net)) g->mask().zero_();  // every site polynomial
  // Eval mode: batch norm passes the outlier on as it is (a training batch's statistics would
  // shrink it), so the test does not depend on how many positions share it.
  net->eval();
  // Ordinary inputs stay within 20 running sds (the prior is N(0, 1)) of every gate ...
  const auto calm = torch::randn({8, 1, 28, 28}) * 0.1;
  CHECK(describe_spike(*net, calm).find("first beyond 20 sd") == std::string::npos);
  // ... one huge image leaves the first gate far out, and the largest is named with its channel.
  auto wild = calm.clone();
  wild[0].fill_(100.0);
  const std::string d = describe_spike(*net, wild);
  CHECK_THAT(d, Catch::StartsWith("largest polynomial input at act") && Catch::Contains("first beyond 20 sd at act1"));
  CHECK_THAT(d, Catch::Contains("channel ") && Catch::Contains("sd from its mean") && Catch::Contains("output up to"));
  // A model without gates has nothing to say.
  Net plain = build_model(spec, autorep::layers::relu_factory());
  CHECK(describe_spike(*plain, wild).empty());
}

TEST_CASE("a batch-norm snapshot puts the running statistics back", "[train][spike]") {
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3)), torch::nn::BatchNorm2d(4));
  net->train();
  net->forward(torch::randn({8, 1, 6, 6}));
  StepSnapshot snap(*net);
  snap.save();
  std::vector<torch::Tensor> before;
  for (const auto& b : net->buffers()) before.push_back(b.clone());
  net->forward(1000 * torch::randn({8, 1, 6, 6}));
  CHECK_FALSE(torch::equal(net->buffers()[0], before[0]));
  snap.restore();
  const auto after = net->buffers();
  REQUIRE(after.size() == before.size());
  for (size_t i = 0; i < before.size(); ++i) CHECK(torch::equal(after[i], before[i]));
}

TEST_CASE("an outlier batch is skipped and the run goes on, and is taken without the guard", "[train][spike]") {
  if (!have_fashion_mnist()) return;
  Config c = tiny_config();
  c.train.epochs = 4;  // 8 steps per epoch; the guard judges from step 21
  c.optim.grad_clip = 1.0;  // bounds the unguarded run's step on the outlier
  c.train.skip_spikes = 10;
  const auto a = fresh_dir("spike-guarded"), b = fresh_dir("spike-resumed"), u = fresh_dir("spike-unguarded");
  RunOptions o;
  o.quiet = true;
  o.spike_at_step = 25;  // the 26th step, in epoch 4
  o.out_dir = a.string();
  REQUIRE(run_training(c, o).completed);
  const auto ea = autorep::test::read_metrics(a, "epoch");
  REQUIRE(ea.size() == 4);
  CHECK(ea[2].at("skipped_steps") == 0);
  CHECK(ea[3].at("skipped_steps") == 1);
  CHECK(ea[3].at("train_loss").get<double>() < 5.0);  // the spike's loss is not in the mean
  CHECK(autorep::test::read_text(a / "log.txt").find("step skipped") != std::string::npos);

  // Interrupted after the skip: the guard's state travels in the checkpoint.
  o.out_dir = b.string();
  o.stop_after_steps = 27;
  REQUIRE_FALSE(run_training(c, o).completed);
  o.stop_after_steps = -1;
  o.spike_at_step = -1;
  o.resume = true;
  REQUIRE(run_training(c, o).completed);
  const auto eb = autorep::test::read_metrics(b, "epoch");
  REQUIRE(eb.size() == 4);
  CHECK(eb[3].at("skipped_steps") == 1);
  CHECK(eb[3].at("train_loss").get<double>() == Approx(ea[3].at("train_loss").get<double>()).epsilon(1e-9));

  c.train.skip_spikes = 0;
  o = RunOptions{};
  o.quiet = true;
  o.spike_at_step = 25;
  o.out_dir = u.string();
  REQUIRE(run_training(c, o).completed);
  const auto eu = autorep::test::read_metrics(u, "epoch");
  CHECK(eu[3].at("skipped_steps") == 0);
  CHECK(eu[3].at("train_loss").get<double>() > 1000.0);
  fs::remove_all(a);
  fs::remove_all(b);
  fs::remove_all(u);
}

TEST_CASE("with a validation split best.pt is the eligible epoch best on validation, and both accuracies are recorded",
          "[train][val]") {
  if (!have_fashion_mnist()) return;
  Config c = tiny_config();
  c.train.epochs = 3;
  c.data.limit_train = 640;
  c.data.val_split = 128;
  const auto dir = fresh_dir("val-select");
  RunOptions o;
  o.out_dir = dir.string();
  o.quiet = true;
  const RunResult r = run_training(c, o);
  REQUIRE(r.completed);
  const auto evals = autorep::test::read_metrics(dir, "eval");
  REQUIRE(evals.size() == 3);
  size_t best = 0;
  for (size_t i = 0; i < evals.size(); ++i) {
    REQUIRE(evals[i].contains("val_accuracy"));
    REQUIRE(evals[i].contains("test_accuracy"));
    if (evals[i]["val_accuracy"].get<double>() > evals[best]["val_accuracy"].get<double>()) best = i;
  }
  // best.pt holds the position after its epoch; its accuracies are that epoch's.
  const CheckpointMeta meta = read_checkpoint_meta((dir / "checkpoints" / "best.pt").string());
  CHECK(meta.state.at("epoch") == evals[best]["epoch"]);
  CHECK(r.best_val_accuracy == evals[best]["val_accuracy"].get<double>());
  CHECK(r.best_accuracy == evals[best]["test_accuracy"].get<double>());
  const nlohmann::json j = run_result_json(c, r);
  CHECK(j.at("val_accuracy") == evals[best]["val_accuracy"]);
  CHECK(j.at("accuracy") == evals[best]["test_accuracy"]);
  CHECK(autorep::test::read_text(dir / "log.txt").find("train 512 val 128") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("the progress text is asked for only when a progress line is shown", "[train][progress]") {
  const auto dir = fresh_dir("autorep-test-reporter");
  fs::create_directories(dir);
  Reporter r((dir / "log.txt").string(), /*quiet=*/true);
  int asked = 0;
  const auto extra = [&] {
    ++asked;
    return std::string("ReLUs 3/4");
  };
  // Not a terminal (ctest): a line every 5 steps and at the epoch's last step.
  for (int64_t step = 1; step <= 12; ++step) r.step(0, 1, step, 12, 0.5, 100.0, 1.0, extra, 5);
  CHECK(asked == 3);  // steps 5, 10 and 12
  std::ifstream log(dir / "log.txt");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  CHECK(text.find("step 10/12") != std::string::npos);
  CHECK(text.find("ReLUs 3/4") != std::string::npos);
  CHECK(text.find("step 7/12") == std::string::npos);
  // every = 0: no line, and no progress text computed.
  r.step(0, 1, 5, 12, 0.5, 100.0, 1.0, extra, 0);
  CHECK(asked == 3);
}

TEST_CASE("a training run reports how long its steps took, without setup and evaluation", "[train][bench]") {
  if (!have_fashion_mnist()) return;
  const auto dir = fresh_dir("autorep-test-step-time");
  Config c = tiny_config();
  RunOptions o;
  o.out_dir = dir.string();
  o.quiet = true;
  o.stop_after_steps = 3;
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run_training(c, o);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(r.steps_timed == 3);
  CHECK(r.step_seconds > 0.0);
  CHECK(r.step_seconds < wall);  // data loading, setup and the checkpoint are not counted
}

TEST_CASE("a run that diverges goes back to the last epoch's end with the learning rate halved, and resumes so",
          "[train][spike][rollback]") {
  if (!have_fashion_mnist()) return;
  Config c = tiny_config();
  c.train.epochs = 7;  // 7 steps per epoch (461 images after the validation split); the guard judges from step 21
  c.train.skip_spikes = 10;
  c.train.spike_rollbacks = 2;
  const auto a = fresh_dir("rollback"), b = fresh_dir("rollback-resumed"), r = fresh_dir("rollback-reference"),
             n = fresh_dir("rollback-none");
  RunOptions o;
  o.quiet = true;
  o.spike_at_step = 24;  // steps 25-44 spike: the 20th in a row is epoch 7's 2nd step
  o.spike_steps = 20;
  o.out_dir = a.string();
  const auto ra = run_training(c, o);
  REQUIRE(ra.completed);
  CHECK(ra.rollbacks == 1);
  const auto rb = autorep::test::read_metrics(a, "rollback");
  REQUIRE(rb.size() == 1);
  CHECK(rb[0].at("back_to_epoch") == 7);
  CHECK(rb[0].at("diverged_at").at("epoch") == 7);
  CHECK(rb[0].at("diverged_at").at("step") == 2);
  CHECK(rb[0].at("lr_scale").get<double>() == 0.5);
  CHECK(autorep::test::read_text(a / "log.txt").find("rollback 1/2") != std::string::npos);
  // Epoch 7 ran twice (the diverged attempt left no epoch record), the second time at half the lr.
  const auto ea = autorep::test::read_metrics(a, "epoch");
  REQUIRE(ea.size() == 7);
  RunOptions ro;
  ro.quiet = true;
  ro.out_dir = r.string();
  const auto er = (run_training(c, ro), autorep::test::read_metrics(r, "epoch"));
  CHECK(ea[6].at("lr").get<double>() == Approx(0.5 * er[6].at("lr").get<double>()).epsilon(1e-9));
  CHECK(ea[4].at("lr").get<double>() == Approx(er[4].at("lr").get<double>()).epsilon(1e-9));

  // Stopped after the rollback and resumed: the halved rate and the count travel in last.pt.
  o.out_dir = b.string();
  o.stop_after_steps = 47;  // 44 steps up to the divergence, 3 more after the rollback
  REQUIRE_FALSE(run_training(c, o).completed);
  o.stop_after_steps = -1;
  o.spike_at_step = -1;
  o.resume = true;
  const auto resumed = run_training(c, o);
  REQUIRE(resumed.completed);
  CHECK(resumed.rollbacks == 1);
  const auto eb = autorep::test::read_metrics(b, "epoch");
  REQUIRE(eb.size() == 7);
  CHECK(eb[6].at("train_loss").get<double>() == Approx(ea[6].at("train_loss").get<double>()).epsilon(1e-9));

  // Without rollbacks the same run stops as diverged.
  c.train.spike_rollbacks = 0;
  RunOptions on;
  on.quiet = true;
  on.spike_at_step = 24;
  on.spike_steps = 20;
  on.out_dir = n.string();
  CHECK_THROWS_WITH(run_training(c, on), Catch::Contains("training diverged"));
  for (const auto& d : {a, b, r, n}) fs::remove_all(d);
}

TEST_CASE("a gated resnet in channels_last memory computes the NCHW model's outputs and gradients",
          "[train][channels_last]") {
  torch::manual_seed(21);
  const ModelSpec spec{"resnet20", {1, 28, 28}, 10, true};
  autorep::layers::GateOptions go;
  const bool gated = GENERATE(true, false);
  CAPTURE(gated);
  const auto factory = gated ? autorep::layers::gate_factory(go) : autorep::layers::relu_factory();
  // a: NCHW, b: channels_last, r: the float64 reference (NCHW); the same weights and masks.
  Net a = build_model(spec, factory);
  Net b = build_model(spec, factory);
  Net r = build_model(spec, factory);
  {
    torch::NoGradGuard ng;
    // Half the ReLUs kept at random, the rest polynomials: both kernels' branches run.
    for (auto& g : autorep::layers::gates(*a)) g->mask().copy_(torch::rand_like(g->mask()) > 0.5);
    for (Net* n : {&b, &r}) {
      auto p = (*n)->named_parameters();
      for (const auto& kv : a->named_parameters()) p[kv.key()].copy_(kv.value());
      auto bf = (*n)->named_buffers();
      for (const auto& kv : a->named_buffers()) bf[kv.key()].copy_(kv.value());
    }
  }
  r->to(torch::kDouble);
  set_memory_format(*b, true);
  CHECK(is_channels_last(*b));
  CHECK_FALSE(is_channels_last(*a));
  const auto x = torch::randn({8, 1, 28, 28});
  const auto ya = a->forward(x);
  const auto yb = b->forward(in_format_of(*b, x));
  const auto yr = r->forward(x.to(torch::kDouble));
  CHECK(torch::allclose(ya, yb, 1e-4, 1e-4));
  for (const auto& y : {ya, yb, yr}) y.square().sum().backward();
  // Measured against float64: NCHW float32 gradients are within ~1e-5 of the largest; in
  // channels_last LibTorch 1.13's CPU convolution / batch-norm backward is far less exact, up to
  // ~4e-3 with plain ReLUs (no autorep kernel involved; 2.4e-2 when the whole "[train]" group
  // ran in one process before it, where oneDNN had other primitives cached) and, amplified
  // through the gates' quadratics, ~4e-2 in the first layers of the gated model. A layout bug
  // would be O(1).
  const double bound_nchw = 1e-4, bound_cl = gated ? 0.1 : 0.05;
  auto pb = b->named_parameters(), pr = r->named_parameters();
  double worst_a = 0, worst_b = 0;
  for (const auto& kv : a->named_parameters()) {
    CAPTURE(kv.key());
    const auto ref = pr[kv.key()].grad();
    const auto scale = ref.abs().max().item<double>() + 1e-12;
    const double err_a = (kv.value().grad().to(torch::kDouble) - ref).abs().max().item<double>() / scale;
    const double err_b = (pb[kv.key()].grad().to(torch::kDouble) - ref).abs().max().item<double>() / scale;
    CHECK(err_a <= bound_nchw);
    CHECK(err_b <= bound_cl);
    worst_a = std::max(worst_a, err_a), worst_b = std::max(worst_b, err_b);
  }
  WARN("largest gradient error against float64 (relative to the largest entry): NCHW "
       << worst_a << ", channels_last " << worst_b << (gated ? " (gated)" : " (plain ReLU)"));
}

TEST_CASE("train.channels_last trains like the NCHW run, and its checkpoints load into an NCHW model",
          "[train][channels_last]") {
  if (!have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed; skipped");
    return;
  }
  Config c = tiny_config();
  const auto a = fresh_dir("nchw"), b = fresh_dir("channels-last");
  RunOptions o;
  o.quiet = true;
  o.out_dir = a.string();
  const RunResult ra = run_training(c, o);
  c.train.channels_last = true;
  o.out_dir = b.string();
  const RunResult rb = run_training(c, o);
  REQUIRE(ra.completed);
  REQUIRE(rb.completed);
  const auto la = train_losses(a), lb = train_losses(b);
  REQUIRE(la.size() == lb.size());
  for (size_t i = 0; i < la.size(); ++i) CHECK(lb[i] == Approx(la[i]).epsilon(1e-3));
  CHECK(std::abs(rb.final_accuracy - ra.final_accuracy) <= 0.02);
  // The checkpoint of the channels_last run loads into a model built as usual (export, eval),
  // which stays in NCHW memory.
  auto m = load_model((b / "checkpoints" / "last.pt").string());
  CHECK_FALSE(is_channels_last(*m.model));
  for (const auto& p : m.model->parameters()) CHECK(p.is_contiguous());
  auto ref = load_model((a / "checkpoints" / "last.pt").string());
  auto pr = ref.model->named_parameters();
  for (const auto& kv : m.model->named_parameters()) CHECK(torch::allclose(kv.value(), pr[kv.key()], 1e-2, 1e-3));
  // And the resume of a channels_last run keeps channels_last (the model's format, not the file's).
  Net net = build_model(m.model->spec(), autorep::layers::relu_factory());
  set_memory_format(*net, true);
  load_checkpoint((b / "checkpoints" / "last.pt").string(), *net, nullptr);
  CHECK(is_channels_last(*net));
  fs::remove_all(a);
  fs::remove_all(b);
}
