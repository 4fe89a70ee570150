#pragma once
/// Number and shape formatting shared by the command line, logs and sweep tables.

#include <cstdint>
#include <string>
#include <vector>

namespace autorep::util {

/// 1234567 -> "1,234,567".
std::string with_commas(int64_t v);
/// {3, 32, 32} -> "3x32x32".
std::string shape_text(const std::vector<int64_t>& shape);
/// `v` with `digits` digits after the point.
std::string fixed(double v, int digits);
/// `v` in %.4g.
std::string short_number(double v);

}  // namespace autorep::util
