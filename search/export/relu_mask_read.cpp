#include "search/export/relu_mask.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <stdexcept>

#include "layers/gate.h"
#include "layers/util/atomic_file.h"
#include "layers/util/json_check.h"
#include "layers/util/text.h"
#include "search/export/encoding.h"
#include "search/export/relu_mask_detail.h"

namespace autorep::exports {

using namespace detail;

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Reading and validation.

namespace {

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw ExportError(source_ + ": " + (path.empty() ? std::string("(top level)") : path) + ": " + what);
  }

  static std::string join(const std::string& path, const std::string& key) { return util::key_path(path, key); }

  // The object at `path`, with exactly the allowed keys (those in `required` must be present).
  void object(const ExportJson& j, const std::string& path, const std::vector<std::string>& required,
              const std::vector<std::string>& optional = {}) const {
    if (!j.is_object()) fail(path, "expected an object, got " + type_name(j));
    for (const auto& k : required)
      if (!j.contains(k)) fail(join(path, k), "missing");
    for (auto it = j.begin(); it != j.end(); ++it) {
      const bool known = std::find(required.begin(), required.end(), it.key()) != required.end() ||
                         std::find(optional.begin(), optional.end(), it.key()) != optional.end();
      if (!known) {
        std::vector<std::string> valid = required;
        valid.insert(valid.end(), optional.begin(), optional.end());
        fail(join(path, it.key()), "unknown key (valid here: " + util::join(valid) + ")");
      }
    }
  }

  std::string string(const ExportJson& j, const std::string& path) const {
    if (!j.is_string()) fail(path, "expected a string, got " + type_name(j));
    return j.get<std::string>();
  }
  int64_t integer(const ExportJson& j, const std::string& path, int64_t min = 0) const {
    if (!j.is_number_integer()) fail(path, "expected an integer, got " + type_name(j));
    const int64_t v = j.get<int64_t>();
    if (v < min) fail(path, "must be >= " + std::to_string(min) + ", got " + std::to_string(v));
    return v;
  }
  double number(const ExportJson& j, const std::string& path) const {
    if (!j.is_number()) fail(path, "expected a number, got " + type_name(j));
    const double v = j.get<double>();
    if (!std::isfinite(v)) fail(path, "must be finite");
    return v;
  }
  // A number in [lo, hi]; `or_null` only words the message for keys that may also be null.
  double in_range(const ExportJson& j, const std::string& path, double lo, double hi, bool or_null = false) const {
    const double v = number(j, path);
    if (v < lo || v > hi)
      fail(path, "must be in [" + util::short_number(lo) + ", " + util::short_number(hi) + "]" + (or_null ? " or null" : ""));
    return v;
  }
  static constexpr int64_t kMaxElements = int64_t{1} << 40;
  std::vector<int64_t> shape(const ExportJson& j, const std::string& path) const {
    if (!j.is_array() || j.empty()) fail(path, "expected a non-empty array of positive integers");
    std::vector<int64_t> s;
    int64_t elements = 1;
    for (size_t i = 0; i < j.size(); ++i) {
      s.push_back(integer(j[i], path + "[" + std::to_string(i) + "]", 1));
      // Every product of the sizes is formed later (totals, mask lengths): bound it here, where
      // no multiplication can overflow yet.
      if (elements > kMaxElements / s.back())
        fail(path, "has more than 2^40 elements per sample (no activation site is that large)");
      elements *= s.back();
    }
    return s;
  }
  std::vector<double> numbers(const ExportJson& j, const std::string& path, size_t expected) const {
    if (!j.is_array()) fail(path, "expected an array of numbers, got " + type_name(j));
    if (j.size() != expected)
      fail(path, "has " + std::to_string(j.size()) + " values, expected " + std::to_string(expected) +
                     " (one per channel)");
    std::vector<double> v;
    v.reserve(j.size());
    for (size_t i = 0; i < j.size(); ++i) v.push_back(number(j[i], path + "[" + std::to_string(i) + "]"));
    return v;
  }
  void one_of(const std::string& v, const std::string& path, const std::vector<std::string>& allowed) const {
    if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return;
    fail(path, "\"" + v + "\" is not one of " + util::join(allowed));
  }

  static std::string type_name(const ExportJson& j) {
    if (j.is_number_integer()) return "an integer (" + j.dump() + ")";
    if (j.is_number()) return "a number (" + j.dump() + ")";
    if (j.is_string()) return "a string (" + j.dump() + ")";
    if (j.is_boolean()) return "a boolean";
    if (j.is_null()) return "null";
    if (j.is_array()) return "an array";
    return "an object";
  }

 private:
  std::string source_;
};

}  // namespace

MaskExport parse_export(const ExportJson& doc, const std::string& source) {
  Reader r(source);
  if (!doc.is_object()) r.fail("", "an export must be a JSON object, got " + Reader::type_name(doc));
  // Format and version first: a different document deserves that answer, not a missing key.
  if (!doc.contains("format")) r.fail("format", "missing (not an autorep.relu-mask export?)");
  const std::string format = r.string(doc.at("format"), "format");
  if (format != kExportFormat) r.fail("format", "\"" + format + "\" is not \"" + kExportFormat + "\"");
  if (!doc.contains("version")) r.fail("version", "missing");
  if (!doc.at("version").is_number_integer()) r.fail("version", "expected an integer, got " + Reader::type_name(doc.at("version")));
  const int64_t version = doc.at("version").get<int64_t>();
  if (version != kExportVersion)
    r.fail("version", "this reader supports version " + std::to_string(kExportVersion) + ", the file has version " +
                          std::to_string(version));
  r.object(doc, "",
           {"format", "version", "producer", "model", "dataset", "method", "granularity", "polynomial", "budget",
            "accuracy", "cost", "kept_indices_max_density", "sites"});
  r.string(doc.at("producer"), "producer");
  const auto& model = doc.at("model");
  r.object(model, "model", {"arch", "input_shape", "classes", "checkpoint_sha256"}, {"stem_relu"});
  r.string(model.at("arch"), "model.arch");
  r.shape(model.at("input_shape"), "model.input_shape");
  r.integer(model.at("classes"), "model.classes", 1);
  if (model.contains("stem_relu") && !model.at("stem_relu").is_boolean()) r.fail("model.stem_relu", "expected true or false");
  if (!model.at("checkpoint_sha256").is_null()) {
    const std::string h = r.string(model.at("checkpoint_sha256"), "model.checkpoint_sha256");
    if (h.size() != 64 || h.find_first_not_of("0123456789abcdef") != std::string::npos)
      r.fail("model.checkpoint_sha256", "expected 64 lowercase hex digits or null");
  }
  if (!doc.at("dataset").is_null()) r.string(doc.at("dataset"), "dataset");
  r.string(doc.at("method"), "method");

  MaskExport ex;
  ex.doc = doc;
  ex.granularity = r.string(doc.at("granularity"), "granularity");
  r.one_of(ex.granularity, "granularity", {"pixel", "channel", "layer", "mixed"});
  const auto& poly = doc.at("polynomial");
  r.object(poly, "polynomial", {"degree", "form", "coefficients"});
  ex.degree = r.integer(poly.at("degree"), "polynomial.degree", 1);
  if (ex.degree > 2) r.fail("polynomial.degree", "must be 1 or 2, got " + std::to_string(ex.degree));
  if (r.string(poly.at("form"), "polynomial.form") != "c0 + c1*x + c2*x^2")
    r.fail("polynomial.form", "expected \"c0 + c1*x + c2*x^2\"");
  if (r.string(poly.at("coefficients"), "polynomial.coefficients") != "effective")
    r.fail("polynomial.coefficients", "expected \"effective\"");
  const auto& budget = doc.at("budget");
  r.object(budget, "budget", {"target", "kept", "total"});
  if (!budget.at("target").is_null()) ex.budget_target = r.integer(budget.at("target"), "budget.target");
  ex.kept = r.integer(budget.at("kept"), "budget.kept");
  ex.total = r.integer(budget.at("total"), "budget.total");
  const auto& acc = doc.at("accuracy");
  r.object(acc, "accuracy", {"test"},
           {"source", "val", "per_class", "worst_class", "worst_class_accuracy", "max_class_drop", "max_class_drop_class"});
  if (!acc.at("test").is_null()) r.in_range(acc.at("test"), "accuracy.test", 0, 1, /*or_null=*/true);
  if (acc.contains("val")) r.in_range(acc.at("val"), "accuracy.val", 0, 1);
  if (acc.contains("source")) r.string(acc.at("source"), "accuracy.source");
  if (acc.contains("per_class")) {
    const auto& list = acc.at("per_class");
    if (!list.is_array()) r.fail("accuracy.per_class", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string at = "accuracy.per_class[" + std::to_string(i) + "]";
      r.object(list[i], at, {"class", "accuracy", "samples"}, {"drop"});
      r.string(list[i].at("class"), at + ".class");
      if (!list[i].at("accuracy").is_null()) r.in_range(list[i].at("accuracy"), at + ".accuracy", 0, 1, true);
      r.integer(list[i].at("samples"), at + ".samples");
      if (list[i].contains("drop")) r.in_range(list[i].at("drop"), at + ".drop", -1, 1);
    }
  }
  for (const char* key : {"worst_class", "max_class_drop_class"})
    if (acc.contains(key)) r.string(acc.at(key), std::string("accuracy.") + key);
  if (acc.contains("worst_class_accuracy"))
    r.in_range(acc.at("worst_class_accuracy"), "accuracy.worst_class_accuracy", 0, 1);
  if (acc.contains("max_class_drop")) r.in_range(acc.at("max_class_drop"), "accuracy.max_class_drop", -1, 1);
  const auto& cost = doc.at("cost");
  r.object(cost, "cost", {"table", "before", "after", "reduction"});
  try {
    cost_table_from_json(nlohmann::json(cost.at("table")), "cost.table");
  } catch (const std::runtime_error& e) {
    throw ExportError(source + ": " + e.what());
  }
  auto check_cost = [&](const ExportJson& c, const std::string& path) {
    r.object(c, path, {"relus", "poly_elements", "multiplications", "offline_bytes", "online_bytes"});
    r.integer(c.at("relus"), path + ".relus");
    r.integer(c.at("poly_elements"), path + ".poly_elements");
    r.integer(c.at("multiplications"), path + ".multiplications");
    r.number(c.at("offline_bytes"), path + ".offline_bytes");
    r.number(c.at("online_bytes"), path + ".online_bytes");
  };
  check_cost(cost.at("before"), "cost.before");
  check_cost(cost.at("after"), "cost.after");
  r.object(cost.at("reduction"), "cost.reduction", {"offline", "online", "total"});
  for (const char* k : {"offline", "online", "total"})
    if (!cost.at("reduction").at(k).is_null()) r.number(cost.at("reduction").at(k), std::string("cost.reduction.") + k);
  const double max_density = r.number(doc.at("kept_indices_max_density"), "kept_indices_max_density");
  if (max_density < 0 || max_density > 1) r.fail("kept_indices_max_density", "must be in [0, 1]");

  const auto& sites = doc.at("sites");
  if (!sites.is_array()) r.fail("sites", "expected an array, got " + Reader::type_name(sites));
  std::set<std::string> names, granularities;
  int64_t kept_sum = 0, total_sum = 0;
  for (size_t i = 0; i < sites.size(); ++i) {
    const std::string p = "sites[" + std::to_string(i) + "]";
    const auto& js = sites[i];
    r.object(js, p, {"name", "kind", "shape", "granularity", "decision", "kept", "total", "mask", "cost"},
             {"kept_indices", "coefficients", "onnx_nodes", "range"});
    ExportSite s;
    s.name = r.string(js.at("name"), p + ".name");
    if (s.name.empty()) r.fail(p + ".name", "must not be empty");
    if (!names.insert(s.name).second) r.fail(p + ".name", "\"" + s.name + "\" appears twice");
    s.shape = r.shape(js.at("shape"), p + ".shape");
    s.kind = r.string(js.at("kind"), p + ".kind");
    r.one_of(s.kind, p + ".kind", {"conv", "linear"});
    const std::string expected_kind = s.shape.size() == 3 ? "conv" : "linear";
    if (s.kind != expected_kind)
      r.fail(p + ".kind", "\"" + s.kind + "\" does not match shape " + shape_str(s.shape) + " (expected \"" +
                              expected_kind + "\")");
    s.granularity = r.string(js.at("granularity"), p + ".granularity");
    r.one_of(s.granularity, p + ".granularity", {"pixel", "channel", "layer"});
    granularities.insert(s.granularity);
    s.kept = r.integer(js.at("kept"), p + ".kept");
    s.total = r.integer(js.at("total"), p + ".total");
    if (s.total != product(s.shape))
      r.fail(p + ".total", std::to_string(s.total) + " but shape " + shape_str(s.shape) + " has " +
                               std::to_string(product(s.shape)) + " elements");

    const auto& m = js.at("mask");
    const std::string mp = p + ".mask";
    r.object(m, mp, {"encoding", "bit_order", "shape", "length", "data"});
    if (r.string(m.at("encoding"), mp + ".encoding") != "bitset-base64")
      r.fail(mp + ".encoding", "expected \"bitset-base64\", got " + m.at("encoding").dump());
    if (r.string(m.at("bit_order"), mp + ".bit_order") != "lsb0")
      r.fail(mp + ".bit_order", "expected \"lsb0\", got " + m.at("bit_order").dump());
    s.mask_shape = r.shape(m.at("shape"), mp + ".shape");
    const auto expected_mshape = mask_shape_for(s.granularity, s.shape);
    if (s.mask_shape != expected_mshape)
      r.fail(mp + ".shape", shape_str(s.mask_shape) + " but " + s.granularity + " granularity of shape " +
                                shape_str(s.shape) + " means " + shape_str(expected_mshape));
    const int64_t length = r.integer(m.at("length"), mp + ".length", 1);
    if (length != product(s.mask_shape))
      r.fail(mp + ".length", std::to_string(length) + " but the mask shape " + shape_str(s.mask_shape) + " has " +
                                 std::to_string(product(s.mask_shape)) + " entries");
    std::vector<uint8_t> bytes;
    try {
      bytes = base64_decode(r.string(m.at("data"), mp + ".data"));
    } catch (const ExportError&) {
      throw;
    } catch (const std::runtime_error& e) {
      r.fail(mp + ".data", e.what());
    }
    const size_t want = static_cast<size_t>((length + 7) / 8);
    if (bytes.size() != want)
      r.fail(mp + ".data", "decodes to " + std::to_string(bytes.size()) + " bytes, but " + std::to_string(length) +
                               " bits need " + std::to_string(want) + " (truncated or wrong site?)");
    s.mask.resize(static_cast<size_t>(length));
    int64_t ones = 0;
    for (int64_t b = 0; b < length; ++b) {
      s.mask[static_cast<size_t>(b)] = (bytes[static_cast<size_t>(b / 8)] >> (b % 8)) & 1;
      ones += s.mask[static_cast<size_t>(b)];
    }
    if (length % 8 != 0 && (bytes.back() >> (length % 8)) != 0)
      r.fail(mp + ".data", "padding bits after bit " + std::to_string(length - 1) + " must be 0");
    const int64_t per = s.total / length;
    if (s.kept != ones * per)
      r.fail(p + ".kept", std::to_string(s.kept) + " but the mask has " + std::to_string(ones) + " bits set (x " +
                              std::to_string(per) + " element" + (per == 1 ? "" : "s") + " each = " +
                              std::to_string(ones * per) + ")");
    s.decision = r.string(js.at("decision"), p + ".decision");
    r.one_of(s.decision, p + ".decision", {"relu", "poly", "mixed"});
    const std::string expected_decision = decision_of(ones, length);
    if (s.decision != expected_decision)
      r.fail(p + ".decision", "\"" + s.decision + "\" but the mask says \"" + expected_decision + "\" (" +
                                  std::to_string(ones) + " of " + std::to_string(length) + " bits set)");

    const bool sparse = static_cast<double>(ones) <= max_density * static_cast<double>(length);
    if (js.contains("kept_indices")) {
      const auto& ki = js.at("kept_indices");
      const std::string kp = p + ".kept_indices";
      if (!sparse)
        r.fail(kp, "present, but the mask density " + std::to_string(double(ones) / double(length)) +
                       " exceeds kept_indices_max_density");
      if (!ki.is_array()) r.fail(kp, "expected an array of integers");
      if (static_cast<int64_t>(ki.size()) != ones)
        r.fail(kp, "lists " + std::to_string(ki.size()) + " indices but the mask has " + std::to_string(ones) +
                       " bits set");
      int64_t prev = -1;
      for (size_t k = 0; k < ki.size(); ++k) {
        const std::string ip = kp + "[" + std::to_string(k) + "]";
        const int64_t v = r.integer(ki[k], ip);
        if (v <= prev) r.fail(ip, "indices must be strictly increasing");
        if (v >= length || !s.mask[static_cast<size_t>(v)])
          r.fail(ip, std::to_string(v) + " is not a set bit of the mask");
        prev = v;
      }
    } else if (sparse) {
      r.fail(p + ".kept_indices", "missing: required when the kept fraction of the mask is <= kept_indices_max_density");
    }

    if (js.contains("coefficients")) {
      const auto& c = js.at("coefficients");
      const std::string cp = p + ".coefficients";
      r.object(c, cp, {"c0", "c1", "c2"});
      const auto C = static_cast<size_t>(s.shape[0]);
      s.c0 = r.numbers(c.at("c0"), cp + ".c0", C);
      s.c1 = r.numbers(c.at("c1"), cp + ".c1", C);
      s.c2 = r.numbers(c.at("c2"), cp + ".c2", C);
      if (ex.degree == 1)
        for (size_t k = 0; k < C; ++k)
          if (s.c2[k] != 0.0) r.fail(cp + ".c2[" + std::to_string(k) + "]", "must be 0 for polynomial.degree 1");
      s.has_coefficients = true;
    } else if (s.decision != "relu") {
      r.fail(p + ".coefficients", "missing: required for a site whose decision is \"" + s.decision + "\"");
    }
    if (js.contains("onnx_nodes")) {
      const auto& nodes = js.at("onnx_nodes");
      if (!nodes.is_array()) r.fail(p + ".onnx_nodes", "expected an array, got " + Reader::type_name(nodes));
      for (size_t k = 0; k < nodes.size(); ++k) {
        s.onnx_nodes.push_back(r.string(nodes[k], p + ".onnx_nodes[" + std::to_string(k) + "]"));
        if (s.onnx_nodes.back().empty()) r.fail(p + ".onnx_nodes[" + std::to_string(k) + "]", "must not be empty");
      }
    }
    if (js.contains("range")) {
      const auto& g = js.at("range");
      const std::string gp = p + ".range";
      r.object(g, gp, {"images", "percentile", "input", "output"});
      r.integer(g.at("images"), gp + ".images", 1);
      const double pct = r.number(g.at("percentile"), gp + ".percentile");
      if (!(pct > 0 && pct <= 1)) r.fail(gp + ".percentile", "must be in (0, 1]");
      for (const char* side : {"input", "output"}) {
        const std::string sp = gp + "." + side;
        r.object(g.at(side), sp, {"min", "max", "abs_percentile"});
        const double lo = r.number(g.at(side).at("min"), sp + ".min"), hi = r.number(g.at(side).at("max"), sp + ".max");
        const double a = r.number(g.at(side).at("abs_percentile"), sp + ".abs_percentile");
        if (lo > hi) r.fail(sp, "min > max");
        if (a < 0 || a > std::max(std::abs(lo), std::abs(hi))) r.fail(sp + ".abs_percentile", "must be in [0, max |x|]");
      }
    }
    check_cost(js.at("cost"), p + ".cost");
    kept_sum += s.kept;
    total_sum += s.total;
    ex.sites.push_back(std::move(s));
  }
  const std::string expected_granularity =
      granularities.size() == 1 ? *granularities.begin() : (granularities.empty() ? ex.granularity : "mixed");
  if (ex.granularity != expected_granularity)
    r.fail("granularity", "\"" + ex.granularity + "\" but the sites say \"" + expected_granularity + "\"");
  if (ex.kept != kept_sum)
    r.fail("budget.kept", std::to_string(ex.kept) + " but the sites keep " + std::to_string(kept_sum));
  if (ex.total != total_sum)
    r.fail("budget.total", std::to_string(ex.total) + " but the sites total " + std::to_string(total_sum));
  return ex;
}

MaskExport read_export(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ExportError(path + ": cannot open the export (no such file?)");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) throw ExportError(path + ": the file is empty");
  ExportJson doc;
  try {
    doc = ExportJson::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    const bool at_end = e.byte >= text.size();
    throw ExportError(path + ": not valid JSON" + std::string(at_end ? " (truncated: it ends early)" : "") + ": " +
                      e.what());
  }
  return parse_export(doc, path);
}

}  // namespace autorep::exports
