#include "trainer/engine/class_report.h"

#include <iomanip>
#include <sstream>
#include <vector>

namespace autorep::trainer::engine {

namespace {

// Accuracy and samples of each of `names`, summing the classes `of_class` maps to it.
struct Table {
  std::vector<int64_t> correct, samples;
};

Table tally(const EvalResult& r, const std::vector<int64_t>& of_class, size_t entries) {
  Table t{std::vector<int64_t>(entries, 0), std::vector<int64_t>(entries, 0)};
  for (size_t c = 0; c < r.class_samples.size() && c < of_class.size(); ++c) {
    t.correct[of_class[c]] += r.class_correct[c];
    t.samples[of_class[c]] += r.class_samples[c];
  }
  return t;
}

// Fills report[list_key] with one entry per name and the worst / largest-drop keys.
void add_entries(nlohmann::json& report, const std::string& list_key, const std::string& entry_key,
                 const std::string& worst_prefix, const std::vector<std::string>& names, const Table& t,
                 const Table* ref) {
  nlohmann::json list = nlohmann::json::array();
  int64_t worst = -1, dropped = -1;
  double worst_acc = 0.0, max_drop = 0.0;
  for (size_t i = 0; i < names.size(); ++i) {
    nlohmann::json e = {{entry_key, names[i]}, {"accuracy", nullptr}, {"samples", t.samples[i]}};
    if (t.samples[i] > 0) {
      const double a = static_cast<double>(t.correct[i]) / static_cast<double>(t.samples[i]);
      e["accuracy"] = a;
      if (worst < 0 || a < worst_acc) worst = static_cast<int64_t>(i), worst_acc = a;
      if (ref != nullptr && ref->samples[i] > 0) {
        const double d = static_cast<double>(ref->correct[i]) / static_cast<double>(ref->samples[i]) - a;
        e["drop"] = d;
        if (dropped < 0 || d > max_drop) dropped = static_cast<int64_t>(i), max_drop = d;
      }
    }
    list.push_back(e);
  }
  report[list_key] = list;
  report["worst_" + worst_prefix] = worst >= 0 ? nlohmann::json(names[worst]) : nlohmann::json(nullptr);
  report["worst_" + worst_prefix + "_accuracy"] = worst >= 0 ? nlohmann::json(worst_acc) : nlohmann::json(nullptr);
  if (ref != nullptr) {
    report["max_" + worst_prefix + "_drop"] = dropped >= 0 ? nlohmann::json(max_drop) : nlohmann::json(nullptr);
    report["max_" + worst_prefix + "_drop_" + worst_prefix] =
        dropped >= 0 ? nlohmann::json(names[dropped]) : nlohmann::json(nullptr);
  }
}

}  // namespace

nlohmann::json class_report(const EvalResult& r, const data::DataSplits& data, const EvalResult* reference) {
  nlohmann::json report = nlohmann::json::object();
  std::vector<std::string> names = data.class_names;
  for (size_t c = names.size(); c < r.class_samples.size(); ++c) names.push_back(std::to_string(c));
  names.resize(r.class_samples.size());
  std::vector<int64_t> identity(names.size());
  for (size_t c = 0; c < identity.size(); ++c) identity[c] = static_cast<int64_t>(c);
  const Table classes = tally(r, identity, names.size());
  Table ref_classes;
  if (reference != nullptr) ref_classes = tally(*reference, identity, names.size());
  add_entries(report, "per_class", "class", "class", names, classes, reference ? &ref_classes : nullptr);
  if (!data.groups.by_class && data.groups.of_class.size() == names.size()) {
    const auto& g = data.groups;
    const Table groups = tally(r, g.of_class, g.names.size());
    Table ref_groups;
    if (reference != nullptr) ref_groups = tally(*reference, g.of_class, g.names.size());
    add_entries(report, "per_group", "group", "group", g.names, groups, reference ? &ref_groups : nullptr);
  }
  return report;
}

std::string class_summary(const nlohmann::json& report) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(2);
  auto part = [&](const std::string& kind) {
    const std::string worst = "worst_" + kind, drop = "max_" + kind + "_drop";
    if (!report.contains(worst) || report.at(worst).is_null()) return;
    if (s.tellp() > 0) s << "; ";
    s << "worst " << kind << " " << report.at(worst).get<std::string>() << " "
      << 100.0 * report.at(worst + "_accuracy").get<double>() << "%";
    if (report.contains(drop) && !report.at(drop).is_null())
      s << ", largest drop " << 100.0 * report.at(drop).get<double>() << " points ("
        << report.at(drop + "_" + kind).get<std::string>() << ")";
  };
  part("class");
  part("group");
  return s.str();
}

}  // namespace autorep::trainer::engine
