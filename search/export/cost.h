#pragma once
/// Cost model of private inference: the communication one kept ReLU and one polynomial element
/// cost under a per-operation table (default: Delphi-style garbled-circuit ReLUs and Beaver-
/// triple multiplications; configs/cost-delphi.json, the same numbers compiled in).

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>

namespace autorep::exports {

/// Communication of one operation, in bytes (both directions, both parties together).
struct OpCost {
  double offline_bytes = 0.0;  ///< input-independent preprocessing
  double online_bytes = 0.0;   ///< once the input is known
};

/// Per-operation costs. A kept ReLU costs `relu`; a replaced element costs
/// `multiplications_per_poly_element[degree]` secret-shared multiplications, each `multiplication`
/// (additions and multiplications by public coefficients are free on additive shares).
struct CostTable {
  std::string name;
  std::string unit = "bytes";
  OpCost relu;
  OpCost multiplication;
  std::map<int64_t, int64_t> multiplications_per_poly_element;  ///< degree -> multiplications
  nlohmann::json sources = nlohmann::json::array();  ///< free-form provenance (strings)
  std::string comment;                                ///< the table's "_comment"
};

/// The table compiled into the binary; identical to configs/cost-delphi.json (tested).
CostTable default_cost_table();
/// Parses a cost table. Keys starting with "_" are comments; any other unknown key, a wrong
/// type or a negative cost throws std::runtime_error "<source>: <key.path>: <what is wrong>".
CostTable cost_table_from_json(const nlohmann::json& j, const std::string& source = "cost table");
nlohmann::json to_json(const CostTable& table);
/// Reads a cost table file; "" gives default_cost_table().
CostTable load_cost_table(const std::string& path);

/// Estimated communication of a set of activation elements.
struct CostEstimate {
  int64_t relus = 0;            ///< kept ReLU elements
  int64_t poly_elements = 0;    ///< elements evaluated as the polynomial
  int64_t multiplications = 0;  ///< secret-shared multiplications of the polynomial elements
  double offline_bytes = 0.0;
  double online_bytes = 0.0;
  double total_bytes() const { return offline_bytes + online_bytes; }
  CostEstimate& operator+=(const CostEstimate& o);
};

/// relus * relu + poly_elements * multiplications_per_poly_element[degree] * multiplication.
/// Throws when the table has no entry for `degree`.
CostEstimate estimate_cost(const CostTable& table, int64_t relus, int64_t poly_elements, int64_t degree);
nlohmann::json to_json(const CostEstimate& e);

}  // namespace autorep::exports
