#include "tests/torch_catch.h"
#include "tests/trainer/test_util.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "trainer/engine/distributed.h"
#include "trainer/engine/loop.h"

extern char** environ;

using namespace autorep::trainer;
namespace fs = std::filesystem;
using autorep::test::fresh_dir;
using autorep::test::have_fashion_mnist;
using autorep::test::read_metrics;
using autorep::test::read_text;

namespace {

// A TCP port nobody listens on right now (the kernel's pick for port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

// `autorep ARGS` as a child process with extra environment variables; output goes to `log`.
pid_t spawn_autorep(const std::vector<std::string>& args, const std::vector<std::string>& env_extra,
                    const fs::path& log) {
  std::vector<std::string> argv_s{AUTOREP_BINARY};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string v(*e);
    bool overridden = false;
    for (const auto& x : env_extra) overridden = overridden || v.compare(0, x.find('=') + 1, x, 0, x.find('=') + 1) == 0;
    if (!overridden) env_s.push_back(v);
  }
  env_s.insert(env_s.end(), env_extra.begin(), env_extra.end());
  std::vector<char*> envp;
  for (auto& s : env_s) envp.push_back(s.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  return pid;
}

// Waits for every child; kills them all when `limit` passes first. Returns the exit statuses
// (-1 for a child that was killed).
std::vector<int> wait_all(const std::vector<pid_t>& pids, std::chrono::seconds limit) {
  std::vector<int> status(pids.size(), -2);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  size_t left = pids.size();
  while (left > 0) {
    for (size_t i = 0; i < pids.size(); ++i) {
      if (status[i] != -2) continue;
      int st = 0;
      if (::waitpid(pids[i], &st, WNOHANG) == pids[i]) {
        status[i] = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        --left;
      }
    }
    if (left == 0) break;
    if (std::chrono::steady_clock::now() > deadline) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (status[i] != -2) continue;
        ::kill(pids[i], SIGKILL);
        ::waitpid(pids[i], nullptr, 0);
        status[i] = -1;
      }
      FAIL("processes still running after " << limit.count() << " s; killed");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return status;
}

void write_json(const fs::path& p, const nlohmann::json& j) { std::ofstream(p) << j.dump(2); }

}  // namespace

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
