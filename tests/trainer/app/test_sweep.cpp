#include "tests/torch_catch.h"
#include "tests/trainer/test_util.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "trainer/app/sweep.h"
#include "trainer/methods/run_config.h"

using namespace autorep::trainer;
using namespace autorep::trainer::app;
using namespace autorep::trainer::engine;
using namespace autorep::trainer::methods;
namespace fs = std::filesystem;
using autorep::test::fresh_dir;
using autorep::test::have_fashion_mnist;

namespace {


bool have_gnuplot() { return std::system("command -v gnuplot > /dev/null 2>&1") == 0; }

// cnn-small (18,880 ReLUs at 1x28x28) on 512 training images; a 1-epoch teacher trained by the sweep.
nlohmann::json tiny_sweep(const nlohmann::json& budgets) {
  const nlohmann::json data = {{"name", "fashion-mnist"}, {"limit_train", 512}, {"limit_test", 256}, {"batch_size", 64}};
  const nlohmann::json train = {{"epochs", 2}, {"threads", 2}, {"device", "cpu"}, {"checkpoint_interval_s", 0}};
  return {{"base_config",
           {{"method", "autorep"},
            {"data", data},
            {"model", {{"name", "cnn-small"}}},
            {"search", {{"search_epochs", 1}}},
            {"train", train}}},
          {"budgets", budgets},
          {"methods", {"autorep", "random"}},
          {"teacher",
           {{"config",
             {{"method", "baseline"},
              {"data", data},
              {"model", {{"name", "cnn-small"}}},
              {"optim", {{"lr", 0.05}}},
              {"train", train}}},
            {"set", {{"train.epochs", 1}}}}}};
}

std::vector<std::map<std::string, std::string>> read_csv(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::vector<std::string> header;
  std::vector<std::map<std::string, std::string>> rows;
  auto split = [](const std::string& s) {
    std::vector<std::string> f;
    std::string cur;
    bool q = false;
    for (size_t i = 0; i < s.size(); ++i) {
      const char c = s[i];
      if (q && c == '"' && i + 1 < s.size() && s[i + 1] == '"') cur += c, ++i;
      else if (c == '"') q = !q;
      else if (c == ',' && !q) f.push_back(cur), cur.clear();
      else cur += c;
    }
    f.push_back(cur);
    return f;
  };
  while (std::getline(in, line)) {
    if (header.empty()) {
      header = split(line);
      continue;
    }
    const auto f = split(line);
    REQUIRE(f.size() == header.size());
    std::map<std::string, std::string> row;
    for (size_t i = 0; i < f.size(); ++i) row[header[i]] = f[i];
    rows.push_back(row);
  }
  return rows;
}

std::string error_of(const nlohmann::json& j) {
  try {
    sweep_config_from_json(j, "s.json", "");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("sweep run folder names", "[sweep]") {
  CHECK(sweep_run_name("autorep", "3%") == "autorep-3pct");
  CHECK(sweep_run_name("random", 4328) == "random-4328");
  CHECK(sweep_run_name("snl", "0.5%") == "snl-0.5pct");
  CHECK(sweep_run_name("uniform", "a/b c") == "uniform-a_b_c");
  int64_t k = 0, n = 0;
  parse_shard("2/4", &k, &n);
  CHECK(k == 2);
  CHECK(n == 4);
  CHECK_THROWS_WITH(parse_shard("5/4", &k, &n), Catch::Contains("--shard 5/4"));
  CHECK_THROWS_WITH(parse_shard("x", &k, &n), Catch::Contains("K/N"));
  CHECK_THROWS_WITH(parse_shard("1/2x", &k, &n), Catch::Contains("K/N"));
}

TEST_CASE("sweep config errors name the key", "[sweep][config]") {
  const nlohmann::json ok = tiny_sweep({"5%", 1000});
  CHECK(error_of(ok).empty());
  const SweepConfig s = sweep_config_from_json(ok, "s.json", "");
  CHECK(s.methods == std::vector<std::string>{"autorep", "random"});
  CHECK(s.budgets.size() == 2);
  CHECK(s.teacher_set["train.epochs"] == 1);

  auto with = [&](const std::string& key, const nlohmann::json& v) {
    nlohmann::json j = ok;
    j[key] = v;
    return error_of(j);
  };
  CHECK_THAT(with("budget", "3%"), Catch::Contains("s.json: budget: unknown key") && Catch::Contains("budgets"));
  CHECK_THAT(with("budgets", nlohmann::json::array()), Catch::Contains("s.json: budgets:"));
  CHECK_THAT(with("budgets", {"3%", {{"x", 1}}}), Catch::Contains("s.json: budgets[1].x: unknown key"));
  CHECK_THAT(with("budgets", {"3%", true}), Catch::Contains("s.json: budgets[1]: expected a ReLU count"));
  CHECK_THAT(with("budgets", {"3%", {{"set", nlohmann::json::object()}}}),
             Catch::Contains("s.json: budgets[1].budget: missing"));
  CHECK_THAT(with("budgets", {"3%", {{"budget", "1%"}, {"set", {{"train.epoch", 3}}}}}),
             Catch::Contains("s.json: budgets[1].set: train.epoch: unknown key"));
  CHECK_THAT(with("budgets", {"3%", {{"budget", "3%"}}}), Catch::Contains("budgets[1].budget: duplicate"));
  {
    nlohmann::json j = ok;
    j["budgets"] = {"3%", {{"budget", "1%"}, {"set", {{"search.finetune_optim", {{"lr", 1e-4}}}}}}};
    const SweepConfig per_budget = sweep_config_from_json(j, "s.json", "");
    REQUIRE(per_budget.budgets.size() == 2);
    CHECK(per_budget.budgets[1] == "1%");
    CHECK(per_budget.budget_sets[0].empty());
    CHECK(per_budget.budget_sets[1]["search.finetune_optim"]["lr"] == 1e-4);
  }
  {
    nlohmann::json j = ok;
    j["runs"] = {{"random-5pct", {{"set", {{"search.finetune_optim.lr", 1e-4}}}}}};
    const SweepConfig per_run = sweep_config_from_json(j, "s.json", "");
    REQUIRE(per_run.run_sets.size() == 1);
    CHECK(per_run.run_sets.at("random-5pct")["search.finetune_optim.lr"] == 1e-4);
  }
  CHECK_THAT(with("runs", {{"autorep-7pct", {{"set", nlohmann::json::object()}}}}),
             Catch::Contains("s.json: runs.autorep-7pct: not a run of this sweep") && Catch::Contains("random-1000"));
  CHECK_THAT(with("runs", {{"autorep-5pct", {{"sett", 1}}}}), Catch::Contains("runs.autorep-5pct.sett: unknown key"));
  CHECK_THAT(with("runs", {{"autorep-5pct", nlohmann::json::object()}}),
             Catch::Contains("runs.autorep-5pct.set: missing"));
  CHECK_THAT(with("runs", {{"autorep-5pct", {{"set", {{"train.epoch", 3}}}}}}),
             Catch::Contains("s.json: runs.autorep-5pct.set: train.epoch: unknown key"));
  CHECK_THAT(with("runs", {"autorep-5pct"}), Catch::Contains("s.json: runs: expected"));
  CHECK_THAT(with("budgets", {"3%", "3%"}), Catch::Contains("budgets[1]: duplicate"));
  CHECK_THAT(with("budgets", {-5}), Catch::Contains("budgets[0]: must not be negative"));
  CHECK_THAT(with("methods", {"autorep", "bogus"}), Catch::Contains("s.json: methods[1]:") && Catch::Contains("bogus"));
  CHECK_THAT(with("methods", {"random", "random"}), Catch::Contains("methods[1]: duplicate"));
  CHECK_THAT(with("methods", {"random", {{"method", "random"}}}), Catch::Contains("methods[1].method: duplicate"));
  CHECK_THAT(with("methods", {"random", {{"set", nlohmann::json::object()}}}),
             Catch::Contains("s.json: methods[1].method: missing"));
  CHECK_THAT(with("methods", {"random", {{"method", "snl"}, {"sett", 1}}}),
             Catch::Contains("s.json: methods[1].sett: unknown key"));
  CHECK_THAT(with("methods", {"random", 7}), Catch::Contains("s.json: methods[1]: expected a method name"));
  CHECK_THAT(with("set", {{"train.epoch", 3}}),
             Catch::Contains("s.json: set: train.epoch: unknown key") && Catch::Contains("epochs"));
  CHECK_THAT(with("set", {{"trainer.epochs", 3}}), Catch::Contains("set: trainer.epochs: unknown key"));
  CHECK_THAT(with("teacher", 3), Catch::Contains("s.json: teacher:"));
  CHECK_THAT(with("teacher", {{"cfg", "x.json"}}), Catch::Contains("s.json: teacher.cfg: unknown key"));
  CHECK_THAT(with("teacher", {{"config", "/nonexistent/teacher.json"}}),
             Catch::Contains("/nonexistent/teacher.json: cannot open file"));
  CHECK_THAT(with("base", "/nonexistent/base.json"), Catch::Contains("give either"));
  {
    nlohmann::json j = ok;
    j.erase("base_config");
    CHECK_THAT(error_of(j), Catch::Contains("s.json: base: missing"));
    j["base"] = "/nonexistent/base.json";
    CHECK_THAT(error_of(j), Catch::Contains("/nonexistent/base.json: cannot open file"));
  }
  {
    nlohmann::json j = ok;
    j.erase("methods");
    j["base_config"]["method"] = "baseline";
    CHECK_THAT(error_of(j), Catch::Contains("s.json: methods: missing"));
    j["base_config"]["method"] = "uniform";
    CHECK(sweep_config_from_json(j, "s.json", "").methods == std::vector<std::string>{"uniform"});
  }
  {
    // A base key that only the resolved run config can check is reported before anything trains.
    nlohmann::json j = ok;
    j["base_config"]["model"]["name"] = "resnet99";
    const SweepConfig bad = sweep_config_from_json(j, "s.json", "");
    SweepOptions o;
    o.out_dir = fresh_dir("sweep-badbase").string();
    o.quiet = true;
    CHECK_THROWS_WITH(run_sweep(bad, o), Catch::Contains("model.name") && Catch::Contains("resnet99"));
    CHECK_FALSE(fs::exists(fs::path(o.out_dir) / "teacher"));
    o.overrides = {"train.epoch=3"};
    CHECK_THROWS_WITH(run_sweep(s, o), Catch::Contains("--set train.epoch=3: train.epoch: unknown key"));
    fs::remove_all(o.out_dir);
  }
}

TEST_CASE("a two-budget sweep writes the table and plot, skips finished runs and records failures",
          "[sweep][train]") {
  if (!have_fashion_mnist()) {
    WARN("Fashion-MNIST not installed; skipped");
    return;
  }
  const fs::path out = fresh_dir("sweep");
  const SweepConfig sweep = sweep_config_from_json(tiny_sweep({"5%", 1000}), "tiny-sweep.json", "");
  SweepOptions o;
  o.out_dir = out.string();
  o.quiet = true;

  const SweepResult r1 = run_sweep(sweep, o);
  CHECK(r1.planned == 4);
  CHECK(r1.trained == 4);
  CHECK(r1.skipped == 0);
  CHECK(r1.failed == 0);
  CHECK(r1.teacher_trained);
  REQUIRE(fs::exists(out / "teacher" / "checkpoints" / "best.pt"));

  const auto rows = read_csv(out / "sweep.csv");
  REQUIRE(rows.size() == 5);
  CHECK(rows[0].at("method") == "teacher");
  CHECK(rows[0].at("relu_count") == "18880");
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"autorep", "5%"}, {"autorep", "1000"}, {"random", "5%"}, {"random", "1000"}};
  const std::vector<int64_t> budgets = {944, 1000, 944, 1000};  // 5% of 18,880 is 944
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto& row = rows[i + 1];
    INFO("row " << i + 1);
    CHECK(row.at("method") == expected[i].first);
    CHECK(row.at("budget") == expected[i].second);
    CHECK(row.at("status") == "ok");
    CHECK(row.at("run_dir") == sweep_run_name(expected[i].first, expected[i].second == "5%"
                                                                     ? nlohmann::json("5%")
                                                                     : nlohmann::json(1000)));
    const int64_t relus = std::stoll(row.at("relu_count"));
    CHECK(relus <= budgets[i]);
    CHECK(relus > 0);
    const double acc = std::stod(row.at("accuracy"));
    CHECK(acc > 0.0);
    CHECK(acc <= 1.0);
    CHECK(std::stod(row.at("seconds")) > 0.0);
    CHECK(row.at("export_path") == row.at("run_dir") + "/export/mask.json");
    CHECK(fs::exists(out / row.at("export_path")));
    CHECK(row.at("error").empty());
  }
  CHECK(fs::exists(out / "autorep-5pct" / "result.json"));
  CHECK(fs::exists(out / "random-1000" / "result.json"));
  CHECK(fs::exists(out / "sweep-plot.gp"));
  CHECK(fs::exists(out / "sweep-plot.dat"));
  CHECK_FALSE(fs::exists(out / "sweep-errors.txt"));
  if (have_gnuplot()) {
    CHECK(r1.png_path == (out / "pareto.png").string());
    REQUIRE(fs::exists(out / "pareto.png"));
    REQUIRE(fs::exists(out / "pareto.svg"));
    CHECK(fs::file_size(out / "pareto.png") > 1000);
    std::ifstream svg(out / "pareto.svg");
    std::stringstream ss;
    ss << svg.rdbuf();
    CHECK_THAT(ss.str(), Catch::Contains("<svg") && Catch::Contains("autorep") && Catch::Contains("random"));
  } else {
    WARN("gnuplot not installed: plot files not checked");
  }

  // The plot data: one block per method, points sorted by ReLU count.
  {
    std::ifstream dat(out / "sweep-plot.dat");
    std::string line, block;
    std::map<std::string, std::vector<int64_t>> counts;
    while (std::getline(dat, line)) {
      if (line.rfind("# ", 0) == 0 && line.find("columns") == std::string::npos &&
          line.find("Pareto") == std::string::npos) {
        block = line.substr(2);
      } else if (!line.empty() && line[0] != '#') {
        counts[block].push_back(std::stoll(line.substr(0, line.find(' '))));
      }
    }
    REQUIRE(counts["autorep"].size() == 2);
    REQUIRE(counts["random"].size() == 2);
    CHECK(std::is_sorted(counts["autorep"].begin(), counts["autorep"].end()));
    CHECK(std::is_sorted(counts["random"].begin(), counts["random"].end()));
    CHECK(counts["teacher (all ReLUs)"] == std::vector<int64_t>{18880});
  }

  // A rerun trains nothing and leaves every run folder as it was.
  std::map<std::string, fs::file_time_type> stamps;
  for (const auto* n : {"teacher", "autorep-5pct", "autorep-1000", "random-5pct", "random-1000"}) {
    stamps[std::string(n) + "/last"] = fs::last_write_time(out / n / "checkpoints" / "last.pt");
    stamps[std::string(n) + "/result"] = fs::last_write_time(out / n / "result.json");
  }
  const SweepResult r2 = run_sweep(sweep, o);
  CHECK(r2.trained == 0);
  CHECK(r2.skipped == 4);
  CHECK(r2.failed == 0);
  CHECK_FALSE(r2.teacher_trained);
  for (const auto& [key, t] : stamps) {
    const auto slash = key.find('/');
    const fs::path f = out / key.substr(0, slash) /
                       (key.substr(slash + 1) == "last" ? fs::path("checkpoints/last.pt") : fs::path("result.json"));
    INFO(f.string());
    CHECK(fs::last_write_time(f) == t);
  }
  CHECK(read_csv(out / "sweep.csv") == rows);

  // --collect rebuilds the table from the folders; --shard runs only its share.
  fs::remove(out / "sweep.csv");
  SweepOptions oc = o;
  oc.collect = true;
  oc.plot = false;
  const SweepResult rc = run_sweep(sweep, oc);
  CHECK(rc.trained == 0);
  CHECK(read_csv(out / "sweep.csv") == rows);
  SweepOptions os = o;
  os.shard = 2;
  os.shards = 3;
  os.plot = false;
  const SweepResult rs = run_sweep(sweep, os);
  CHECK(rs.skipped == 1);  // index 1 of 0..3
  CHECK(rs.other_shards == 3);
  SweepOptions oo = os;
  oo.shards = 1;
  oo.shard = 1;
  oo.only = {"random-1000", "autorep-5pct"};
  const SweepResult ro = run_sweep(sweep, oo);
  CHECK(ro.skipped == 2);
  CHECK(ro.other_shards == 2);
  oo.only = {"random-7pct"};
  CHECK_THROWS_WITH(run_sweep(sweep, oo), Catch::Contains("--only random-7pct: no such run") &&
                                              Catch::Contains("autorep-5pct, autorep-1000, random-5pct, random-1000"));

  // A malformed budget fails when the sweep file is read, before anything trains.
  CHECK_THROWS_WITH(sweep_config_from_json(tiny_sweep({"5%", "abc", 1000}), "tiny-sweep.json", ""),
                    Catch::Contains("tiny-sweep.json: budgets[1]: not a number"));
  CHECK_THROWS_WITH(sweep_config_from_json(tiny_sweep({"5%", "3 %"}), "tiny-sweep.json", ""),
                    Catch::Contains("budgets[1]: not a number"));
  CHECK_THROWS_WITH(sweep_config_from_json(tiny_sweep({"150%"}), "tiny-sweep.json", ""),
                    Catch::Contains("budgets[0]: a percentage must be at most 100%"));

  // A run that fails (a budget above the model's ReLUs, known only once the model is built) is
  // recorded and the sweep goes on; the others are skipped.
  const SweepConfig with_bad =
      sweep_config_from_json(tiny_sweep({"5%", 1000000000, 1000}), "tiny-sweep.json", "");
  o.plot = false;
  const SweepResult r3 = run_sweep(with_bad, o);
  CHECK(r3.planned == 6);
  CHECK(r3.failed == 2);
  CHECK(r3.skipped == 4);
  CHECK(r3.trained == 0);
  const auto rows3 = read_csv(out / "sweep.csv");
  REQUIRE(rows3.size() == 7);
  for (const auto* name : {"autorep-1000000000", "random-1000000000"}) {
    INFO(name);
    auto it = std::find_if(rows3.begin(), rows3.end(), [&](const auto& r) { return r.at("run_dir") == name; });
    REQUIRE(it != rows3.end());
    CHECK(it->at("status") == "failed");
    CHECK(it->at("budget") == "1000000000");
    CHECK_THAT(it->at("error"), Catch::Contains("search.budget"));
    CHECK(it->at("relu_count").empty());
  }
  CHECK(rows3[1].at("run_dir") == "autorep-5pct");
  CHECK(rows3[1].at("status") == "ok");
  CHECK(rows3[3].at("run_dir") == "autorep-1000");
  CHECK(rows3[6].at("run_dir") == "random-1000");
  CHECK(rows3[6].at("status") == "ok");
  std::ifstream errors(out / "sweep-errors.txt");
  std::stringstream es;
  es << errors.rdbuf();
  CHECK_THAT(es.str(), Catch::Contains("autorep-1000000000: ") && Catch::Contains("random-1000000000: "));

  // A finished run of another config is not silently reported as this sweep's result.
  nlohmann::json changed = tiny_sweep({"5%"});
  changed["methods"] = {"random"};
  changed["set"] = {{"search.finetune_optim.lr", 0.02}};
  const SweepResult r4 = run_sweep(sweep_config_from_json(changed, "tiny-sweep.json", ""), o);
  CHECK(r4.failed == 1);
  CHECK(r4.trained == 0);
  REQUIRE(r4.rows.size() == 2);
  CHECK(r4.rows[1].status == "failed");
  CHECK_THAT(r4.rows[1].error, Catch::Contains("another config") && Catch::Contains("finetune_optim"));

  fs::remove_all(out);
}

TEST_CASE("a method's, a budget's and a run's own settings reach their runs, and the skip check ignores what a method "
          "never reads",
          "[sweep]") {
  // Run folders written by hand (config.json + result.json): --collect trains nothing and reports
  // each folder as the sweep's skip check sees it.
  nlohmann::json j = tiny_sweep({"5%", {{"budget", 1000}, {"set", {{"search.finetune_optim", {{"lr", 1e-4}}}}}}});
  j["methods"] = {"autorep", "snl", {{"method", "uniform"}, {"set", {{"gate.dapa.sigma", "var"}}}}};
  j["runs"] = {{"autorep-1000", {{"set", {{"search.aux_lr", 0.002}}}}}};
  j.erase("teacher");
  j["base_config"]["search"]["teacher"] = "/nonexistent/teacher.pt";
  const SweepConfig sweep = sweep_config_from_json(j, "s.json", "");
  const fs::path out = fresh_dir("sweep-budget-set");
  auto write_run = [&](const std::string& name, const std::string& method, const nlohmann::json& budget,
                       const std::vector<std::string>& sets) {
    nlohmann::json user = j["base_config"];
    user["method"] = method;
    user["search"]["budget"] = budget;
    for (const auto& s : sets) apply_override(user, s);
    fs::create_directories(out / name);
    std::ofstream(out / name / "config.json") << to_json(config_from_json(user)).dump(1);
    std::ofstream(out / name / "result.json")
        << nlohmann::json{{"relu_count", 900}, {"total_relus", 18880}, {"accuracy", 0.5}, {"seconds", 1.0}}.dump();
  };
  write_run("autorep-5pct", "autorep", "5%", {});
  write_run("autorep-1000", "autorep", 1000, {"search.finetune_optim.lr=1e-4", "search.aux_lr=0.002"});
  write_run("snl-5pct", "snl", "5%", {"gate.dapa.sigma=var", "gate.degree=1"});  // never read by snl
  write_run("snl-1000", "snl", 1000, {});  // lacks the budget's finetune lr
  write_run("uniform-5pct", "uniform", "5%", {"gate.dapa.sigma=var"});
  write_run("uniform-1000", "uniform", 1000, {"search.finetune_optim.lr=1e-4"});  // lacks the method's setting
  SweepOptions o;
  o.out_dir = out.string();
  o.quiet = true;
  o.collect = true;
  o.plot = false;
  run_sweep(sweep, o);
  std::map<std::string, std::map<std::string, std::string>> by_name;
  for (const auto& row : read_csv(out / "sweep.csv")) by_name[row.at("run_dir")] = row;
  CHECK(by_name.at("autorep-5pct").at("status") == "ok");
  CHECK(by_name.at("autorep-1000").at("status") == "ok");
  CHECK(by_name.at("snl-5pct").at("status") == "ok");
  CHECK(by_name.at("snl-1000").at("status") == "failed");
  CHECK_THAT(by_name.at("snl-1000").at("error"), Catch::Contains("/search/finetune_optim/lr"));
  CHECK(by_name.at("uniform-5pct").at("status") == "ok");
  CHECK(by_name.at("uniform-1000").at("status") == "failed");
  CHECK_THAT(by_name.at("uniform-1000").at("error"), Catch::Contains("/gate/dapa/sigma"));
  // The same budget setting on an autorep folder with another polynomial degree does count, and
  // so does a folder that lacks its run's own setting.
  write_run("autorep-5pct", "autorep", "5%", {"gate.degree=1"});
  write_run("autorep-1000", "autorep", 1000, {"search.finetune_optim.lr=1e-4"});
  run_sweep(sweep, o);
  by_name.clear();
  for (const auto& row : read_csv(out / "sweep.csv")) by_name[row.at("run_dir")] = row;
  CHECK(by_name.at("autorep-5pct").at("status") == "failed");
  CHECK(by_name.at("autorep-1000").at("status") == "failed");
  CHECK_THAT(by_name.at("autorep-1000").at("error"), Catch::Contains("/search/aux_lr"));
  fs::remove_all(out);
}

TEST_CASE("every shipped sweep file is valid and resolves every run's config", "[sweep][config]") {
  int n = 0;
  for (const auto& e : fs::directory_iterator(std::string(AUTOREP_SOURCE_DIR) + "/configs")) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".json" || name.rfind("sweep-", 0) != 0) continue;
    INFO(e.path().string());
    const SweepConfig s = load_sweep_config(e.path().string());
    SweepOptions o;
    o.out_dir = fresh_dir("sweep-shipped").string();
    o.quiet = true;
    o.collect = true;  // resolves and checks every run's config, trains nothing
    o.plot = false;
    const SweepResult r = run_sweep(s, o);
    CHECK(r.planned == static_cast<int64_t>(s.methods.size() * s.budgets.size()));
    CHECK(r.trained == 0);
    fs::remove_all(o.out_dir);
    ++n;
  }
  CHECK(n >= 2);
}
