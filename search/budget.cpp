#include "search/budget.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace autorep::search {

namespace {

std::runtime_error bad(const std::string& what, const nlohmann::json& value, const std::string& why) {
  return std::runtime_error(what + ": " + why + ", got " + value.dump() +
                            " (expected a ReLU count such as 4328 or a percentage such as \"3%\")");
}

}  // namespace

Budget::Budget() = default;

Budget Budget::parse(const nlohmann::json& value, const std::string& what) {
  Budget b;
  b.written_ = value;
  if (value.is_number_integer() || value.is_number_unsigned()) {
    if (value.is_number_integer() && value.get<int64_t>() < 0) throw bad(what, value, "must not be negative");
    b.percent_ = false;
    b.value_ = static_cast<double>(value.get<int64_t>());
    return b;
  }
  if (!value.is_string()) throw bad(what, value, "wrong type");
  std::string s = value.get<std::string>();
  b.percent_ = !s.empty() && s.back() == '%';
  if (b.percent_) s.pop_back();
  size_t used = 0;
  try {
    b.value_ = std::stod(s, &used);
  } catch (const std::exception&) {
    throw bad(what, value, "not a number");
  }
  if (used != s.size() || !std::isfinite(b.value_)) throw bad(what, value, "not a number");
  if (b.value_ < 0) throw bad(what, value, "must not be negative");
  if (b.percent_ && b.value_ > 100.0) throw bad(what, value, "a percentage must be at most 100%");
  if (!b.percent_ && b.value_ != std::floor(b.value_)) throw bad(what, value, "a count must be a whole number");
  return b;
}

int64_t Budget::resolve(int64_t total, const std::string& what) const {
  if (!percent_) {
    if (value_ > static_cast<double>(total))
      throw bad(what, written_, "exceeds the model's " + std::to_string(total) + " ReLUs");
    return static_cast<int64_t>(value_);
  }
  // Rounded to the nearest count, as the reference does ("3%" of resnet20's 144,256 is 4,328).
  return std::min<int64_t>(total, std::llround(value_ / 100.0 * static_cast<double>(total)));
}

std::string Budget::text() const { return written_.is_string() ? written_.get<std::string>() : written_.dump(); }

void to_json(nlohmann::json& j, const Budget& b) { j = b.json(); }
void from_json(const nlohmann::json& j, Budget& b) { b = Budget::parse(j); }

int64_t resolve_budget(const nlohmann::json& budget, int64_t total) { return Budget::parse(budget).resolve(total); }

}  // namespace autorep::search
