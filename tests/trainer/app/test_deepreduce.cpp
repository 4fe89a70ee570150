#include "tests/torch_catch.h"
#include "tests/trainer/test_util.h"

#include <filesystem>

#include "search/export/relu_mask.h"
#include "trainer/app/export_run.h"
#include "trainer/app/run.h"
#include "trainer/engine/config.h"
#include "trainer/methods/deepreduce.h"
#include "trainer/methods/registry.h"
#include "trainer/models/registry.h"

using namespace autorep;
using namespace autorep::trainer;
using namespace autorep::trainer::methods::deepreduce;
namespace fs = std::filesystem;
using autorep::test::fresh_dir;
using autorep::test::have_fashion_mnist;

namespace {

// ReLUs of a plan counted on the model it builds.
int64_t built_relus(const models::ModelSpec& full, const Plan& p) {
  models::ModelSpec spec = full;
  spec.width = p.width;
  spec.stem_stride = p.stem_stride;
  const auto net = models::build_model(spec, layers::relu_factory());
  const auto kept = p.site_kept(*net);
  int64_t n = 0;
  for (size_t i = 0; i < kept.size(); ++i)
    if (kept[i]) n += net->sites()[i].elements();
  return n;
}

}  // namespace

TEST_CASE("deepreduce candidates: cull in criticality order, thin, reshape; the choice is the largest within budget",
          "[deepreduce]") {
  const models::ModelSpec full{"resnet20", {1, 28, 28}, 10, true};
  const int64_t s0 = 7 * 16 * 784, s1 = 6 * 32 * 196, s2 = 6 * 64 * 49;     // stage ReLUs
  const int64_t t0 = 4 * 16 * 784, t1 = 3 * 32 * 196, t2 = 3 * 64 * 49;     // thinned
  // Least critical first: layer2, then stem+layer1, then layer3.
  const auto list = candidates(full, {1, 0, 2}, Options{});
  REQUIRE(list.size() > 7);
  const std::vector<int64_t> first{s0 + s1 + s2, t0 + t1 + t2, s0 + s2, t0 + t2, s2, t2, 0};
  for (size_t i = 0; i < first.size(); ++i) {
    INFO(i);
    CHECK(list[i].relus == first[i]);
    CHECK(list[i].width == 1.0);
  }
  CHECK_FALSE(list[2].kept[1]);
  CHECK(list[4].kept == std::vector<bool>{false, false, true});
  size_t linear = 0;
  for (const auto& p : list) {
    INFO(p.describe(stage_counts(full)));
    CHECK(built_relus(full, p) == p.relus);  // every count is exact
    if (p.relus == 0) ++linear;
  }
  CHECK(linear == 1);
  for (const int64_t budget : {int64_t{0}, int64_t{1443}, int64_t{4328}, int64_t{14426}, s2, int64_t{200000}}) {
    const Plan& chosen = list[choose(list, budget)];
    CHECK(chosen.relus <= budget);
    for (const auto& p : list)
      if (p.relus <= budget) CHECK(p.relus <= chosen.relus);
  }
  // 1% of resnet20 is below every full-size stage: a reshaped network is chosen.
  const Plan& small = list[choose(list, 1443)];
  CHECK((small.width < 1.0 || small.stem_stride > 1));
  CHECK(small.relus > 0);

  // Models without reshaping get the full-size candidates only; one-site stages have no thinned variant.
  const auto cnn = candidates({"cnn-small", {1, 28, 28}, 10, true}, {2, 1, 0}, Options{});
  CHECK(cnn.size() == 4);  // all three layers, two, one, none
  for (const auto& p : cnn) CHECK_FALSE(p.thinned);
}

TEST_CASE("profile order: the stage that buys the most accuracy per ReLU is culled last", "[deepreduce]") {
  Profile p;
  p.linear_accuracy = 0.5;
  p.stages = {{"a", 1000, 0.9, (0.9 - 0.5) / 1000}, {"b", 10, 0.6, (0.6 - 0.5) / 10}, {"c", 100, 0.5, 0.0}};
  CHECK(p.cull_order() == std::vector<size_t>{2, 0, 1});
  const Profile back = profile_from_json(to_json(p));
  CHECK(back.cull_order() == p.cull_order());
  CHECK(to_json(p)["cull_order"] == nlohmann::json::array({"c", "a", "b"}));
}

TEST_CASE("a deepreduce run profiles its teacher once, meets the budget with layer sites, exports and verifies",
          "[deepreduce][slow]") {
  if (!have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed; skipped");
    return;
  }
  const auto dir = fresh_dir("deepreduce");
  engine::Config teacher;
  teacher.model.name = "cnn-small";
  teacher.data.limit_train = 1024;
  teacher.data.limit_test = 256;
  teacher.data.val_split = 256;
  teacher.data.batch_size = 64;
  teacher.train.epochs = 1;
  teacher.train.threads = 2;
  teacher.train.device = "cpu";
  teacher.optim.lr = 0.05;
  engine::RunOptions to;
  to.out_dir = (dir / "teacher").string();
  to.quiet = true;
  app::train_run(teacher, to);

  engine::Config c = teacher;
  c.method = "deepreduce";
  c.search.teacher = (dir / "teacher" / "checkpoints" / "best.pt").string();
  c.search.budget = "30%";
  c.search.method_keys = methods::config_schema().find("deepreduce")->search_keys;
  c.train.epochs = 1;
  engine::RunOptions ro;
  ro.out_dir = (dir / "run").string();
  ro.quiet = true;
  const engine::RunResult r = app::train_run(c, ro);
  REQUIRE(r.completed);
  const fs::path profile = dir / "teacher" / "deepreduce-profile" / "profile.json";
  REQUIRE(fs::exists(profile));
  CHECK(fs::exists(dir / "teacher" / "deepreduce-profile" / "linear"));
  CHECK(fs::exists(dir / "teacher" / "deepreduce-profile" / "stage-act3"));

  const auto ex = exports::read_export((dir / "run" / "export" / "mask.json").string());
  const int64_t total = 16 * 28 * 28 + 32 * 14 * 14 + 64;
  CHECK(ex.doc["budget"]["target"] == search::resolve_budget("30%", total));
  CHECK(ex.doc["budget"]["kept"].get<int64_t>() <= ex.doc["budget"]["target"].get<int64_t>());
  for (const auto& s : ex.doc["sites"]) {
    CHECK(s["granularity"] == "layer");
    const int64_t kept = s["kept"].get<int64_t>();
    const bool whole = kept == 0 || kept == s["total"].get<int64_t>();
    CHECK(whole);
    if (kept == 0) {  // a culled site is the identity
      CHECK(s["coefficients"]["c0"][0].get<double>() == Approx(0.0));
      CHECK(s["coefficients"]["c1"][0].get<double>() == Approx(1.0));
      CHECK(s["coefficients"]["c2"][0].get<double>() == Approx(0.0));
    }
  }
  app::VerifyOptions vo;
  vo.batch = 32;
  const auto v = app::verify_export((dir / "run" / "export" / "mask.json").string(), r.best_checkpoint, vo);
  INFO((v.problems.empty() ? std::string() : v.problems[0]));
  CHECK(v.ok);

  // The profile is deterministic: made again from scratch, the same accuracies and order.
  const nlohmann::json first = nlohmann::json::parse(autorep::test::read_text(profile))["profile"];
  fs::rename(dir / "teacher" / "deepreduce-profile", dir / "first-profile");
  const Profile again = ensure_profile(c, /*quiet=*/true);
  CHECK(to_json(again) == first);

  // A second budget reuses the profile: no profile run trains again.
  const auto written = fs::last_write_time(profile);
  c.search.budget = "5%";
  ro.out_dir = (dir / "run5").string();
  REQUIRE(app::train_run(c, ro).completed);
  CHECK(fs::last_write_time(profile) == written);

  // A fixed network with trained polynomials in place of the culled ReLUs (beyond the paper).
  c.search.method_keys["deepreduce"]["fixed"] = true;
  c.search.method_keys["deepreduce"]["keep_stages"] = {"act2"};
  c.search.method_keys["deepreduce"]["replacement"] = "polynomial";
  ro.out_dir = (dir / "poly").string();
  REQUIRE(app::train_run(c, ro).completed);
  const auto poly = exports::read_export((dir / "poly" / "export" / "mask.json").string());
  CHECK(poly.doc["budget"]["kept"] == 32 * 14 * 14);
  const auto& act1 = poly.doc["sites"][0];
  CHECK(act1["kept"] == 0);
  CHECK(act1["coefficients"]["c2"][0].get<double>() != Approx(0.0));  // a fitted quadratic, not the identity
  CHECK(poly.doc["sites"][1]["kept"] == 32 * 14 * 14);
  fs::remove_all(dir);
}
