#pragma once
/// ReLU budgets: a count of ReLU elements per sample, given as an integer or as a percentage
/// of the model's ReLUs. A Budget is parsed and checked once, when a config or sweep file is
/// read, and resolved once against the model's ReLU total when a run starts.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <type_traits>

namespace autorep::search {

class Budget {
 public:
  /// The default budget, 3% of the model's ReLUs.
  Budget();
  /// Budget::parse of a value as written: "3%", "4328", 4328 (a JSON value converts through
  /// from_json below).
  Budget(const char* text) : Budget(parse(text)) {}
  Budget(const std::string& text) : Budget(parse(text)) {}
  template <typename Int, std::enable_if_t<std::is_integral_v<Int> && !std::is_same_v<Int, bool>, int> = 0>
  Budget(Int count) : Budget(parse(nlohmann::json(count))) {}
  /// Parses an integer count, or a string "N%" (0 <= N <= 100) or "N" (a whole count).
  /// Throws std::runtime_error "<what>: <why>, got <value> (expected ...)" otherwise, so
  /// "3 %" or "150%" fail before any data loads.
  static Budget parse(const nlohmann::json& value, const std::string& what = "search.budget");
  bool is_percent() const { return percent_; }
  /// The percentage (is_percent) or the count.
  double value() const { return value_; }
  /// The count for a model with `total` ReLUs; a percentage rounds to the nearest count ("3%"
  /// of 144,256 is 4,328). Throws (naming `what`) when a count exceeds the total.
  int64_t resolve(int64_t total, const std::string& what = "search.budget") const;
  /// The budget as it was written (an integer, or the string).
  const nlohmann::json& json() const { return written_; }
  /// "3%", "4328".
  std::string text() const;
  bool operator==(const Budget& o) const { return written_ == o.written_; }
  bool operator!=(const Budget& o) const { return !(*this == o); }

 private:
  bool percent_ = true;
  double value_ = 3.0;
  nlohmann::json written_ = "3%";
};

void to_json(nlohmann::json& j, const Budget& b);
void from_json(const nlohmann::json& j, Budget& b);

/// Budget::parse(budget).resolve(total).
int64_t resolve_budget(const nlohmann::json& budget, int64_t total);

}  // namespace autorep::search
