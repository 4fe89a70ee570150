#include "tests/torch_catch.h"

#include <regex>
#include <sstream>

#include "trainer/app/bench_step.h"

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
