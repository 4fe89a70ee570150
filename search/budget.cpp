#include "search/budget.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace autorep::search {

int64_t resolve_budget(const nlohmann::json& budget, int64_t total) {
  auto bad = [&](const std::string& why) {
    return std::runtime_error("search.budget: " + why + ", got " + budget.dump() +
                              " (expected a ReLU count such as 4328 or a percentage such as \"3%\")");
  };
  if (budget.is_number_integer() || budget.is_number_unsigned()) {
    const int64_t b = budget.get<int64_t>();
    if (b < 0) throw bad("must not be negative");
    if (b > total) throw bad("exceeds the model's " + std::to_string(total) + " ReLUs");
    return b;
  }
  if (!budget.is_string()) throw bad("wrong type");
  std::string s = budget.get<std::string>();
  const bool percent = !s.empty() && s.back() == '%';
  if (percent) s.pop_back();
  size_t used = 0;
  double v = 0.0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    throw bad("not a number");
  }
  if (used != s.size() || !std::isfinite(v)) throw bad("not a number");
  if (v < 0) throw bad("must not be negative");
  if (!percent) {
    if (v != std::floor(v)) throw bad("a count must be a whole number");
    if (v > static_cast<double>(total)) throw bad("exceeds the model's " + std::to_string(total) + " ReLUs");
    return static_cast<int64_t>(v);
  }
  if (v > 100.0) throw bad("a percentage must be at most 100%");
  // Rounded to the nearest count, as the reference does ("3%" of resnet20's 144,256 is 4,328).
  return std::min<int64_t>(total, std::llround(v / 100.0 * static_cast<double>(total)));
}

}  // namespace autorep::search
