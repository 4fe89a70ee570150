#include "tests/torch_catch.h"

#include "search/fairness.h"

using namespace autorep::search;

TEST_CASE("the fairness penalty carries gradient and records each group's violation", "[fairness]") {
  GroupFairness f(2, FairnessOptions{true, 1.0, 0.0, false});
  auto losses = torch::tensor({1.0, 1.0, 3.0, 3.0}, torch::requires_grad());
  const auto group = torch::tensor({0, 0, 1, 1}, torch::kLong);
  // With every multiplier 0 (the start) the penalty is 0, but the violations are recorded.
  auto p0 = f.penalty(losses, group);
  CHECK(p0.item<double>() == Approx(0.0));
  CHECK(f.epoch_sums().abs().sum().item<double>() == 0.0);  // pending until the step is taken
  f.commit();
  const auto sums = f.epoch_sums();
  CHECK(sums[0].item<double>() == Approx(1.0));  // |1 - 2|
  CHECK(sums[1].item<double>() == Approx(1.0));  // |3 - 2|
  CHECK(sums[2].item<double>() == Approx(1.0));  // one batch held group 0
  f.dual_step(sums);
  CHECK(f.multipliers()[0] == Approx(1.0));
  CHECK(f.multipliers()[1] == Approx(1.0));
  auto p = f.penalty(losses, group);
  CHECK(p.item<double>() == Approx(2.0));
  p.backward();
  // d/dl_i of |L_0 - L| + |L_1 - L|: group 0 below the mean, group 1 above; the gradient lowers
  // the high group's losses and raises the low group's (never 0: not built from a detached value).
  const auto g = losses.grad();
  REQUIRE(g.defined());
  CHECK(g[0].item<double>() < 0);
  CHECK(g[2].item<double>() > 0);
  CHECK(g.abs().sum().item<double>() > 0.5);
}

TEST_CASE("a group absent from a batch adds no violation and the tolerance holds multipliers at 0", "[fairness]") {
  GroupFairness f(3, FairnessOptions{true, 0.5, 0.25, false});
  auto losses = torch::tensor({1.0, 2.0});
  f.penalty(losses, torch::tensor({0, 1}, torch::kLong));
  f.commit();
  const auto mean = GroupFairness::mean_violations(f.epoch_sums());
  CHECK(mean[0] == Approx(0.5));
  CHECK(mean[2] == Approx(0.0));
  f.dual_step(f.epoch_sums());
  CHECK(f.multipliers()[0] == Approx(0.5 * (0.5 - 0.25)));
  CHECK(f.multipliers()[2] == Approx(0.0));  // max(0, 0 + 0.5 * (0 - 0.25))
  CHECK(f.epoch_sums().abs().sum().item<double>() == 0.0);
}

TEST_CASE("the fairness penalty moves a toy two-group problem toward equal loss", "[fairness]") {
  // One shared parameter w fits both groups: group 0 wants w = 0, group 1 (a third of the
  // samples) wants w = 3. Plain least squares settles at the weighted mean (w = 1), where group
  // 1's loss is 4 times group 0's; with the penalty, dual ascent pulls w toward 1.5, where the
  // two losses are equal (a large dual step overshoots: the multipliers then oscillate).
  auto run = [](bool fair) {
    auto w = torch::zeros({1}, torch::requires_grad());
    const auto target = torch::tensor({0.0, 0.0, 0.0, 0.0, 3.0, 3.0});
    const auto group = torch::tensor({0, 0, 0, 0, 1, 1}, torch::kLong);
    GroupFairness f(2, FairnessOptions{true, 0.05, 0.05, false});
    torch::optim::SGD opt({w}, torch::optim::SGDOptions(0.02));
    for (int epoch = 0; epoch < 40; ++epoch) {
      for (int step = 0; step < 20; ++step) {
        const auto l = (w - target).pow(2);
        auto loss = l.mean();
        if (fair) loss = loss + f.penalty(l, group);
        f.commit();
        opt.zero_grad();
        loss.backward();
        opt.step();
      }
      if (fair) f.dual_step(f.epoch_sums());
    }
    const double v = w.item<double>();
    return std::pair<double, double>(v * v, (v - 3) * (v - 3));
  };
  const auto plain = run(false), fair = run(true);
  const double plain_gap = std::abs(plain.first - plain.second), fair_gap = std::abs(fair.first - fair.second);
  CHECK(plain_gap == Approx(3.0).margin(0.05));
  CHECK(fair_gap < 0.2 * plain_gap);
}

TEST_CASE("the fairness state restores the multipliers and the epoch's record", "[fairness]") {
  GroupFairness a(2, FairnessOptions{true, 1.0, 0.0, false});
  a.penalty(torch::tensor({1.0, 4.0}), torch::tensor({0, 1}, torch::kLong));
  a.commit();
  a.dual_step(a.epoch_sums());
  a.penalty(torch::tensor({2.0, 2.5}), torch::tensor({0, 1}, torch::kLong));
  a.commit();
  GroupFairness b(2, FairnessOptions{true, 1.0, 0.0, false});
  b.load_state(a.state());
  CHECK(b.multipliers() == a.multipliers());
  CHECK(torch::equal(b.epoch_sums(), a.epoch_sums()));
  GroupFairness c(3, FairnessOptions{});
  CHECK_THROWS_WITH(c.load_state(a.state()), Catch::Contains("2 multipliers"));
}
