#pragma once
// Helpers shared by the files of the relu-mask export (not part of its interface).

#include <torch/types.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "layers/granularity.h"
#include "search/export/relu_mask.h"

namespace autorep::exports::detail {

inline int64_t product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (auto d : v) n *= d;
  return n;
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? "," : "") + std::to_string(s[i]);
  return o + "]";
}

inline std::vector<int64_t> mask_shape_for(const std::string& granularity, const std::vector<int64_t>& shape) {
  return layers::mask_shape(layers::parse_granularity(granularity), shape);
}

inline std::string decision_of(int64_t ones, int64_t length) {
  return ones == length ? "relu" : (ones == 0 ? "poly" : "mixed");
}

// Effective coefficients as the kernels compute them: in the gate's dtype, scale cast first.
template <typename T>
std::vector<double> effective(const torch::Tensor& c, double scale, bool zero) {
  const auto t = c.detach().to(torch::kCPU).contiguous();
  std::vector<double> out(static_cast<size_t>(t.numel()));
  const T* p = t.data_ptr<T>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = zero ? 0.0 : static_cast<double>(static_cast<T>(scale) * p[i]);
  return out;
}

inline std::vector<double> effective_coefficients(const torch::Tensor& c, double scale, bool zero) {
  if (c.scalar_type() == torch::kDouble) return effective<double>(c, scale, zero);
  return effective<float>(c.to(torch::kFloat), scale, zero);
}

// A stored value c with fl(scale*c) == e in the dtype, searched around e/scale (the nearest one
// when none reproduces e exactly).
template <typename T>
T stored_for(double e_in, double scale_in) {
  const T e = static_cast<T>(e_in), s = static_cast<T>(scale_in);
  if (s == T(0)) return T(0);
  T c = e / s;
  if (s * c == e) return c;
  T up = c, down = c;
  for (int i = 0; i < 8; ++i) {
    up = std::nextafter(up, std::numeric_limits<T>::infinity());
    if (s * up == e) return up;
    down = std::nextafter(down, -std::numeric_limits<T>::infinity());
    if (s * down == e) return down;
  }
  return c;
}

// In the documented key order (cost.h's to_json gives a sorted object).
inline ExportJson estimate_json(const CostEstimate& e) {
  ExportJson j;
  j["relus"] = e.relus;
  j["poly_elements"] = e.poly_elements;
  j["multiplications"] = e.multiplications;
  j["offline_bytes"] = e.offline_bytes;
  j["online_bytes"] = e.online_bytes;
  return j;
}

// The table as embedded in an export: its numbers and sources, without the long comment.
inline ExportJson table_json(const CostTable& t) {
  const nlohmann::json full = to_json(t);
  ExportJson j;
  for (const char* k : {"name", "unit", "relu", "multiplication", "multiplications_per_poly_element", "sources"})
    j[k] = ExportJson(full.at(k));
  return j;
}

inline ExportJson cost_json(const CostTable& table, const CostEstimate& before, const CostEstimate& after) {
  auto ratio = [](double a, double b) { return b > 0 ? ExportJson(a / b) : ExportJson(nullptr); };
  ExportJson reduction;
  reduction["offline"] = ratio(before.offline_bytes, after.offline_bytes);
  reduction["online"] = ratio(before.online_bytes, after.online_bytes);
  reduction["total"] = ratio(before.total_bytes(), after.total_bytes());
  ExportJson j;
  j["table"] = table_json(table);
  j["before"] = estimate_json(before);
  j["after"] = estimate_json(after);
  j["reduction"] = reduction;
  return j;
}

inline ExportJson number_array(const std::vector<double>& v) {
  ExportJson a = ExportJson::array();
  for (double x : v) a.push_back(x);
  return a;
}

}  // namespace autorep::exports::detail
