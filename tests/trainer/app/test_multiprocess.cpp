#include "tests/torch_catch.h"
#include "tests/trainer/process_util.h"
#include "tests/trainer/test_util.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "trainer/engine/checkpoint.h"
#include "trainer/engine/distributed.h"
#include "trainer/methods/run_model.h"

using namespace autorep::trainer;
using namespace autorep::trainer::engine;
using namespace autorep::trainer::methods;
using namespace autorep::test;
namespace fs = std::filesystem;

TEST_CASE("two Gloo processes with half batches train like one process with the whole batch", "[dist][slow]") {
  if (!dist::available() || !have_fashion_mnist()) {
    WARN("built without c10d or Fashion-MNIST not installed; skipped");
    return;
  }
  const auto dir = fresh_dir("dist-equiv");
  fs::create_directories(dir);
  // A small teacher, then an AutoReP reduction (1 search epoch with DaPa refits + 1 finetune
  // epoch) run once in one process and once as two.
  const nlohmann::json data = {{"limit_train", 512}, {"limit_test", 256}, {"batch_size", 64}, {"crop_padding", 2},
                               {"flip", 1}};
  write_json(dir / "teacher.json", {{"model", {{"name", "mlp"}}},
                                    {"data", data},
                                    {"optim", {{"lr", 0.05}}},
                                    {"train", {{"epochs", 1}, {"threads", 1}, {"device", "cpu"}}}});
  auto wait_one = [&](pid_t p, const fs::path& log) {
    const auto st = wait_all({p}, std::chrono::seconds(240));
    INFO(read_text(log));
    REQUIRE(st[0] == 0);
  };
  wait_one(spawn_autorep({"train", "--config", (dir / "teacher.json").string(), "--out", (dir / "teacher").string()},
                         {}, dir / "teacher.log"),
           dir / "teacher.log");
  write_json(dir / "reduce.json",
             {{"method", "autorep"},
              {"model", {{"name", "mlp"}}},
              {"data", data},
              {"gate", {{"dapa", {{"refit_every", 2}, {"refit_until", 8}}}}},
              {"search",
               {{"budget", "20%"},
                {"teacher", (dir / "teacher" / "checkpoints" / "best.pt").string()},
                {"search_epochs", 1},
                {"aux_lr", 0.01}}},
              {"train", {{"epochs", 2}, {"threads", 1}, {"device", "cpu"}}}});
  const auto one = dir / "one", two = dir / "two";
  wait_one(spawn_autorep({"train", "--config", (dir / "reduce.json").string(), "--out", one.string()}, {},
                         dir / "one.log"),
           dir / "one.log");

  const std::string port = std::to_string(free_port());
  std::vector<pid_t> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.push_back(spawn_autorep(
        {"train", "--config", (dir / "reduce.json").string(), "--out", two.string(), "--dist-backend", "gloo",
         "--dist-timeout", "60"},
        {"RANK=" + std::to_string(r), "WORLD_SIZE=2", "LOCAL_RANK=" + std::to_string(r), "LOCAL_WORLD_SIZE=2",
         "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + port},
        dir / ("rank" + std::to_string(r) + ".log")));
  const auto st = wait_all(ranks, std::chrono::seconds(300));
  INFO(read_text(dir / "rank0.log") + read_text(dir / "rank1.log"));
  REQUIRE(st[0] == 0);
  REQUIRE(st[1] == 0);
  CHECK(read_text(dir / "rank0.log").find("distributed: 2 processes (gloo)") != std::string::npos);
  CHECK(read_text(dir / "rank1.log").empty());  // only rank 0 prints

  // Same loss trajectory and accuracy (float tolerance: half batches sum in another order).
  const auto e1 = read_metrics(one, "epoch"), e2 = read_metrics(two, "epoch");
  REQUIRE(e1.size() == 2);
  REQUIRE(e2.size() == 2);
  for (size_t i = 0; i < e1.size(); ++i) {
    CHECK(e2[i]["train_loss"].get<double>() == Approx(e1[i]["train_loss"].get<double>()).epsilon(1e-4));
    CHECK(e2[i]["kept_relus"] == e1[i]["kept_relus"]);
    CHECK(e2[i]["kept_per_site"] == e1[i]["kept_per_site"]);
  }
  const auto v1 = read_metrics(one, "eval"), v2 = read_metrics(two, "eval");
  REQUIRE(v1.size() == v2.size());
  CHECK(v2.back()["test_accuracy"].get<double>() == Approx(v1.back()["test_accuracy"].get<double>()).margin(0.01));

  // Same masks, and weights within float tolerance.
  LoadedModel m1 = load_model((one / "checkpoints" / "last.pt").string());
  LoadedModel m2 = load_model((two / "checkpoints" / "last.pt").string());
  auto b1 = m1.model->named_buffers(), b2 = m2.model->named_buffers();
  int masks = 0;
  for (const auto& kv : b1) {
    if (kv.key().size() < 4 || kv.key().substr(kv.key().size() - 4) != "mask") continue;
    ++masks;
    CHECK(torch::equal(kv.value(), b2[kv.key()]));
  }
  CHECK(masks == 2);
  auto p1 = m1.model->named_parameters(), p2 = m2.model->named_parameters();
  for (const auto& kv : p1) {
    INFO(kv.key());
    CHECK(torch::allclose(kv.value(), p2[kv.key()], 1e-3, 1e-4));
  }
  CHECK(fs::exists(two / "export" / "mask.json"));
  fs::remove_all(dir);
}

namespace {

// Waits until `file` holds `text`; false when `limit` passes first.
bool wait_for_text(const fs::path& file, const std::string& text, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (read_text(file).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

nlohmann::json signal_run_config(const std::string& model, int64_t limit_train, int64_t epochs) {
  return {{"model", {{"name", model}}},
          {"data", {{"limit_train", limit_train}, {"limit_test", 256}, {"val_split", 0}, {"batch_size", 64}}},
          {"optim", {{"lr", 0.05}}},
          {"train", {{"epochs", epochs}, {"threads", 1}, {"device", "cpu"}, {"checkpoint_interval_s", 0}}}};
}

}  // namespace

TEST_CASE("SIGTERM to one process of a two-process run stops both after the same step; --resume finishes it",
          "[dist][slow][signal]") {
  if (!dist::available() || !have_fashion_mnist()) {
    WARN("built without c10d or Fashion-MNIST not installed; skipped");
    return;
  }
  const auto dir = fresh_dir("dist-signal");
  fs::create_directories(dir);
  write_json(dir / "run.json", signal_run_config("cnn-small", 16384, 3));  // 256 steps per epoch
  const auto run = dir / "run";
  auto start = [&](const std::string& tag, bool resume) {
    const std::string port = std::to_string(free_port());
    std::vector<pid_t> ranks;
    for (int r = 0; r < 2; ++r) {
      std::vector<std::string> args{"train", "--config", (dir / "run.json").string(), "--out", run.string(),
                                    "--dist-backend", "gloo", "--dist-timeout", "60"};
      if (resume) args.push_back("--resume");
      ranks.push_back(spawn_autorep(args,
                                    {"RANK=" + std::to_string(r), "WORLD_SIZE=2", "LOCAL_RANK=" + std::to_string(r),
                                     "LOCAL_WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + port},
                                    dir / (tag + std::to_string(r) + ".log")));
    }
    return ranks;
  };
  const auto ranks = start("rank", false);
  // Signal the second process only, once the first epoch is over: the first learns of it in the
  // next step's all-reduce.
  const bool first_epoch_done = wait_for_text(run / "metrics.jsonl", "\"type\":\"eval\"", std::chrono::seconds(240));
  ::kill(ranks[1], SIGTERM);
  const auto st = wait_all(ranks, std::chrono::seconds(120));
  const std::string log0 = read_text(dir / "rank0.log");
  INFO(log0 + read_text(dir / "rank1.log"));
  REQUIRE(first_epoch_done);
  CHECK(st[0] == 143);
  CHECK(st[1] == 143);
  CHECK(log0.find("stopped because another process was signalled after epoch 2 step") != std::string::npos);
  REQUIRE(fs::exists(run / "checkpoints" / "last.pt"));
  const auto state = engine::read_checkpoint_meta((run / "checkpoints" / "last.pt").string()).state;
  CHECK(state["epoch"] == 1);
  CHECK(state["step_in_epoch"].get<int64_t>() > 0);
  CHECK(read_metrics(run, "epoch").size() == 1);
  CHECK_FALSE(fs::exists(run / "result.json"));

  const auto resumed = wait_all(start("resume", true), std::chrono::seconds(300));
  INFO(read_text(dir / "resume0.log") + read_text(dir / "resume1.log"));
  CHECK(resumed[0] == 0);
  CHECK(resumed[1] == 0);
  CHECK(read_metrics(run, "epoch").size() == 3);
  CHECK(fs::exists(run / "result.json"));
  fs::remove_all(dir);
}

TEST_CASE("a second SIGINT ends a run at once, without a checkpoint", "[signal]") {
  if (!have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed; skipped");
    return;
  }
  const auto dir = fresh_dir("double-sigint");
  fs::create_directories(dir);
  write_json(dir / "run.json", signal_run_config("resnet20", 4096, 1));  // steps of ~0.3 s
  const pid_t pid = spawn_autorep({"train", "--config", (dir / "run.json").string(), "--out", (dir / "run").string()},
                                  {}, dir / "log");
  const bool started = wait_for_text(dir / "log", "phase train", std::chrono::seconds(120));
  ::kill(pid, SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ::kill(pid, SIGINT);
  const auto st = wait_all({pid}, std::chrono::seconds(60));
  const std::string log = read_text(dir / "log");
  INFO(log);
  REQUIRE(started);
  CHECK(st[0] == 130);
  CHECK(log.find("stopping after this step") != std::string::npos);
  CHECK(log.find("written; continue") == std::string::npos);
  CHECK_FALSE(fs::exists(dir / "run" / "checkpoints" / "last.pt"));
  fs::remove_all(dir);
}
