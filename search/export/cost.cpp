#include "search/export/cost.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "layers/util/json_check.h"

namespace autorep::exports {
namespace {

// A verbatim copy of configs/cost-delphi.json (a test checks they agree), so the binary needs no
// file to produce estimates.
constexpr const char* kDefaultTable = R"JSON({
  "_comment": "Default per-operation communication costs for `autorep export|inspect` (pass your own with --cost-table). Bytes per operation, both parties and both directions together. A kept ReLU is one garbled-circuit ReLU; a replaced element evaluates c0 + c1*x + c2*x^2 on additive shares, where additions and multiplications by the public coefficients are local (free) and x*x is one secret-shared (Beaver-triple) multiplication, so degree 2 costs one multiplication per element and degree 1 none. The same numbers are compiled into the binary (search/export/cost.cpp) and used when no table is given. These are estimates for comparing reductions, not measurements of any particular engine.",
  "name": "delphi-gc",
  "sources": [
    "relu: Mishra et al., 'Delphi: A Cryptographic Inference Service for Neural Networks', USENIX Security 2020: a garbled-circuit ReLU costs about 17 KB of offline and about 1.2 KB of online communication (17 KiB = 17408 B, 1.2 KiB = 1228.8 B here)",
    "multiplication online: one Beaver-triple multiplication opens two masked values, each party sending two 8-byte field elements (Delphi's 41-bit prime field stored in 64-bit words): 2 x 2 x 8 = 32 B",
    "multiplication offline: assumed 128 B per triple (amortised homomorphic-encryption triple generation); an order-of-magnitude placeholder, set your engine's figure"
  ],
  "unit": "bytes",
  "relu": {"offline_bytes": 17408, "online_bytes": 1228.8},
  "multiplication": {"offline_bytes": 128, "online_bytes": 32},
  "multiplications_per_poly_element": {"1": 0, "2": 1}
})JSON";

using util::json_fail;
[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& what) {
  json_fail(source, key, what);
}

double read_bytes(const nlohmann::json& j, const std::string& source, const std::string& key) {
  if (!j.is_number()) fail(source, key, "expected a number of bytes, got " + j.dump());
  const double v = j.get<double>();
  if (!std::isfinite(v) || v < 0) fail(source, key, "must be a finite number >= 0, got " + j.dump());
  return v;
}

OpCost read_op(const nlohmann::json& j, const std::string& source, const std::string& key) {
  if (!j.is_object()) fail(source, key, "expected an object {\"offline_bytes\": N, \"online_bytes\": N}");
  OpCost c;
  bool off = false, on = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string k = key + "." + it.key();
    if (it.key() == "offline_bytes") {
      c.offline_bytes = read_bytes(it.value(), source, k);
      off = true;
    } else if (it.key() == "online_bytes") {
      c.online_bytes = read_bytes(it.value(), source, k);
      on = true;
    } else if (it.key().rfind('_', 0) != 0) {
      fail(source, k, "unknown key (valid: offline_bytes, online_bytes)");
    }
  }
  if (!off) fail(source, key + ".offline_bytes", "missing");
  if (!on) fail(source, key + ".online_bytes", "missing");
  return c;
}

}  // namespace

CostEstimate& CostEstimate::operator+=(const CostEstimate& o) {
  relus += o.relus;
  poly_elements += o.poly_elements;
  multiplications += o.multiplications;
  offline_bytes += o.offline_bytes;
  online_bytes += o.online_bytes;
  return *this;
}

CostTable default_cost_table() { return cost_table_from_json(nlohmann::json::parse(kDefaultTable), "built-in cost table"); }

CostTable cost_table_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw std::runtime_error(source + ": a cost table must be a JSON object");
  CostTable t;
  bool relu = false, mult = false, per = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const auto& v = it.value();
    if (k == "_comment") {
      if (!v.is_string()) fail(source, k, "expected a string");
      t.comment = v.get<std::string>();
    } else if (k == "sources") {
      if (!v.is_array()) fail(source, k, "expected an array of strings");
      t.sources = v;
    } else if (k == "name") {
      if (!v.is_string()) fail(source, k, "expected a string");
      t.name = v.get<std::string>();
    } else if (k == "unit") {
      if (v != "bytes") fail(source, k, "only \"bytes\" is supported, got " + v.dump());
    } else if (k == "relu") {
      t.relu = read_op(v, source, k);
      relu = true;
    } else if (k == "multiplication") {
      t.multiplication = read_op(v, source, k);
      mult = true;
    } else if (k == "multiplications_per_poly_element") {
      if (!v.is_object()) fail(source, k, "expected an object {\"<degree>\": multiplications, ...}");
      for (auto d = v.begin(); d != v.end(); ++d) {
        const std::string dk = k + "." + d.key();
        int64_t degree = -1;
        try {
          size_t used = 0;
          degree = std::stoll(d.key(), &used);
          if (used != d.key().size()) degree = -1;
        } catch (const std::exception&) {
        }
        if (degree < 1) fail(source, dk, "keys must be polynomial degrees (\"1\", \"2\", ...)");
        if (!d.value().is_number_integer() || d.value().get<int64_t>() < 0)
          fail(source, dk, "expected a non-negative integer, got " + d.value().dump());
        t.multiplications_per_poly_element[degree] = d.value().get<int64_t>();
      }
      per = true;
    } else if (k.rfind('_', 0) != 0) {
      fail(source, k,
           "unknown key (valid: name, unit, sources, relu, multiplication, multiplications_per_poly_element; "
           "keys starting with _ are comments)");
    }
  }
  if (!relu) fail(source, "relu", "missing");
  if (!mult) fail(source, "multiplication", "missing");
  if (!per) fail(source, "multiplications_per_poly_element", "missing");
  if (t.name.empty()) t.name = source;
  return t;
}

nlohmann::json to_json(const CostTable& t) {
  nlohmann::json per = nlohmann::json::object();
  for (const auto& [d, m] : t.multiplications_per_poly_element) per[std::to_string(d)] = m;
  nlohmann::json j = {{"name", t.name},
                      {"unit", t.unit},
                      {"relu", {{"offline_bytes", t.relu.offline_bytes}, {"online_bytes", t.relu.online_bytes}}},
                      {"multiplication",
                       {{"offline_bytes", t.multiplication.offline_bytes}, {"online_bytes", t.multiplication.online_bytes}}},
                      {"multiplications_per_poly_element", per},
                      {"sources", t.sources}};
  if (!t.comment.empty()) j["_comment"] = t.comment;
  return j;
}

CostTable load_cost_table(const std::string& path) {
  if (path.empty()) return default_cost_table();
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open the cost table");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
  return cost_table_from_json(j, path);
}

CostEstimate estimate_cost(const CostTable& table, int64_t relus, int64_t poly_elements, int64_t degree) {
  CostEstimate e;
  e.relus = relus;
  e.poly_elements = poly_elements;
  int64_t per = 0;
  if (poly_elements > 0) {
    const auto it = table.multiplications_per_poly_element.find(degree);
    if (it == table.multiplications_per_poly_element.end())
      throw std::runtime_error("cost table " + table.name + ": multiplications_per_poly_element has no entry for degree " +
                               std::to_string(degree));
    per = it->second;
  }
  e.multiplications = poly_elements * per;
  e.offline_bytes = relus * table.relu.offline_bytes + e.multiplications * table.multiplication.offline_bytes;
  e.online_bytes = relus * table.relu.online_bytes + e.multiplications * table.multiplication.online_bytes;
  return e;
}

nlohmann::json to_json(const CostEstimate& e) {
  return {{"relus", e.relus},
          {"poly_elements", e.poly_elements},
          {"multiplications", e.multiplications},
          {"offline_bytes", e.offline_bytes},
          {"online_bytes", e.online_bytes}};
}

}  // namespace autorep::exports
