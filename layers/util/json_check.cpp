#include "layers/util/json_check.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace autorep::util {

void json_fail(const std::string& source, const std::string& path, const std::string& what) {
  throw std::runtime_error(source + ": " + path + ": " + what);
}

std::string json_type_name(const nlohmann::json& v) {
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_object()) return "object";
  if (v.is_array()) return "array";
  return "null";
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string keys_of(const nlohmann::json& obj) {
  std::vector<std::string> k;
  for (auto it = obj.begin(); it != obj.end(); ++it) k.push_back(it.key());
  return join(k);
}

std::string key_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

bool is_comment_key(const std::string& key) { return !key.empty() && key[0] == '_'; }

void check_keys(const nlohmann::json& obj, const std::vector<std::string>& valid, const std::string& source,
                const std::string& prefix, const std::string& label) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& k = it.key();
    if (is_comment_key(k)) continue;
    if (std::find(valid.begin(), valid.end(), k) == valid.end())
      json_fail(source, prefix + k, "unknown key (" + label + ": " + join(valid) + ")");
  }
}

void check_one_of(const std::string& source, const std::string& path, const std::string& value,
                  const std::vector<std::string>& valid) {
  if (std::find(valid.begin(), valid.end(), value) != valid.end()) return;
  json_fail(source, path, "expected one of " + join(valid) + ", got \"" + value + "\"");
}

void expect_object(const nlohmann::json& v, const std::string& source, const std::string& path) {
  if (!v.is_object()) json_fail(source, path, "expected an object, got " + v.dump());
}

const nlohmann::json& require(const nlohmann::json& obj, const std::string& key, const std::string& source,
                              const std::string& path) {
  if (!obj.is_object() || !obj.contains(key)) json_fail(source, path, "missing");
  return obj.at(key);
}

double number_in(const nlohmann::json& v, double min, double max, const std::string& range,
                 const std::string& source, const std::string& path) {
  if (!v.is_number()) json_fail(source, path, "expected " + range + ", got " + v.dump());
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < min || d > max) json_fail(source, path, "must be " + range + ", got " + v.dump());
  return d;
}

int64_t integer_in(const nlohmann::json& v, int64_t min, int64_t max, const std::string& source,
                   const std::string& path) {
  const std::string range = "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
  if (!(v.is_number_integer() || v.is_number_unsigned())) json_fail(source, path, "expected " + range + ", got " + v.dump());
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(max))
    json_fail(source, path, "must be " + range + ", got " + v.dump());
  const int64_t i = v.get<int64_t>();
  if (i < min || i > max) json_fail(source, path, "must be " + range + ", got " + v.dump());
  return i;
}

std::string string_value(const nlohmann::json& v, const std::string& source, const std::string& path) {
  if (!v.is_string()) json_fail(source, path, "expected a string, got " + v.dump());
  return v.get<std::string>();
}

}  // namespace autorep::util
