// `autorep export | inspect | verify`: the export format of docs/export-format.md.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include "search/export/cost.h"
#include "search/export/relu_mask.h"
#include "trainer/app/commands.h"
#include "trainer/app/export_run.h"
#include "trainer/deploy/graph_eval.h"
#include "trainer/deploy/onnx_runtime.h"
#include "trainer/engine/loop.h"

#include "trainer/app/common.h"

namespace autorep::trainer::app {
namespace {

namespace fs = std::filesystem;

std::string bytes_text(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::abs(b) >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  std::ostringstream o;
  o << std::fixed << std::setprecision(u == 0 ? 0 : 2) << b << " " << units[u];
  return o.str();
}

std::string ratio_text(const exports::ExportJson& v) {
  if (v.is_null()) return "inf";
  std::ostringstream o;
  o << std::fixed << std::setprecision(2) << v.get<double>() << "x";
  return o.str();
}

std::string range_text(const std::vector<double>& v) {
  if (v.empty()) return "-";
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  std::ostringstream o;
  o << std::setprecision(3) << *lo;
  if (*hi != *lo) o << ".." << std::setprecision(3) << *hi;
  return o.str();
}

struct ExportArgs {
  std::string run, checkpoint, out, onnx, cost_table, device = "cpu";
  bool no_eval = false, keep_batchnorm = false;
  int64_t threads = -1, range_images = 10000;
};

int cmd_export(const ExportArgs& a) {
  configure_threads(a.threads < 0 ? 0 : a.threads);
  std::string checkpoint = a.checkpoint, out = a.out;
  if (!a.run.empty()) {
    checkpoint = run_checkpoint(a.run);
    // With --onnx alone only the graph is written; the run's own mask.json stays as it is.
    if (out.empty() && a.onnx.empty()) out = (fs::path(a.run) / "export" / "mask.json").string();
  }
  if (checkpoint.empty()) throw std::runtime_error("export: give --run DIR or --checkpoint FILE");
  if (out.empty() && a.onnx.empty()) throw std::runtime_error("export: --out (or --onnx) is required with --checkpoint");
  ExportOptions opts;
  opts.cost_table = a.cost_table;
  opts.evaluate = !a.no_eval;
  opts.device = a.device;
  opts.onnx_path = a.onnx;
  opts.keep_batchnorm = a.keep_batchnorm;
  opts.range_images = a.range_images;
  const nlohmann::json s = export_checkpoint(checkpoint, out, opts);
  if (!a.onnx.empty())
    std::cout << "exported " << checkpoint << " -> " << a.onnx << ": ONNX opset " << s["onnx"]["opset"].get<int64_t>()
              << ", " << with_commas(s["onnx"]["nodes"].get<int64_t>()) << " nodes, "
              << with_commas(s["onnx"]["parameters"].get<int64_t>()) << " parameters, "
              << bytes_text(s["onnx"]["bytes"].get<double>()) << " (batch norm "
              << (a.keep_batchnorm ? "kept" : "folded") << ")\n";
  if (out.empty()) return 0;
  std::cout << "exported " << checkpoint << " -> " << out << ": kept " << with_commas(s["kept"].get<int64_t>()) << " / "
            << with_commas(s["total"].get<int64_t>()) << " ReLUs";
  if (!s["target"].is_null()) std::cout << " (budget " << with_commas(s["target"].get<int64_t>()) << ")";
  if (!s["accuracy"].is_null())
    std::cout << ", test accuracy " << std::fixed << std::setprecision(2) << 100.0 * s["accuracy"].get<double>() << "%";
  std::cout << ", " << s["granularity"].get<std::string>() << " granularity, estimated communication reduction "
            << ratio_text(exports::ExportJson(s["reduction"])) << "\n";
  return 0;
}

int cmd_inspect(const std::string& path, const std::string& cost_table) {
  const exports::MaskExport ex = exports::read_export(path);
  const exports::CostTable table = cost_table.empty() ? exports::export_cost_table(ex) : exports::load_cost_table(cost_table);
  const exports::ExportJson cost = exports::cost_section(ex, table);
  const auto& doc = ex.doc;
  const auto& model = doc["model"];
  std::cout << path << ": " << doc["format"].get<std::string>() << " v" << doc["version"].get<int64_t>() << " ("
            << doc["producer"].get<std::string>() << ")\n";
  std::cout << "model " << model["arch"].get<std::string>() << " "
            << shape_text(model["input_shape"].get<std::vector<int64_t>>()) << ", " << model["classes"].get<int64_t>()
            << " classes; data " << (doc["dataset"].is_null() ? "?" : doc["dataset"].get<std::string>()) << "; method "
            << doc["method"].get<std::string>() << "; granularity " << ex.granularity << "; polynomial degree "
            << ex.degree << " (effective coefficients: c0 + c1*x + c2*x^2)\n\n";

  size_t wname = 4;
  for (const auto& s : ex.sites) wname = std::max(wname, s.name.size());
  const int wn = static_cast<int>(wname);
  std::cout << std::left << std::setw(wn) << "site" << "  " << std::setw(12) << "shape" << std::right << std::setw(11)
            << "kept" << std::setw(11) << "total" << std::setw(8) << "kept%" << "  " << std::left << std::setw(10)
            << "decision" << std::setw(20) << "c0" << std::setw(20) << "c1" << std::setw(20) << "c2" << std::right
            << std::setw(12) << "offline" << std::setw(12) << "online";
  // Integer bits (with the sign) each site's observed input and output need in fixed point.
  bool ranges = false;
  for (const auto& s : doc["sites"]) ranges = ranges || s.contains("range");
  if (ranges) std::cout << std::setw(9) << "in bits" << std::setw(9) << "out bits";
  std::cout << "\n";
  int in_bits_max = 0, out_bits_max = 0;
  for (size_t i = 0; i < ex.sites.size(); ++i) {
    const auto& s = ex.sites[i];
    const auto& c = cost["sites"][i];
    const bool poly = s.decision != "relu" && s.has_coefficients;
    std::ostringstream pct;
    pct << std::fixed << std::setprecision(2) << (s.total > 0 ? 100.0 * s.kept / s.total : 0.0);
    std::cout << std::left << std::setw(wn) << s.name << "  " << std::setw(12) << shape_text(s.shape) << std::right
              << std::setw(11) << with_commas(s.kept) << std::setw(11) << with_commas(s.total) << std::setw(8)
              << pct.str() << "  " << std::left << std::setw(10) << s.decision << std::setw(20)
              << (poly ? range_text(s.c0) : "-") << std::setw(20) << (poly ? range_text(s.c1) : "-") << std::setw(20)
              << (poly ? range_text(s.c2) : "-") << std::right << std::setw(12)
              << bytes_text(c["offline_bytes"].get<double>()) << std::setw(12)
              << bytes_text(c["online_bytes"].get<double>());
    const auto& js = doc["sites"][i];
    if (js.contains("range")) {
      auto bits = [&](const char* side) {
        const auto& r = js["range"][side];
        return deploy::integer_bits(std::max(std::abs(r["min"].get<double>()), std::abs(r["max"].get<double>())));
      };
      const int bi = bits("input"), bo = bits("output");
      in_bits_max = std::max(in_bits_max, bi);
      out_bits_max = std::max(out_bits_max, bo);
      std::cout << std::setw(9) << bi << std::setw(9) << bo;
    }
    std::cout << "\n";
  }
  if (ranges)
    std::cout << "\nvalue ranges over " << with_commas(doc["sites"][0]["range"]["images"].get<int64_t>())
              << " training images: the widest site input needs " << in_bits_max << " integer bits, output "
              << out_bits_max << " (with the sign; add the fraction bits of the engine's scale)\n";
  const auto& before = cost["before"];
  const auto& after = cost["after"];
  std::ostringstream pct;
  pct << std::fixed << std::setprecision(2) << (ex.total > 0 ? 100.0 * ex.kept / ex.total : 0.0);
  std::cout << "\n" << ex.sites.size() << " sites; kept " << with_commas(ex.kept) << " / " << with_commas(ex.total)
            << " ReLUs (" << pct.str() << "%)";
  if (ex.budget_target) std::cout << ", budget " << with_commas(*ex.budget_target);
  const auto& acc = doc["accuracy"];
  if (!acc["test"].is_null())
    std::cout << "; test accuracy " << std::fixed << std::setprecision(2) << 100.0 * acc["test"].get<double>() << "%"
              << (acc.contains("val") ? ", validation " + fixed(100.0 * acc["val"].get<double>(), 2) + "%" : std::string())
              << (acc.contains("source") ? " (" + acc["source"].get<std::string>() + ")" : std::string());
  if (acc.contains("worst_class"))
    std::cout << "\nworst class " << acc["worst_class"].get<std::string>() << " "
              << fixed(100.0 * acc["worst_class_accuracy"].get<double>(), 2) << "%"
              << (acc.contains("max_class_drop")
                      ? ", largest drop against the teacher " + fixed(100.0 * acc["max_class_drop"].get<double>(), 2) +
                            " points (" + acc["max_class_drop_class"].get<std::string>() + ")"
                      : std::string());
  std::cout << "\ncost (table " << table.name << "): before offline " << bytes_text(before["offline_bytes"].get<double>())
            << ", online " << bytes_text(before["online_bytes"].get<double>()) << "; after offline "
            << bytes_text(after["offline_bytes"].get<double>()) << ", online "
            << bytes_text(after["online_bytes"].get<double>()) << " (" << with_commas(after["relus"].get<int64_t>())
            << " ReLUs, " << with_commas(after["multiplications"].get<int64_t>()) << " multiplications)\n";
  std::cout << "reduction " << ratio_text(cost["reduction"]["total"]) << " (offline "
            << ratio_text(cost["reduction"]["offline"]) << ", online " << ratio_text(cost["reduction"]["online"])
            << ")\n";
  std::cout << "kept=" << ex.kept << " total=" << ex.total << " before_bytes="
            << std::llround(before["offline_bytes"].get<double>() + before["online_bytes"].get<double>())
            << " after_bytes=" << std::llround(after["offline_bytes"].get<double>() + after["online_bytes"].get<double>())
            << "\n";
  return 0;
}

int cmd_verify_onnx(const std::string& onnx_path, const std::string& checkpoint, const deploy::OnnxVerifyOptions& opts,
                    int64_t threads) {
  configure_threads(threads < 0 ? 0 : threads);
  const deploy::OnnxVerifyResult r = deploy::verify_onnx(onnx_path, checkpoint, opts);
  if (r.max_abs_diff >= 0)
    std::cout << "OpenCV DNN vs LibTorch on the first " << r.samples << " test images: max abs logit difference "
              << std::scientific << std::setprecision(3) << r.max_abs_diff << " (relative " << r.max_rel_diff
              << ", tolerance " << opts.tolerance << ")\n"
              << std::defaultfloat;
  if (r.accuracy_libtorch && r.accuracy_onnx)
    std::cout << "test accuracy over " << with_commas(r.eval_samples) << " images: LibTorch " << fixed(100.0 * *r.accuracy_libtorch, 2)
              << "%, OpenCV DNN " << fixed(100.0 * *r.accuracy_onnx, 2) << "%; " << r.prediction_mismatches
              << " predictions differ; " << fixed(r.ms_per_image_libtorch, 3) << " ms/image LibTorch, "
              << fixed(r.ms_per_image_onnx, 3) << " ms/image OpenCV DNN (batches of 100, " << torch::get_num_threads()
              << " threads)\n";
  if (r.ok) {
    std::cout << "verify: OK: " << onnx_path << " (OpenCV DNN) reproduces " << checkpoint << " (LibTorch)\n";
    return 0;
  }
  std::cout << "verify: FAILED: " << onnx_path << " does not reproduce " << checkpoint << "\n";
  for (const auto& p : r.problems) std::cout << "  - " << p << "\n";
  return 1;
}

int cmd_fixed_point(const std::string& checkpoint, const std::string& format_text, const std::string& data_path,
                    int64_t limit, int64_t threads) {
  configure_threads(threads < 0 ? 0 : threads);
  const deploy::FixedPoint format = deploy::FixedPoint::parse(format_text);
  const deploy::FixedPointResult r = deploy::evaluate_fixed_point(checkpoint, format, data_path, limit);
  std::cout << "fixed point " << format.text() << " (" << format.total - format.fraction << " integer bits with the sign, |x| < 2^"
            << format.total - format.fraction - 1 << "): test accuracy " << fixed(100.0 * r.accuracy_fixed, 2)
            << "% against " << fixed(100.0 * r.accuracy_float, 2) << "% in float32 over " << with_commas(r.samples)
            << " images; " << r.out_of_range << " images leave the range; " << r.prediction_mismatches
            << " predictions differ; max |logit difference| " << std::scientific << std::setprecision(3) << r.max_logit_diff
            << std::defaultfloat << "\n";
  if (r.out_of_range == 0) {
    std::cout << "verify: OK: every value of " << checkpoint << " stays within " << format.text() << "\n";
    return 0;
  }
  std::cout << "verify: FAILED: " << r.out_of_range << " test images leave the range of " << format.text()
            << " (more integer bits or fewer fraction bits needed; autorep inspect shows the bits per site)\n";
  return 1;
}

int cmd_verify(const std::string& export_path, const std::string& checkpoint, const VerifyOptions& opts, int64_t threads) {
  configure_threads(threads < 0 ? 0 : threads);
  const VerifyResult r = verify_export(export_path, checkpoint, opts);
  for (const auto& n : r.notes) std::cout << "note: " << n << "\n";
  if (r.max_abs_diff >= 0)
    std::cout << "max abs logit difference " << std::scientific << std::setprecision(3) << r.max_abs_diff << " on "
              << r.samples << " test images (tolerance " << opts.tolerance << "); " << r.mask_mismatches
              << " mask entries differ from the checkpoint\n"
              << std::defaultfloat;
  if (r.accuracy)
    std::cout << "test accuracy of the rebuilt model " << std::fixed << std::setprecision(2) << 100.0 * *r.accuracy
              << "%\n";
  if (r.ok) {
    std::cout << "verify: OK: " << export_path << " reproduces " << checkpoint << "\n";
    return 0;
  }
  std::cout << "verify: FAILED: " << export_path << " does not reproduce " << checkpoint << "\n";
  for (const auto& p : r.problems) std::cout << "  - " << p << "\n";
  return 1;
}

}  // namespace

void add_export_commands(CLI::App& app, Commands& out) {
  auto ea = std::make_shared<ExportArgs>();
  auto* ex = app.add_subcommand("export", "Write the autorep.relu-mask JSON export of a run or checkpoint");
  auto* run = ex->add_option("--run", ea->run, "Run directory (uses checkpoints/best.pt, else last.pt)");
  auto* ck = ex->add_option("--checkpoint", ea->checkpoint, "Checkpoint file (.pt)");
  run->excludes(ck);
  ck->excludes(run);
  ex->add_option("--out,-o", ea->out, "Export file (default with --run and no --onnx: DIR/export/mask.json)");
  ex->add_option("--onnx", ea->onnx,
                 "Also (with --out) or only write the whole network as an ONNX graph (opset 13, docs/deploy.md)");
  ex->add_option("--range-images", ea->range_images,
                 "Record each site's input/output value range over the first N training images (default 10000; 0: none)")
      ->check(CLI::NonNegativeNumber);
  ex->add_flag("--keep-batchnorm", ea->keep_batchnorm,
               "ONNX: keep batch norms as BatchNormalization nodes (default: folded into the convolutions)");
  ex->add_option("--cost-table", ea->cost_table, "Per-operation cost table JSON (default: configs/cost-delphi.json, built in)");
  ex->add_flag("--no-eval", ea->no_eval, "Do not evaluate accuracy when the run's metrics do not record it");
  ex->add_option("--device", ea->device, "Device for that evaluation: auto | cpu | cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  ex->add_option("--threads", ea->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  out.push_back({ex, [ea] { return cmd_export(*ea); }});

  struct InspectArgs {
    std::string path, cost_table;
  };
  auto ia = std::make_shared<InspectArgs>();
  auto* in = app.add_subcommand("inspect", "Per-site table of an export: shape, kept, kept %, coefficients, cost");
  in->add_option("export", ia->path, "Export file (mask.json)")->required();
  in->add_option("--cost-table", ia->cost_table, "Estimate with this cost table instead of the export's own");
  out.push_back({in, [ia] { return cmd_inspect(ia->path, ia->cost_table); }});

  struct VerifyArgs {
    std::string export_path, onnx_path, checkpoint, fixed_point;
    VerifyOptions opts;
    int64_t threads = -1;
  };
  auto va = std::make_shared<VerifyArgs>();
  auto* ve = app.add_subcommand(
      "verify",
      "Check that a checkpoint rebuilt with the export's masks and coefficients (--export), or the ONNX graph run by "
      "OpenCV DNN (--onnx), reproduces the checkpoint's logits");
  auto* ve_export = ve->add_option("--export", va->export_path, "Export file (mask.json)");
  auto* ve_onnx = ve->add_option("--onnx", va->onnx_path, "ONNX file written by autorep export --onnx");
  ve_export->excludes(ve_onnx);
  ve_onnx->excludes(ve_export);
  ve->add_option("--checkpoint", va->checkpoint, "The checkpoint the export was made from (.pt)")->required();
  ve->add_option("--batch", va->opts.batch, "Compare logits on the first N test images (default 256)")
      ->check(CLI::PositiveNumber);
  ve->add_flag("--eval", va->opts.eval, "Also evaluate the test accuracy of the rebuilt model");
  auto* tol = ve->add_option("--tolerance", va->opts.tolerance,
                             "Max abs logit difference accepted (default 1e-5); with --onnx the max relative "
                             "difference, max|a-b|/max|a| (default 1e-4)");
  ve->add_option("--device", va->opts.device, "auto | cpu | cuda (default cpu)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  ve->add_option("--fixed-point", va->fixed_point,
                 "Also run the exported network with every weight and value rounded to TOTAL.FRACTION bits "
                 "(e.g. 64.13) over the test set: accuracy, and the images whose values leave the range");
  ve->add_option("--data", va->opts.data_path, "Folder of the data set (default: the checkpoint config's)");
  ve->add_option("--threads", va->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  out.push_back({ve, [va, tol] {
                   if (va->export_path.empty() && va->onnx_path.empty() && va->fixed_point.empty())
                     throw std::runtime_error("verify: give --export FILE, --onnx FILE or --fixed-point FORMAT");
                   int rc = 0;
                   if (!va->export_path.empty()) rc = cmd_verify(va->export_path, va->checkpoint, va->opts, va->threads);
                   if (!va->onnx_path.empty()) {
                     deploy::OnnxVerifyOptions o;
                     o.batch = va->opts.batch;
                     o.eval = va->opts.eval;
                     if (tol->count() > 0) o.tolerance = va->opts.tolerance;
                     o.data_path = va->opts.data_path;
                     rc = std::max(rc, cmd_verify_onnx(va->onnx_path, va->checkpoint, o, va->threads));
                   }
                   if (!va->fixed_point.empty())
                     rc = std::max(rc, cmd_fixed_point(va->checkpoint, va->fixed_point, va->opts.data_path,
                                                       va->opts.eval ? 0 : va->opts.batch, va->threads));
                   return rc;
                 }});
}

}  // namespace autorep::trainer::app
