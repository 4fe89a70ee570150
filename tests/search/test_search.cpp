#include "tests/torch_catch.h"

#include <cmath>

#include "layers/gate.h"
#include "search/budget.h"
#include "layers/snl_gate.h"
#include "search/objective.h"
#include "search/projection.h"
#include "search/snl.h"

using namespace autorep;
using namespace autorep::search;
using autorep::layers::SnlGate;

namespace {

GateList make_gates(const std::string& granularity) {
  GateList gates;
  for (auto shape : {std::vector<int64_t>{4, 3, 3}, std::vector<int64_t>{2, 5, 5}, std::vector<int64_t>{7}}) {
    auto o = layers::GateOptions(shape).granularity(layers::parse_granularity(granularity));
    gates.push_back(layers::Gate(o).ptr());
  }
  return gates;
}

int64_t kept(const GateList& gates) {
  int64_t n = 0;
  for (const auto& g : gates) n += g->kept_relus();
  return n;
}

}  // namespace

TEST_CASE("budgets resolve from counts and percentages", "[budget]") {
  CHECK(resolve_budget(4328, 144256) == 4328);
  CHECK(resolve_budget("3%", 144256) == 4328);
  CHECK(resolve_budget("1%", 144256) == 1443);
  CHECK(resolve_budget("100%", 1000) == 1000);
  CHECK(resolve_budget("0%", 1000) == 0);
  CHECK(resolve_budget("250", 1000) == 250);
  CHECK_THROWS_WITH(resolve_budget("abc", 1000), Catch::Contains("search.budget"));
  CHECK_THROWS_WITH(resolve_budget(-1, 1000), Catch::Contains("negative"));
  CHECK_THROWS_WITH(resolve_budget(1001, 1000), Catch::Contains("exceeds"));
  CHECK_THROWS_WITH(resolve_budget("101%", 1000), Catch::Contains("100%"));
}

TEST_CASE("no selection ever exceeds the budget, at every granularity, including 0 and all", "[projection]") {
  torch::manual_seed(1);
  for (const std::string g : {"pixel", "channel", "layer"}) {
    auto gates = make_gates(g);
    const int64_t total = layers::total_relus(gates);
    REQUIRE(total == 36 + 50 + 7);
    for (int64_t budget : {int64_t{0}, int64_t{1}, int64_t{9}, int64_t{30}, int64_t{50}, total - 1, total}) {
      INFO(g << " budget " << budget);
      int64_t k = project_to_budget(gates, budget);
      CHECK(k == kept(gates));
      CHECK(k <= budget);
      if (g == "pixel") CHECK(k == budget);
      if (budget == total) CHECK(k == total);
      k = random_masks(gates, budget, 7);
      CHECK(k == kept(gates));
      CHECK(k <= budget);
      if (g == "pixel") CHECK(k == budget);
      std::vector<torch::Tensor> scores;
      for (const auto& gate : gates) scores.push_back(torch::rand(gate->mask().sizes()));
      k = uniform_masks(gates, scores, budget);
      CHECK(k == kept(gates));
      CHECK(k <= budget);
      if (g == "pixel") CHECK(k == budget);
    }
  }
}

TEST_CASE("projection keeps the largest aux, ties broken by site then index", "[projection]") {
  auto gates = make_gates("pixel");
  {
    torch::NoGradGuard ng;
    for (auto& g : gates) g->aux().fill_(0.5);
    gates[1]->aux().view(-1)[3] = 2.0;
    gates[2]->aux().view(-1)[6] = 1.0;
  }
  CHECK(project_to_budget(gates, 4) == 4);
  CHECK(gates[1]->mask().view(-1)[3].item<float>() == 1.0f);
  CHECK(gates[2]->mask().view(-1)[6].item<float>() == 1.0f);
  // The two ties kept are the first entries of the first site.
  CHECK(gates[0]->mask().view(-1)[0].item<float>() == 1.0f);
  CHECK(gates[0]->mask().view(-1)[1].item<float>() == 1.0f);
  CHECK(gates[0]->mask().sum().item<float>() == 2.0f);
  // Deterministic: the same aux gives the same masks.
  std::vector<torch::Tensor> before;
  for (auto& g : gates) before.push_back(g->mask().clone());
  project_to_budget(gates, 4);
  for (size_t i = 0; i < gates.size(); ++i) CHECK(torch::equal(before[i], gates[i]->mask()));
}

TEST_CASE("NaN aux ranks below every number, deterministically", "[projection]") {
  auto gates = make_gates("pixel");
  {
    torch::NoGradGuard ng;
    for (auto& g : gates) g->aux().fill_(std::nan(""));
    gates[2]->aux().view(-1)[5] = -3.0;  // the only number: kept first
  }
  CHECK(project_to_budget(gates, 3) == 3);
  CHECK(gates[2]->mask().view(-1)[5].item<float>() == 1.0f);
  // Then NaN entries in site, index order.
  CHECK(gates[0]->mask().view(-1)[0].item<float>() == 1.0f);
  CHECK(gates[0]->mask().view(-1)[1].item<float>() == 1.0f);
  int64_t kept = 0;
  for (auto& g : gates) kept += static_cast<int64_t>(g->mask().sum().item<float>());
  CHECK(kept == 3);
}

TEST_CASE("channel projection keeps the largest set that fits", "[projection]") {
  auto gates = make_gates("channel");  // channel entries weigh 9, 25 and 1 ReLUs
  {
    torch::NoGradGuard ng;
    gates[0]->aux().copy_(torch::tensor({0.9f, 0.1f, 0.1f, 0.1f}));
    gates[1]->aux().copy_(torch::tensor({0.95f, 0.2f}));
    gates[2]->aux().fill_(0.0f);
  }
  // 25 (0.95) fits, 9 (0.9) does not fit in 30 - 25, then five 1-ReLU entries do.
  CHECK(project_to_budget(gates, 30) == 30);
  CHECK(gates[1]->mask()[0].item<float>() == 1.0f);
  CHECK(gates[0]->mask().sum().item<float>() == 0.0f);
  CHECK(gates[2]->mask().sum().item<float>() == 5.0f);
}

TEST_CASE("uniform keeps the same fraction at every site, by score", "[projection]") {
  auto gates = make_gates("pixel");
  std::vector<torch::Tensor> scores;
  for (auto& g : gates) scores.push_back(torch::arange(g->mask().numel(), torch::kFloat).view(g->mask().sizes()));
  const int64_t total = layers::total_relus(gates);
  // 46 of 93: quotas 17.81, 24.73, 3.46 -> 17, 24, 3, and the 2 left go to the largest remainders.
  CHECK(uniform_masks(gates, scores, total / 2) == 46);
  CHECK(gates[0]->mask().sum().item<float>() == 18.0f);
  CHECK(gates[1]->mask().sum().item<float>() == 25.0f);
  CHECK(gates[2]->mask().sum().item<float>() == 3.0f);
  // The kept ones are the largest scores (the last flat indices).
  CHECK(gates[2]->mask().view(-1)[6].item<float>() == 1.0f);
  CHECK(gates[2]->mask().view(-1)[0].item<float>() == 0.0f);
}

TEST_CASE("the budget penalty reaches aux only through the straight-through estimator", "[objective]") {
  auto gates = make_gates("pixel");
  {
    torch::NoGradGuard ng;
    gates[0]->mask().view(-1).slice(0, 0, 10).zero_();
  }
  auto rho = relu_density(gates);
  const double total = static_cast<double>(layers::total_relus(gates));
  CHECK(rho.item<double>() == Approx((total - 10) / total));
  const double lambda = 50.0;
  auto pen = budget_penalty(rho, 0.1, lambda);
  pen.backward();
  for (const auto& g : gates) {
    REQUIRE(g->aux().grad().defined());
    auto expected = torch::softplus(g->aux().detach()) * (lambda / total);
    CHECK(torch::allclose(g->aux().grad(), expected, 1e-6, 1e-7));
    CHECK_FALSE(g->mask().requires_grad());
    CHECK_FALSE(g->mask().grad().defined());
  }
  // Within budget: no gradient at all.
  for (auto& g : gates) g->aux().mutable_grad() = torch::Tensor();
  budget_penalty(relu_density(gates), 0.99, lambda).backward();
  for (const auto& g : gates) CHECK(g->aux().grad().abs().sum().item<double>() == 0.0);
}

TEST_CASE("KD loss matches a hand-computed value", "[objective]") {
  auto s = torch::tensor({{1.0, 2.0, 0.5}}, torch::kDouble);
  auto t = torch::tensor({{2.0, 0.0, 1.0}}, torch::kDouble);
  const double T = 2.0;
  // p_t = softmax(t/T), p_s = softmax(s/T); KL = sum p_t (log p_t - log p_s); loss = T^2 KL.
  auto sm = [&](std::vector<double> z) {
    double m = 0;
    for (auto& v : z) m += std::exp(v / T);
    std::vector<double> p;
    for (auto& v : z) p.push_back(std::exp(v / T) / m);
    return p;
  };
  auto ps = sm({1.0, 2.0, 0.5}), pt = sm({2.0, 0.0, 1.0});
  double kl = 0;
  for (int i = 0; i < 3; ++i) kl += pt[i] * (std::log(pt[i]) - std::log(ps[i]));
  CHECK(kd_loss(s, t, T).item<double>() == Approx(T * T * kl).epsilon(1e-12));
  CHECK(kd_loss(t, t, T).item<double>() == Approx(0.0).margin(1e-12));
}

TEST_CASE("the adaptive lambda rises over budget and relaxes within it", "[objective]") {
  LambdaSchedule c("constant", 100, 1.5, 0.5, 1, 1000);
  c.update(0.9, 0.1);
  CHECK(c.value() == 100);
  LambdaSchedule a("adaptive", 100, 1.5, 0.5, 10, 200);
  a.update(0.9, 0.1);
  CHECK(a.value() == 150);
  a.update(0.9, 0.1);
  CHECK(a.value() == 200);  // clamped
  a.update(0.05, 0.1);
  CHECK(a.value() == 100);
  LambdaSchedule b("adaptive", 1, 1, 1, 1, 1);
  b.load_state(a.state());
  CHECK(b.value() == 100);
}

TEST_CASE("SNL gates: relaxed slopes, identity replacement, L1 and alive count", "[snl]") {
  auto g = SnlGate(layers::GateOptions({2, 2, 2}).granularity(layers::Granularity::Pixel));
  auto x = torch::randn({3, 2, 2, 2});
  g->set_relaxed(true);
  CHECK(torch::allclose(g->forward(x), torch::relu(x)));  // alpha starts at 1
  {
    torch::NoGradGuard ng;
    g->aux().fill_(0.0);
  }
  CHECK(torch::allclose(g->forward(x), x));
  GateList gates{g.ptr()};
  CHECK(snl_alive(gates) == 0);
  {
    torch::NoGradGuard ng;
    g->aux().view(-1)[0] = 0.5;
    g->aux().view(-1)[1] = 2.0;
  }
  CHECK(snl_l1(gates).item<double>() == Approx(2.5 / 8));
  snl_clamp(gates);
  CHECK(g->aux().max().item<float>() == 1.0f);
  CHECK(snl_alive(gates) == 2);
  // Masked: kept entries are ReLUs, the others the identity.
  g->set_relaxed(false);
  CHECK(keep_top_scores(gates, {g->aux()}, 1) == 1);
  g->eval();
  auto y = g->forward(x);
  auto m = g->mask().unsqueeze(0);
  CHECK(torch::allclose(y, m * torch::relu(x) + (1 - m) * x, 1e-6, 1e-6));
}

