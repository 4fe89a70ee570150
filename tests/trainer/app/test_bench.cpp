#include "tests/torch_catch.h"

#include <regex>
#include <sstream>

#include "trainer/app/bench_epoch.h"
#include "trainer/app/bench_step.h"
#include "tests/trainer/test_util.h"

using namespace autorep::trainer::app;

namespace {

// A small model, one timed step of each kind: fast enough for a unit test.
StepBenchOptions small(bool conv_paths) {
  StepBenchOptions o;
  o.model = "cnn-small";
  o.batch = 8;
  o.iters = 1;
  o.warmup = 0;
  o.conv_paths = conv_paths;
  return o;
}

}  // namespace

TEST_CASE("bench step times the channels_last path from the same weights and gives the ratio", "[bench]") {
  std::ostringstream out;
  REQUIRE(run_step_bench(small(true), out) == 0);
  const std::string text = out.str();
  INFO(text);
  std::smatch m;
  REQUIRE(std::regex_search(text, m, std::regex(R"(logits differ by at most ([0-9.e+-]+)\))")));
  // Same weights, same batch: only the summation order of the convolutions differs.
  CHECK(std::stod(m[1].str()) < 1e-3);
  REQUIRE(std::regex_search(text, m, std::regex(R"(channels_last_over_default=([0-9.]+))")));
  CHECK(std::stod(m[1].str()) > 0);
  CHECK(text.find("search_over_baseline=") != std::string::npos);
}

TEST_CASE("bench step without --conv-paths prints no channels_last line", "[bench]") {
  std::ostringstream out;
  REQUIRE(run_step_bench(small(false), out) == 0);
  CHECK(out.str().find("channels_last") == std::string::npos);
}

TEST_CASE("bench epoch times the baseline before and after the reduction runs and divides by their mean",
          "[bench][slow]") {
  if (!autorep::test::have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed; skipped");
    return;
  }
  EpochBenchOptions o;
  o.model = "cnn-small";
  o.steps = 2;
  std::ostringstream out;
  REQUIRE(run_epoch_bench(o, out) == 0);
  const std::string text = out.str();
  INFO(text);
  std::smatch m;
  double ms[4];
  const char* names[] = {"baseline", "search \\(autorep\\)", "finetune \\(uniform\\)", "baseline, again"};
  for (int i = 0; i < 4; ++i) {
    REQUIRE(std::regex_search(text, m, std::regex(std::string("  ") + names[i] + R"( +([0-9.]+) ms/step over 2 steps)")));
    ms[i] = std::stod(m[1].str());
  }
  REQUIRE(std::regex_search(text, m, std::regex(R"(search_epoch_over_baseline=([0-9.]+))")));
  // Printed to 3 decimals: the search run over the mean of the two baselines.
  CHECK(std::stod(m[1].str()) == Approx(ms[1] / (0.5 * (ms[0] + ms[3]))).epsilon(0.02));
  REQUIRE(std::regex_search(text, m, std::regex(R"(baseline drift \(again / first\)=([0-9.]+))")));
  CHECK(std::stod(m[1].str()) == Approx(ms[3] / ms[0]).epsilon(0.02));
  CHECK(text.find("finetune_epoch_over_baseline=") != std::string::npos);
}
