#include "tests/torch_catch.h"
#include "tests/trainer/process_util.h"
#include "tests/trainer/test_util.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "trainer/engine/distributed.h"

using namespace autorep::trainer::engine;
using namespace autorep::test;
namespace fs = std::filesystem;

TEST_CASE("gradient buckets of a one-process group leave the gradients as they are", "[dist]") {
  if (!dist::available()) {
    WARN("built without c10d; skipped");
    return;
  }
  dist::LaunchEnv env;
  env.master_port = free_port();
  auto group = dist::join(env, "gloo", std::chrono::seconds(30));
  REQUIRE(group->size() == 1);
  torch::manual_seed(3);
  auto a = torch::randn({5, 7}, torch::requires_grad());
  auto b = torch::randn({300}, torch::requires_grad());
  auto c = torch::randn({2}, torch::requires_grad());  // unused in the loss: keeps no gradient
  // 1 KiB buckets: b alone, a alone, c alone.
  dist::GradientSync sync(*group, {a, b, c}, 1024);
  CHECK(sync.buckets() == 3);
  for (int step = 0; step < 2; ++step) {
    for (auto* t : {&a, &b, &c})
      if (t->grad().defined()) t->mutable_grad().zero_();
    sync.begin();
    auto loss = (a * a).sum() * (step + 1) + b.sin().sum();
    loss.backward();
    sync.finish();
    CHECK(torch::allclose(a.grad(), 2 * (step + 1) * a.detach()));
    CHECK(torch::allclose(b.grad(), b.detach().cos()));
    CHECK_FALSE(c.grad().defined());
  }
  auto s = torch::tensor({1.5, -2.0}, torch::kDouble);
  group->allreduce_sum(s);
  CHECK(s[0].item<double>() == 1.5);
}

TEST_CASE("launch variables are checked and name the variable", "[dist]") {
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "2", 1);
  CHECK_THROWS_WITH(dist::launch_env_from_environment(), Catch::Contains("RANK=2 is not below WORLD_SIZE=2"));
  ::setenv("RANK", "x", 1);
  CHECK_THROWS_WITH(dist::launch_env_from_environment(), Catch::Contains("RANK=\"x\""));
  ::setenv("RANK", "1", 1);
  ::setenv("MASTER_PORT", "70000", 1);
  CHECK_THROWS_WITH(dist::launch_env_from_environment(), Catch::Contains("MASTER_PORT"));
  ::unsetenv("MASTER_PORT");
  const auto e = dist::launch_env_from_environment();
  CHECK(e.rank == 1);
  CHECK(e.world_size == 2);
  CHECK(e.local_rank == 1);
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("RANK");
  CHECK(dist::launch_env_from_environment().world_size == 1);
}

TEST_CASE("a rank whose peers never arrive stops with a clear error", "[dist]") {
  if (!dist::available()) {
    WARN("built without c10d; skipped");
    return;
  }
  const auto dir = fresh_dir("dist-timeout");
  fs::create_directories(dir);
  write_json(dir / "c.json", {{"model", {{"name", "mlp"}}}, {"data", {{"limit_train", 64}, {"limit_test", 64}}}});
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t p = spawn_autorep({"train", "--config", (dir / "c.json").string(), "--out", (dir / "run").string(),
                                 "--dist-timeout", "3"},
                                {"RANK=1", "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
                                 "MASTER_PORT=" + std::to_string(free_port())},
                                dir / "log.txt");
  const auto st = wait_all({p}, std::chrono::seconds(60));
  const std::string log = read_text(dir / "log.txt");
  INFO(log);
  CHECK(st[0] != 0);
  CHECK(log.find("rendezvous at 127.0.0.1:") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(45));
  fs::remove_all(dir);
}

