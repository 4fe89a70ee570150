#include "search/export/relu_mask.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <stdexcept>

#include "layers/gate.h"
#include "layers/util/atomic_file.h"
#include "layers/util/json_check.h"
#include "search/export/encoding.h"
#include "search/export/relu_mask_detail.h"

namespace autorep::exports {

using namespace detail;

// ---------------------------------------------------------------------------------------------
// Building and writing.

namespace {

// accuracy.per_class, worst_class(_accuracy) and, with the teacher's, max_class_drop(_class).
void add_per_class(ExportJson& acc, const std::vector<ClassAccuracy>& classes) {
  if (classes.empty()) return;
  ExportJson list = ExportJson::array();
  const ClassAccuracy* worst = nullptr;
  const ClassAccuracy* dropped = nullptr;
  for (const auto& c : classes) {
    ExportJson e;
    e["class"] = c.name;
    e["accuracy"] = c.accuracy ? ExportJson(*c.accuracy) : ExportJson(nullptr);
    e["samples"] = c.samples;
    if (c.drop) e["drop"] = *c.drop;
    list.push_back(e);
    if (c.accuracy && (worst == nullptr || *c.accuracy < *worst->accuracy)) worst = &c;
    if (c.drop && (dropped == nullptr || *c.drop > *dropped->drop)) dropped = &c;
  }
  acc["per_class"] = list;
  if (worst != nullptr) {
    acc["worst_class"] = worst->name;
    acc["worst_class_accuracy"] = *worst->accuracy;
  }
  if (dropped != nullptr) {
    acc["max_class_drop"] = *dropped->drop;
    acc["max_class_drop_class"] = dropped->name;
  }
}

}  // namespace

ExportJson build_export(const std::vector<layers::Site>& sites, const ExportInfo& info, const CostTable& costs) {
  // First pass: the polynomial degree shared by every gate.
  std::optional<int64_t> degree;
  for (const auto& s : sites) {
    if (auto g = std::dynamic_pointer_cast<layers::GateImpl>(s.module)) {
      if (degree && *degree != g->options().degree())
        throw std::runtime_error("export: gates of different polynomial degrees (" + std::to_string(*degree) + " and " +
                                 std::to_string(g->options().degree()) + " at " + s.name + ")");
      degree = g->options().degree();
    }
  }
  const int64_t deg = degree.value_or(2);

  ExportJson out_sites = ExportJson::array();
  std::set<std::string> granularities;
  int64_t kept_sum = 0, total_sum = 0;
  CostEstimate before, after;
  for (const auto& s : sites) {
    std::string granularity;
    std::vector<uint8_t> bits;
    std::vector<double> c0, c1, c2;
    bool coefficients = false;
    if (auto g = std::dynamic_pointer_cast<layers::GateImpl>(s.module)) {
      granularity = layers::granularity_name(g->options().granularity());
      const auto m = g->mask().detach().to(torch::kCPU).to(torch::kDouble).contiguous().flatten();
      const double* p = m.data_ptr<double>();
      bits.resize(static_cast<size_t>(m.numel()));
      for (size_t i = 0; i < bits.size(); ++i) {
        if (p[i] != 0.0 && p[i] != 1.0)
          throw std::runtime_error("export: site " + s.name + ": mask entry " + std::to_string(i) + " is " +
                                   std::to_string(p[i]) + ", expected 0 or 1");
        bits[i] = p[i] == 1.0;
      }
      const double s1 = g->options().scale1(), s2 = g->options().scale2();
      c0 = effective_coefficients(g->c0(), 1.0, false);
      c1 = effective_coefficients(g->c1(), s1, false);
      c2 = effective_coefficients(g->c2(), s2, g->options().degree() < 2);
      for (const auto* v : {&c0, &c1, &c2})
        for (double x : *v)
          if (!std::isfinite(x)) throw std::runtime_error("export: site " + s.name + ": a coefficient is not finite");
      coefficients = true;
    } else if (std::dynamic_pointer_cast<layers::ReluSiteImpl>(s.module)) {
      granularity = "layer";
      bits = {1};
    } else {
      throw std::runtime_error("export: site " + s.name +
                               " holds a module that is neither a gate nor a plain ReLU (cannot be exported)");
    }
    const auto mshape = mask_shape_for(granularity, s.shape);
    TORCH_INTERNAL_ASSERT(product(mshape) == static_cast<int64_t>(bits.size()), "site ", s.name, ": mask of ",
                          bits.size(), " entries for mask shape ", shape_str(mshape));
    int64_t ones = 0;
    for (auto b : bits) ones += b;
    const int64_t total = s.elements();
    const int64_t per = total / static_cast<int64_t>(bits.size());
    const int64_t kept = ones * per;
    granularities.insert(granularity);
    kept_sum += kept;
    total_sum += total;
    const CostEstimate cost = estimate_cost(costs, kept, total - kept, deg);
    before += estimate_cost(costs, total, 0, deg);
    after += cost;

    ExportJson site;
    site["name"] = s.name;
    site["kind"] = s.kind();
    site["shape"] = s.shape;
    site["granularity"] = granularity;
    site["decision"] = decision_of(ones, static_cast<int64_t>(bits.size()));
    site["kept"] = kept;
    site["total"] = total;
    site["mask"] = {{"encoding", "bitset-base64"},
                    {"bit_order", "lsb0"},
                    {"shape", mshape},
                    {"length", bits.size()},
                    {"data", base64_encode(pack_bits(bits))}};
    if (static_cast<double>(ones) <= kKeptIndicesMaxDensity * static_cast<double>(bits.size())) {
      ExportJson idx = ExportJson::array();
      for (size_t i = 0; i < bits.size(); ++i)
        if (bits[i]) idx.push_back(static_cast<int64_t>(i));
      site["kept_indices"] = idx;
    }
    if (coefficients) site["coefficients"] = {{"c0", number_array(c0)}, {"c1", number_array(c1)}, {"c2", number_array(c2)}};
    site["cost"] = estimate_json(cost);
    out_sites.push_back(std::move(site));
  }

  ExportJson doc;
  doc["format"] = kExportFormat;
  doc["version"] = kExportVersion;
  doc["producer"] = info.producer.empty() ? std::string("autorep ") + AUTOREP_VERSION : info.producer;
  ExportJson model;
  model["arch"] = info.arch;
  model["input_shape"] = info.input_shape;
  model["classes"] = info.classes;
  if (info.stem_relu) model["stem_relu"] = *info.stem_relu;
  model["checkpoint_sha256"] = info.checkpoint_sha256.empty() ? ExportJson(nullptr) : ExportJson(info.checkpoint_sha256);
  doc["model"] = model;
  doc["dataset"] = info.dataset.empty() ? ExportJson(nullptr) : ExportJson(info.dataset);
  doc["method"] = info.method;
  doc["granularity"] = granularities.size() == 1 ? *granularities.begin() : (granularities.empty() ? "layer" : "mixed");
  doc["polynomial"] = {{"degree", deg}, {"form", "c0 + c1*x + c2*x^2"}, {"coefficients", "effective"}};
  doc["budget"] = {{"target", info.budget_target ? ExportJson(*info.budget_target) : ExportJson(nullptr)},
                   {"kept", kept_sum},
                   {"total", total_sum}};
  ExportJson acc;
  acc["test"] = info.accuracy ? ExportJson(*info.accuracy) : ExportJson(nullptr);
  if (info.val_accuracy) acc["val"] = *info.val_accuracy;
  if (!info.accuracy_source.empty()) acc["source"] = info.accuracy_source;
  add_per_class(acc, info.per_class);
  doc["accuracy"] = acc;
  doc["cost"] = cost_json(costs, before, after);
  doc["kept_indices_max_density"] = kKeptIndicesMaxDensity;
  doc["sites"] = std::move(out_sites);
  return doc;
}

namespace {

// Objects one key per line, arrays of scalars on one line (coefficients, shapes, indices).
void write_pretty(std::ostringstream& o, const ExportJson& j, int indent) {
  const std::string pad(static_cast<size_t>(indent), ' '), pad2(static_cast<size_t>(indent + 2), ' ');
  if (j.is_object()) {
    if (j.empty()) {
      o << "{}";
      return;
    }
    o << "{\n";
    bool first = true;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!first) o << ",\n";
      first = false;
      o << pad2 << ExportJson(it.key()).dump() << ": ";
      write_pretty(o, it.value(), indent + 2);
    }
    o << "\n" << pad << "}";
  } else if (j.is_array()) {
    bool scalars = true;
    for (const auto& e : j) scalars = scalars && !e.is_structured();
    if (scalars) {
      o << j.dump();
      return;
    }
    o << "[\n";
    for (size_t i = 0; i < j.size(); ++i) {
      o << pad2;
      write_pretty(o, j[i], indent + 2);
      o << (i + 1 < j.size() ? ",\n" : "\n");
    }
    o << pad << "]";
  } else {
    o << j.dump();
  }
}

}  // namespace

std::string export_to_string(const ExportJson& doc) {
  std::ostringstream o;
  write_pretty(o, doc, 0);
  o << "\n";
  return o.str();
}

void write_export(const std::string& path, const ExportJson& doc) {
  const std::string text = export_to_string(doc);
  util::write_file_atomic(path, text);
}

}  // namespace autorep::exports
