#include "trainer/engine/run_result.h"

#include <filesystem>

#include "layers/util/atomic_file.h"
#include "trainer/engine/distributed.h"

namespace autorep::trainer::engine {

namespace fs = std::filesystem;

namespace {

// The per-class keys of result.json: the report of best.pt's test evaluation, its worst class
// and largest drop at the top level (what sweep.csv reads), and the teacher's report.
void add_class_report(nlohmann::json& j, const RunResult& r) {
  if (!r.class_report.is_object()) return;
  j["per_class"] = r.class_report;
  for (const char* key : {"worst_class", "worst_class_accuracy", "max_class_drop", "max_class_drop_class"})
    if (r.class_report.contains(key)) j[key] = r.class_report.at(key);
  if (r.teacher_class_report.is_object()) j["teacher_per_class"] = r.teacher_class_report;
}

}  // namespace

nlohmann::json run_result_json(const Config& config, const RunResult& r) {
  if (r.summary.is_null()) {  // nothing was exported: an all-ReLU run
    nlohmann::json j = {{"method", config.method},
                        {"accuracy", r.best_accuracy},
                        {"final_accuracy", r.final_accuracy},
                        {"relu_count", r.kept_relus},
                        {"total_relus", r.total_relus},
                        {"seconds", r.seconds},
                        {"skipped_steps", r.skipped_steps},
                        {"rollbacks", r.rollbacks},
                        {"checkpoint", "checkpoints/best.pt"}};
    if (r.best_val_accuracy >= 0) j["val_accuracy"] = r.best_val_accuracy;
    add_class_report(j, r);
    return j;
  }
  const nlohmann::json& s = r.summary;
  std::string export_path;
  if (s.is_object() && s.contains("path") && s["path"].is_string())
    export_path = fs::path(s["path"].get<std::string>()).lexically_relative(r.out_dir).string();
  const int64_t relus =
      s.is_object() && s.contains("kept") && s["kept"].is_number_integer() ? s["kept"].get<int64_t>() : r.kept_relus;
  const double accuracy = s.is_object() && s.contains("accuracy") && s["accuracy"].is_number()
                              ? s["accuracy"].get<double>()
                              : (r.best_accuracy >= 0 ? r.best_accuracy : r.final_accuracy);
  nlohmann::json j = {{"method", config.method},
                      {"budget", config.search.budget.json()},
                      {"relu_count", relus},
                      {"total_relus", r.total_relus},
                      {"accuracy", accuracy},
                      {"best_accuracy", r.best_accuracy},
                      {"final_accuracy", r.final_accuracy},
                      {"seconds", r.seconds},
                      {"skipped_steps", r.skipped_steps},
                      {"rollbacks", r.rollbacks},
                      {"export_path", export_path}};
  if (s.is_object() && s.contains("val_accuracy") && s["val_accuracy"].is_number())
    j["val_accuracy"] = s["val_accuracy"];
  else if (r.best_val_accuracy >= 0)
    j["val_accuracy"] = r.best_val_accuracy;
  if (r.method_state.is_object() && r.method_state.contains("search_end_kept"))
    j["search_end_kept"] = r.method_state["search_end_kept"];
  add_class_report(j, r);
  return j;
}

nlohmann::json write_run_result(const Config& config, const RunResult& r) {
  nlohmann::json j = run_result_json(config, r);
  if (dist::is_primary()) util::write_file_atomic((fs::path(r.out_dir) / "result.json").string(), j.dump(2) + "\n");
  return j;
}

}  // namespace autorep::trainer::engine
