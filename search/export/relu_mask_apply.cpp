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
// Model side.

std::vector<std::string> check_against_model(const MaskExport& ex, const std::vector<layers::Site>& sites) {
  std::vector<std::string> why;
  if (ex.sites.size() != sites.size())
    why.push_back("the export has " + std::to_string(ex.sites.size()) + " sites, the model " +
                  std::to_string(sites.size()));
  const size_t n = std::min(ex.sites.size(), sites.size());
  for (size_t i = 0; i < n; ++i) {
    const auto& e = ex.sites[i];
    const auto& s = sites[i];
    const std::string at = "site " + std::to_string(i) + " (" + s.name + "): ";
    if (e.name != s.name) {
      why.push_back(at + "the export names it \"" + e.name + "\"");
      continue;
    }
    if (e.shape != s.shape) {
      why.push_back(at + "shape " + shape_str(e.shape) + " in the export, " + shape_str(s.shape) + " in the model");
      continue;
    }
    if (auto g = std::dynamic_pointer_cast<layers::GateImpl>(s.module)) {
      const std::string model_granularity = layers::granularity_name(g->options().granularity());
      if (e.granularity != model_granularity)
        why.push_back(at + "granularity " + e.granularity + " in the export, " + model_granularity +
                      " in the model");
      if (e.decision != "relu" && ex.degree != g->options().degree())
        why.push_back(at + "polynomial degree " + std::to_string(ex.degree) + " in the export, " +
                      std::to_string(g->options().degree()) + " in the model");
      if (!e.has_coefficients) why.push_back(at + "the export has no coefficients for this gate");
    } else if (std::dynamic_pointer_cast<layers::ReluSiteImpl>(s.module)) {
      if (e.decision != "relu")
        why.push_back(at + "a plain ReLU in the model, but the export replaces " +
                      std::to_string(e.total - e.kept) + " of its ReLUs");
    } else {
      why.push_back(at + "holds a module that is neither a gate nor a plain ReLU");
    }
  }
  return why;
}

void apply_export(const MaskExport& ex, const std::vector<layers::Site>& sites) {
  const auto why = check_against_model(ex, sites);
  if (!why.empty()) {
    std::string msg = "the export does not fit the model: ";
    for (size_t i = 0; i < why.size(); ++i) msg += (i ? "; " : "") + why[i];
    throw std::runtime_error(msg);
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < sites.size(); ++i) {
    auto g = std::dynamic_pointer_cast<layers::GateImpl>(sites[i].module);
    if (!g) continue;  // plain ReLU, decision relu: nothing to set
    const auto& e = ex.sites[i];
    std::vector<float> m(e.mask.begin(), e.mask.end());
    const auto mt = torch::from_blob(m.data(), {static_cast<int64_t>(m.size())}, torch::kFloat).clone();
    g->mask().copy_(mt.reshape(g->mask().sizes()).to(g->mask().options()));
    const double s1 = g->options().scale1(), s2 = g->options().scale2();
    const bool dbl = g->c0().scalar_type() == torch::kDouble;
    auto store = [&](const torch::Tensor& param, const std::vector<double>& eff, double scale) {
      std::vector<double> v(eff.size());
      for (size_t k = 0; k < eff.size(); ++k)
        v[k] = scale == 1.0 ? eff[k] : (dbl ? stored_for<double>(eff[k], scale) : stored_for<float>(eff[k], scale));
      const auto t = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kDouble).clone();
      param.copy_(t.to(param.options()));
    };
    store(g->c0(), e.c0, 1.0);
    store(g->c1(), e.c1, s1);
    // Degree 1 never reads c2; keep the model's own value so nothing else changes.
    if (g->options().degree() >= 2) store(g->c2(), e.c2, s2);
  }
}

ExportJson cost_section(const MaskExport& ex, const CostTable& costs) {
  CostEstimate before, after;
  ExportJson per_site = ExportJson::array();
  for (const auto& s : ex.sites) {
    const auto c = estimate_cost(costs, s.kept, s.total - s.kept, ex.degree);
    before += estimate_cost(costs, s.total, 0, ex.degree);
    after += c;
    per_site.push_back(estimate_json(c));
  }
  ExportJson j = cost_json(costs, before, after);
  j["sites"] = per_site;
  return j;
}

CostTable export_cost_table(const MaskExport& ex) {
  if (ex.doc.contains("cost") && ex.doc.at("cost").contains("table"))
    return cost_table_from_json(nlohmann::json(ex.doc.at("cost").at("table")), "cost.table");
  return default_cost_table();
}

}  // namespace autorep::exports
