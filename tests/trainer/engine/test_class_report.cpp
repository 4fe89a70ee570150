#include "tests/torch_catch.h"

#include "trainer/data/dataset.h"
#include "trainer/engine/class_report.h"
#include "trainer/engine/evaluate.h"

using namespace autorep::trainer;
using namespace autorep::trainer::engine;

namespace {

// Logits that predict `pred[i]` for sample i (NaN rows where pred is -1).
torch::Tensor logits_for(const std::vector<int64_t>& pred, int64_t classes) {
  auto l = torch::zeros({static_cast<int64_t>(pred.size()), classes});
  for (size_t i = 0; i < pred.size(); ++i) {
    if (pred[i] < 0) l[i].fill_(std::nan(""));
    else l[i][pred[i]] = 1.0;
  }
  return l;
}

data::DataSplits three_classes() {
  data::DataSplits d;
  d.classes = 3;
  d.class_names = {"cat", "dog", "bird"};
  d.groups = data::resolve_groups({}, d.class_names);
  return d;
}

}  // namespace

TEST_CASE("per-class accuracy of a hand-made prediction set", "[eval][classes]") {
  // Labels 0 0 0 0 1 1 2 2 2 2; predictions right for 3 of class 0, 1 of class 1 (the other a
  // NaN row, counted wrong) and 2 of class 2.
  const auto labels = torch::tensor({0, 0, 0, 0, 1, 1, 2, 2, 2, 2}, torch::kLong);
  const auto logits = logits_for({0, 0, 0, 1, 1, -1, 2, 2, 0, 1}, 3);
  EvalResult r;
  accumulate(r, logits, labels, 3);
  finish(r);
  CHECK(r.samples == 10);
  CHECK(r.nonfinite == 1);
  CHECK(r.accuracy == Approx(0.6));
  CHECK(r.class_samples == std::vector<int64_t>{4, 2, 4});
  CHECK(r.class_correct == std::vector<int64_t>{3, 1, 2});

  const auto d = three_classes();
  const auto report = class_report(r, d);
  REQUIRE(report.at("per_class").size() == 3);
  CHECK(report["per_class"][0]["class"] == "cat");
  CHECK(report["per_class"][0]["accuracy"].get<double>() == Approx(0.75));
  CHECK(report["per_class"][1]["accuracy"].get<double>() == Approx(0.5));
  CHECK(report["per_class"][2]["samples"] == 4);
  // A tie (dog and bird at 50%) goes to the first in label order.
  CHECK(report["worst_class"] == "dog");
  CHECK(report["worst_class_accuracy"].get<double>() == Approx(0.5));
  CHECK_FALSE(report.contains("max_class_drop"));
  CHECK_FALSE(report.contains("per_group"));

  // Against a reference that got every sample right: each class's drop, the largest named.
  EvalResult ref;
  accumulate(ref, logits_for({0, 0, 0, 0, 1, 1, 2, 2, 2, 2}, 3), labels, 3);
  finish(ref);
  const auto vs = class_report(r, d, &ref);
  CHECK(vs["per_class"][0]["drop"].get<double>() == Approx(0.25));
  CHECK(vs["max_class_drop"].get<double>() == Approx(0.5));
  CHECK(vs["max_class_drop_class"] == "dog");
  CHECK(class_summary(vs) == "worst class dog 50.00%, largest drop 50.00 points (dog)");
}

TEST_CASE("per-group accuracy sums the classes of each group", "[eval][classes]") {
  auto d = three_classes();
  d.groups = data::resolve_groups({{"pets", {"cat", "dog"}}}, d.class_names);
  const auto labels = torch::tensor({0, 0, 0, 0, 1, 1, 2, 2, 2, 2}, torch::kLong);
  EvalResult r;
  accumulate(r, logits_for({0, 0, 0, 1, 1, -1, 2, 2, 0, 1}, 3), labels, 3);
  finish(r);
  const auto report = class_report(r, d);
  REQUIRE(report.at("per_group").size() == 2);
  CHECK(report["per_group"][0]["group"] == "pets");
  CHECK(report["per_group"][0]["accuracy"].get<double>() == Approx(4.0 / 6.0));
  CHECK(report["per_group"][1]["group"] == "other");
  CHECK(report["worst_group"] == "other");
  // A class without samples has no accuracy and is never the worst.
  EvalResult few;
  accumulate(few, logits_for({1}, 3), torch::tensor({1}, torch::kLong), 3);
  finish(few);
  const auto f = class_report(few, three_classes());
  CHECK(f["per_class"][0]["accuracy"].is_null());
  CHECK(f["worst_class"] == "dog");
}
