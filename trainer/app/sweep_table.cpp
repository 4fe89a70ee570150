#include "trainer/app/sweep.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "layers/util/atomic_file.h"
#include "layers/util/json_check.h"
#include "layers/util/text.h"
#include "search/budget.h"
#include "trainer/app/run.h"
#include "trainer/app/sweep_detail.h"
#include "trainer/engine/distributed.h"
#include "trainer/methods/registry.h"
#include "trainer/methods/run_config.h"

#include "trainer/app/common.h"

namespace autorep::trainer::app {

namespace fs = std::filesystem;
using namespace sweep_detail;

namespace sweep_detail {



std::string error_text(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// First difference between a run folder's config.json and the config the sweep would run now,
// compared as methods::comparable_config() does (run-only keys and settings the method never reads do
// not count), also ignoring where the teacher lives (the sweep folder may have moved). "" when
// they agree.
std::string config_difference(const fs::path& run_dir, const Config& config) {
  const fs::path saved_path = run_dir / "config.json";
  if (!fs::exists(saved_path)) return "";
  nlohmann::json saved = methods::comparable_config(read_json_file(saved_path.string()), saved_path.string());
  nlohmann::json now = methods::comparable_config(to_json(config));
  for (auto* j : {&saved, &now})
    if (j->contains("search")) (*j)["search"].erase("teacher");
  if (saved == now) return "";
  const auto diff = nlohmann::json::diff(saved, now);
  return diff.empty() ? std::string("?") : diff.at(0).value("path", std::string("?"));
}

// A row's worst-class accuracy in percent for the plot data ("nan": gnuplot leaves it out).
std::string worst_percent(const SweepRow& r) {
  return r.worst_class_accuracy >= 0 ? fixed(100.0 * r.worst_class_accuracy, 4) : std::string("nan");
}

// worst_class, worst_class_accuracy and max_class_drop of a result.json (absent in runs
// written before per-class accuracy was recorded).
void read_class_fields(const nlohmann::json& r, SweepRow& row) {
  if (r.contains("worst_class_accuracy") && r.at("worst_class_accuracy").is_number())
    row.worst_class_accuracy = r.at("worst_class_accuracy").get<double>();
  if (r.contains("worst_class") && r.at("worst_class").is_string()) row.worst_class = r.at("worst_class").get<std::string>();
  if (r.contains("max_class_drop") && r.at("max_class_drop").is_number())
    row.max_class_drop = r.at("max_class_drop").get<double>();
}

// The state of a run folder, as a table row.
SweepRow inspect_run(const PlannedRun& p, const fs::path& out) {
  SweepRow row;
  row.index = p.index;
  row.method = p.method;
  row.budget = budget_text(p.budget);
  row.name = p.name;
  row.run_dir = p.name;
  const fs::path result_path = p.dir / "result.json";
  if (fs::exists(result_path)) {
    try {
      const nlohmann::json r = read_json_file(result_path.string());
      row.relu_count = r.value("relu_count", int64_t{-1});
      row.total_relus = r.value("total_relus", int64_t{-1});
      row.accuracy = r.value("accuracy", -1.0);
      row.val_accuracy = r.value("val_accuracy", -1.0);
      row.skipped_steps = r.value("skipped_steps", int64_t{-1});
      row.search_end_kept = r.value("search_end_kept", int64_t{-1});
      read_class_fields(r, row);
      row.seconds = r.value("seconds", -1.0);
      const std::string ex = r.value("export_path", std::string());
      if (!ex.empty()) row.export_path = (fs::path(p.name) / ex).string();
      const std::string diff = config_difference(p.dir, p.config);
      if (diff.empty()) {
        row.status = "ok";
      } else {
        row.status = "failed";
        row.error = (out / p.name).string() + " holds a finished run of another config (first difference at " + diff +
                    "); remove that folder to rerun it, or sweep into another --out";
      }
    } catch (const std::exception& e) {
      row.status = "failed";
      row.error = one_line(error_text(e));
    }
    return row;
  }
  if (fs::exists(p.dir / "error.txt")) {
    row.status = "failed";
    row.error = one_line(read_text(p.dir / "error.txt"));
  } else if (fs::exists(p.dir / "checkpoints" / "last.pt")) {
    row.status = "unfinished";
  } else {
    row.status = "pending";
  }
  return row;
}

SweepRow inspect_teacher(const fs::path& dir) {
  SweepRow row;
  row.method = "teacher";
  row.budget = "all";
  row.name = "teacher";
  row.run_dir = "teacher";
  const fs::path result_path = dir / "result.json";
  if (fs::exists(result_path)) {
    const nlohmann::json r = read_json_file(result_path.string());
    row.status = "ok";
    row.relu_count = r.value("relu_count", int64_t{-1});
    row.total_relus = r.value("total_relus", int64_t{-1});
    row.accuracy = r.value("accuracy", -1.0);
    row.val_accuracy = r.value("val_accuracy", -1.0);
    row.skipped_steps = r.value("skipped_steps", int64_t{-1});
    read_class_fields(r, row);
    row.seconds = r.value("seconds", -1.0);
    row.export_path = r.value("checkpoint", std::string());
    if (!row.export_path.empty()) row.export_path = (fs::path("teacher") / row.export_path).string();
  } else if (fs::exists(dir / "checkpoints" / "last.pt")) {
    row.status = "unfinished";
  } else {
    row.status = "pending";
  }
  return row;
}

bool teacher_finished(const fs::path& dir) {
  return fs::exists(dir / "result.json") && fs::exists(dir / "checkpoints" / "best.pt");
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string gp_string(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("''") : std::string(1, c);
  return q + "'";
}

// Writes sweep-plot.dat (one block per method, points sorted by ReLU count) and sweep-plot.gp
// next to sweep.csv, and runs gnuplot on them when it is installed.
void write_plot(const fs::path& out, const std::vector<SweepRow>& rows, const std::string& title,
                const Console& console, SweepResult& result) {
  std::vector<std::string> methods;
  std::map<std::string, std::vector<const SweepRow*>> points;
  const SweepRow* teacher = nullptr;
  for (const auto& r : rows) {
    // A log axis has no place for 0 ReLUs; such runs stay in the table only.
    if (r.status != "ok" || r.relu_count <= 0 || r.accuracy < 0) continue;
    if (r.method == "teacher") {
      teacher = &r;
      continue;
    }
    if (!points.count(r.method)) methods.push_back(r.method);
    points[r.method].push_back(&r);
  }
  if (methods.empty()) {
    console.line("no finished runs with ReLUs yet: no Pareto plot");
    return;
  }
  std::ostringstream dat;
  dat << "# Pareto data of the sweep in this folder (drawn by sweep-plot.gp)\n"
         "# one block per method; columns: relu_count accuracy_percent budget worst_class_accuracy_percent\n";
  std::vector<std::string> plots;  // per data block: how it is drawn (after its "using" columns)
  for (const auto& m : methods) {
    auto& v = points[m];
    std::stable_sort(v.begin(), v.end(),
                     [](const SweepRow* a, const SweepRow* b) { return a->relu_count < b->relu_count; });
    dat << "# " << m << "\n";
    for (const auto* r : v) dat << r->relu_count << " " << fixed(100.0 * r->accuracy, 4) << " " << r->budget << " " << worst_percent(*r) << "\n";
    dat << "\n\n";
    plots.push_back("with linespoints linewidth 2 pointtype 7 title " + gp_string(m));
  }
  if (teacher != nullptr) {
    dat << "# teacher (all ReLUs)\n"
        << teacher->relu_count << " " << fixed(100.0 * teacher->accuracy, 4) << " all " << worst_percent(*teacher)
        << "\n\n\n";
    plots.push_back("with points pointtype 5 pointsize 1.5 linecolor rgb 'black' title 'teacher (all ReLUs)'");
  }
  // The plot command of every block against data column `y` (2: accuracy, 4: worst class).
  auto plot_of = [&](int y) {
    std::string cmd = "plot ";
    for (size_t i = 0; i < plots.size(); ++i)
      cmd += (i ? ", \\\n     " : "") + std::string("'sweep-plot.dat' index ") + std::to_string(i) + " using 1:" +
             std::to_string(y) + " " + plots[i];
    return cmd;
  };
  const std::string plot_cmd = plot_of(2), worst_cmd = plot_of(4);

  std::ostringstream gp;
  gp << "# Pareto plot of this sweep: test accuracy against ReLUs kept per sample, log x axis.\n"
        "# Written by `autorep sweep`; redraw with: cd <this folder> && gnuplot sweep-plot.gp\n"
        "set title " << gp_string(title) << " noenhanced\n"
        "set logscale x 10\n"
        "set xlabel 'ReLUs kept per sample (log scale)'\n"
        "set ylabel 'test accuracy (%)'\n"
        "set grid xtics mxtics ytics\n"
        "set key bottom right noenhanced\n"
        "set format x '%.0s%c'\n"
        "set offsets graph 0.05, graph 0.05, graph 0.05, graph 0.05\n"
        "set terminal png size 960,640\n"
        "set output 'pareto.png'\n"
     << plot_cmd << "\n"
     << "set terminal svg size 960,640 dynamic\n"
        "set output 'pareto.svg'\n"
        "replot\n"
        "set output\n"
        "# The same against the worst class's test accuracy (who pays for fewer ReLUs).\n"
        "set ylabel 'worst-class test accuracy (%)'\n"
        "set terminal png size 960,640\n"
        "set output 'pareto-worst-class.png'\n"
     << worst_cmd << "\n"
     << "set terminal svg size 960,640 dynamic\n"
        "set output 'pareto-worst-class.svg'\n"
        "replot\n"
        "set output\n";
  util::write_file_atomic((out / "sweep-plot.dat").string(), dat.str());
  util::write_file_atomic((out / "sweep-plot.gp").string(), gp.str());

  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    console.warn("gnuplot is not installed: no Pareto plot (install the Debian package gnuplot-nox, then run "
                 "`gnuplot sweep-plot.gp` in " + out.string() + "); sweep.csv is written");
    return;
  }
  const std::string cmd = "cd " + shell_quote(out.string()) + " && gnuplot sweep-plot.gp > sweep-plot.log 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    console.warn("gnuplot failed on " + (out / "sweep-plot.gp").string() + " (see " +
                 (out / "sweep-plot.log").string() + ")");
    return;
  }
  result.png_path = (out / "pareto.png").string();
  result.svg_path = (out / "pareto.svg").string();
}

}  // namespace sweep_detail

std::string sweep_csv(const std::vector<SweepRow>& rows) {
  std::ostringstream s;
  s << "method,budget,relu_count,accuracy,seconds,run_dir,export_path,status,error,val_accuracy,skipped_steps,"
       "search_end_kept,worst_class_accuracy,worst_class,max_class_drop\n";
  for (const auto& r : rows) {
    s << sweep_detail::csv_field(r.method) << "," << sweep_detail::csv_field(r.budget) << ","
      << (r.relu_count >= 0 ? std::to_string(r.relu_count) : std::string()) << ","
      << (r.accuracy >= 0 ? fixed(r.accuracy, 6) : std::string()) << ","
      << (r.seconds >= 0 ? fixed(r.seconds, 1) : std::string()) << "," << sweep_detail::csv_field(r.run_dir) << ","
      << sweep_detail::csv_field(r.export_path) << "," << r.status << "," << sweep_detail::csv_field(r.error) << ","
      << (r.val_accuracy >= 0 ? fixed(r.val_accuracy, 6) : std::string()) << ","
      << (r.skipped_steps >= 0 ? std::to_string(r.skipped_steps) : std::string()) << ","
      << (r.search_end_kept >= 0 ? std::to_string(r.search_end_kept) : std::string()) << ","
      << (r.worst_class_accuracy >= 0 ? fixed(r.worst_class_accuracy, 6) : std::string()) << ","
      << sweep_detail::csv_field(r.worst_class) << ","
      << (r.max_class_drop ? fixed(*r.max_class_drop, 6) : std::string()) << "\n";
  }
  return s.str();
}

}  // namespace autorep::trainer::app
