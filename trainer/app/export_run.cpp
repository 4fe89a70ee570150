#include "trainer/app/export_run.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "layers/site.h"
#include "search/budget.h"
#include "trainer/data/dataset.h"
#include "trainer/deploy/graph_eval.h"
#include "trainer/deploy/onnx_export.h"

#include "trainer/app/common.h"

namespace autorep::trainer::app {

namespace fs = std::filesystem;

std::optional<RecordedAccuracy> recorded_accuracy(const std::string& checkpoint, const nlohmann::json& state) {
  if (!state.contains("epoch") || state.value("step_in_epoch", int64_t{-1}) != 0) return std::nullopt;
  const int64_t epoch = state.at("epoch").get<int64_t>();
  const fs::path metrics = fs::path(checkpoint).parent_path().parent_path() / "metrics.jsonl";
  std::ifstream in(metrics);
  if (!in) return std::nullopt;
  std::optional<RecordedAccuracy> found;
  std::string line;
  while (std::getline(in, line)) {
    // A run killed mid-write may leave a partial last line; a later record for the same epoch
    // (after a resume) supersedes an earlier one.
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.value("type", "") == "eval" && j.value("epoch", int64_t{-1}) == epoch &&
        j.contains("test_accuracy") && j.at("test_accuracy").is_number()) {
      RecordedAccuracy a;
      a.test = j.at("test_accuracy").get<double>();
      if (j.contains("val_accuracy") && j.at("val_accuracy").is_number()) a.val = j.at("val_accuracy").get<double>();
      if (j.contains("test_per_class") && j.at("test_per_class").is_object()) a.per_class = j.at("test_per_class");
      found = a;
    }
  }
  return found;
}

// A class_report's per_class list as the export's entries.
std::vector<exports::ClassAccuracy> class_accuracies(const nlohmann::json& report) {
  std::vector<exports::ClassAccuracy> out;
  if (!report.is_object() || !report.contains("per_class") || !report.at("per_class").is_array()) return out;
  for (const auto& e : report.at("per_class")) {
    exports::ClassAccuracy c;
    c.name = e.value("class", std::string());
    if (e.contains("accuracy") && e.at("accuracy").is_number()) c.accuracy = e.at("accuracy").get<double>();
    c.samples = e.value("samples", int64_t{0});
    if (e.contains("drop") && e.at("drop").is_number()) c.drop = e.at("drop").get<double>();
    out.push_back(c);
  }
  return out;
}

exports::ExportInfo export_info(const LoadedModel& lm, const std::string& checkpoint, const ExportOptions& options) {
  const ModelSpec& spec = lm.model->spec();
  exports::ExportInfo info;
  info.arch = spec.name;
  info.input_shape = spec.input_shape;
  info.classes = spec.classes;
  if (spec.name == "resnet18") info.stem_relu = spec.stem_relu;
  info.checkpoint_sha256 = exports::sha256_file(checkpoint);
  info.dataset = lm.config.data.name;
  info.method = lm.config.method;
  if (find_method(lm.config.method).reduces) {
    // The budget the run resolved once (its state), or, for a checkpoint written before the state
    // kept it, resolved again against the model.
    const nlohmann::json& ms = lm.state.value("method", nlohmann::json::object());
    if (ms.is_object() && ms.contains("budget") && ms.at("budget").is_number_integer()) {
      info.budget_target = ms.at("budget").get<int64_t>();
    } else {
      try {
        info.budget_target = lm.config.search.budget.resolve(layers::total_relus(lm.model->sites()));
      } catch (const std::exception& e) {
        if (!options.quiet) std::cerr << "autorep: warning: no budget target in the export: " << e.what() << "\n";
      }
    }
  }
  if (auto acc = recorded_accuracy(checkpoint, lm.state)) {
    info.accuracy = acc->test;
    info.val_accuracy = acc->val;
    info.per_class = class_accuracies(acc->per_class);
    info.accuracy_source = "metrics.jsonl, epoch " + std::to_string(lm.state.at("epoch").get<int64_t>());
  } else if (options.evaluate) {
    try {
      const DataOptions d = data::test_split_options(lm.config.data);
      const DataSplits data = methods::load_test_split(lm, d);
      const torch::Device dev = resolve_device(options.device);
      lm.model->to(dev);
      const EvalResult r = evaluate(*lm.model, data, data.test, dev, d.eval_batch_size);
      lm.model->to(torch::kCPU);
      info.accuracy = r.accuracy;
      info.per_class = class_accuracies(engine::class_report(r, data));
      info.accuracy_source = "evaluated on " + std::to_string(r.samples) + " test samples";
    } catch (const std::exception& e) {
      if (!options.quiet)
        std::cerr << "autorep: warning: accuracy left null (evaluation failed: " << e.what() << ")\n";
    }
  }
  return info;
}

nlohmann::json export_checkpoint(const std::string& checkpoint, const std::string& out_path,
                                 const ExportOptions& options) {
  if (!fs::exists(checkpoint)) throw std::runtime_error(checkpoint + ": no such checkpoint");
  const exports::CostTable costs = exports::load_cost_table(options.cost_table);
  LoadedModel lm = load_model(checkpoint);
  lm.model->to(torch::kCPU);
  const exports::ExportInfo info = export_info(lm, checkpoint, options);
  exports::ExportJson doc = exports::build_export(lm.model->sites(), info, costs);
  if (options.range_images > 0) {
    try {
      // The first N training images (whatever the run held out for validation), normalised as
      // the checkpoint was trained.
      data::DataOptions d = lm.config.data;
      d.limit_train = options.range_images;
      d.val_split = 0;
      d.limit_test = 1;
      const DataSplits splits = methods::load_test_split(lm, d);
      const torch::Tensor images = splits.train.images.slice(0, 0, options.range_images);
      const double percentile = 0.9999;
      lm.model->eval();
      const auto ranges = deploy::observe_ranges(*lm.model, exports::parse_export(doc, out_path), {splits.mean, splits.std},
                                                 images, 250, percentile);
      deploy::add_ranges(doc, ranges, images.size(0), percentile);
    } catch (const std::exception& e) {
      if (!options.quiet) std::cerr << "autorep: warning: value ranges not recorded (" << e.what() << ")\n";
    }
  }
  nlohmann::json onnx, onnx_error;  // null without options.onnx_path
  if (!options.onnx_path.empty()) {
    deploy::OnnxOptions o;
    o.keep_batchnorm = options.keep_batchnorm;
    try {
      const deploy::OnnxSummary g = deploy::export_onnx(lm, doc, options.onnx_path, o);
      onnx = {{"path", g.path}, {"opset", deploy::kOnnxOpset}, {"nodes", g.nodes}, {"parameters", g.parameters},
              {"bytes", g.bytes}};
    } catch (const std::exception& e) {
      // The mask export does not depend on the graph.
      if (!options.onnx_optional) throw;
      onnx_error = e.what();
    }
  }
  // What is written must read back: a bug here is caught before an engine sees the file.
  exports::parse_export(doc, out_path.empty() ? options.onnx_path : out_path);
  if (!out_path.empty()) exports::write_export(out_path, doc);
  return {{"path", out_path},
          {"onnx", onnx},
          {"onnx_error", onnx_error},
          {"kept", doc["budget"]["kept"]},
          {"total", doc["budget"]["total"]},
          {"target", doc["budget"]["target"]},
          {"accuracy", doc["accuracy"]["test"]},
          {"val_accuracy", doc["accuracy"].contains("val") ? doc["accuracy"]["val"] : exports::ExportJson(nullptr)},
          {"granularity", doc["granularity"]},
          {"reduction", doc["cost"]["reduction"]["total"]}};
}

std::string run_checkpoint(const std::string& run_dir) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  for (const char* name : {"best.pt", "last.pt"})
    if (fs::exists(dir / name)) return (dir / name).string();
  throw std::runtime_error(run_dir + ": no checkpoints/best.pt or checkpoints/last.pt (is it a run directory?)");
}

VerifyResult verify_models(const exports::MaskExport& ex, NetImpl& trained, NetImpl& rebuilt, const torch::Tensor& batch,
                           double tolerance) {
  VerifyResult r;
  r.problems = exports::check_against_model(ex, rebuilt.sites());
  if (!r.problems.empty()) return r;

  // The export against the checkpoint's own masks and coefficients, entry by entry.
  exports::ExportInfo own_info;
  own_info.arch = trained.spec().name;
  own_info.input_shape = trained.spec().input_shape;
  own_info.classes = trained.spec().classes;
  const exports::ExportJson own_doc = exports::build_export(trained.sites(), own_info, exports::export_cost_table(ex));
  const exports::MaskExport own = exports::parse_export(own_doc, "checkpoint");
  std::vector<std::string> mask_sites;
  for (size_t i = 0; i < own.sites.size() && i < ex.sites.size(); ++i) {
    const auto& a = ex.sites[i];
    const auto& b = own.sites[i];
    if (a.granularity != b.granularity || a.mask.size() != b.mask.size()) {
      r.problems.push_back("site " + a.name + ": granularity " + a.granularity + " in the export, " + b.granularity +
                           " in the checkpoint");
      continue;
    }
    const auto& bits_a = a.mask;
    const auto& bits_b = b.mask;
    int64_t diff = 0;
    for (size_t k = 0; k < bits_a.size(); ++k) diff += bits_a[k] != bits_b[k];
    if (diff > 0) mask_sites.push_back(a.name + " (" + std::to_string(diff) + ")");
    r.mask_mismatches += diff;
    if (a.has_coefficients && b.has_coefficients && a.decision != "relu") {
      const bool deg2 = ex.degree >= 2;
      for (size_t k = 0; k < a.c0.size(); ++k) {
        r.max_coefficient_diff = std::max(r.max_coefficient_diff, std::abs(a.c0[k] - b.c0[k]));
        r.max_coefficient_diff = std::max(r.max_coefficient_diff, std::abs(a.c1[k] - b.c1[k]));
        if (deg2) r.max_coefficient_diff = std::max(r.max_coefficient_diff, std::abs(a.c2[k] - b.c2[k]));
      }
    }
  }
  if (r.mask_mismatches > 0) {
    std::string list;
    for (const auto& s : mask_sites) list += (list.empty() ? "" : ", ") + s;
    r.problems.push_back(std::to_string(r.mask_mismatches) + " mask entries differ from the checkpoint's, at " + list);
  }
  if (r.max_coefficient_diff > 0)
    r.problems.push_back("effective coefficients differ from the checkpoint's by up to " +
                         std::to_string(r.max_coefficient_diff));

  exports::apply_export(ex, rebuilt.sites());
  torch::NoGradGuard no_grad;
  const bool ta = trained.is_training(), tb = rebuilt.is_training();
  trained.eval();
  rebuilt.eval();
  const auto la = trained.forward(batch).to(torch::kDouble);
  const auto lb = rebuilt.forward(batch).to(torch::kDouble);
  trained.train(ta);
  rebuilt.train(tb);
  r.samples = batch.size(0);
  r.max_abs_diff = (la - lb).abs().max().item<double>();
  if (!(r.max_abs_diff <= tolerance)) {
    std::ostringstream o;
    o << "logits differ by up to " << r.max_abs_diff << " (tolerance " << tolerance << ")";
    r.problems.push_back(o.str());
  }
  r.ok = r.problems.empty();
  return r;
}

VerifyResult verify_export(const std::string& export_path, const std::string& checkpoint, const VerifyOptions& options) {
  VerifyResult r;
  exports::MaskExport ex;
  try {
    ex = exports::read_export(export_path);
  } catch (const exports::ExportError& e) {
    r.problems.push_back(std::string("inconsistent or unreadable export: ") + e.what());
    return r;
  }
  LoadedModel trained = load_model(checkpoint);
  LoadedModel rebuilt = load_model(checkpoint);

  const auto& model = ex.doc.at("model");
  const ModelSpec& spec = trained.model->spec();
  if (model.at("arch").get<std::string>() != spec.name ||
      model.at("input_shape").get<std::vector<int64_t>>() != spec.input_shape ||
      model.at("classes").get<int64_t>() != spec.classes)
    r.problems.push_back("the export describes model " + model.at("arch").get<std::string>() + " " +
                         model.at("input_shape").dump() + " with " + model.at("classes").dump() +
                         " classes; the checkpoint holds " + spec.name + " " + nlohmann::json(spec.input_shape).dump() +
                         " with " + std::to_string(spec.classes));
  const std::string hash = exports::sha256_file(checkpoint);
  if (model.at("checkpoint_sha256").is_null())
    r.notes.push_back("the export records no checkpoint hash");
  else if (model.at("checkpoint_sha256").get<std::string>() != hash)
    r.notes.push_back("the export was made from a different checkpoint file (sha256 " +
                      model.at("checkpoint_sha256").get<std::string>().substr(0, 12) + "..., this one " +
                      hash.substr(0, 12) + "...)");
  if (!r.problems.empty()) return r;

  DataOptions d = data::test_split_options(trained.config.data);
  if (!options.data_path.empty()) d.path = options.data_path;
  if (!options.eval) d.limit_test = options.batch;
  const DataSplits data = methods::load_test_split(trained, d);
  const int64_t n = std::min<int64_t>(options.batch, data.test.size());
  if (n <= 0) throw std::runtime_error("verify: the test split is empty");
  const torch::Device dev = resolve_device(options.device);
  trained.model->to(dev);
  rebuilt.model->to(dev);
  const auto x = make_batch(data, data.test, torch::arange(n, torch::kLong), /*train=*/false, 0).to(dev);
  VerifyResult v = verify_models(ex, *trained.model, *rebuilt.model, x, options.tolerance);
  v.notes.insert(v.notes.begin(), r.notes.begin(), r.notes.end());
  if (options.eval && v.problems.empty()) {
    const EvalResult e = evaluate(*rebuilt.model, data, data.test, dev, d.eval_batch_size);
    v.accuracy = e.accuracy;
  }
  return v;
}

}  // namespace autorep::trainer::app
