#pragma once
/// ReLU budgets: a count of ReLU elements per sample, given as an integer or as a percentage
/// of the model's ReLUs.

#include <nlohmann/json.hpp>

#include <cstdint>

namespace autorep::search {

/// Resolves a budget (integer count, or a string "N%" / "N") against the model's `total`
/// ReLUs; a percentage rounds to the nearest count ("3%" of 144,256 is 4,328).
/// Throws std::runtime_error (naming search.budget) for malformed, negative or too large values.
int64_t resolve_budget(const nlohmann::json& budget, int64_t total);

}  // namespace autorep::search
