#pragma once
// A small JSON Schema validator for the subset docs/relu-mask.schema.json uses: type (string or
// list), const, enum, required, properties, additionalProperties (bool or schema), items,
// minItems, maxItems, minimum, maximum, minLength, maxLength and local $ref ("#/$defs/...").
// Annotations ($schema, $id, title, description, $comment, $defs) are skipped; any other
// keyword is reported, so the schema cannot silently rely on something this does not check.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace autorep::test {

class SchemaValidator {
 public:
  explicit SchemaValidator(nlohmann::json root) : root_(std::move(root)) {}

  /// Every violation, as "<instance path>: <what>"; empty when `instance` is valid.
  std::vector<std::string> validate(const nlohmann::json& instance) const {
    std::vector<std::string> errors;
    check(root_, instance, "$", errors);
    return errors;
  }

 private:
  static bool is_type(const nlohmann::json& v, const std::string& t) {
    if (t == "object") return v.is_object();
    if (t == "array") return v.is_array();
    if (t == "string") return v.is_string();
    if (t == "boolean") return v.is_boolean();
    if (t == "null") return v.is_null();
    if (t == "number") return v.is_number();
    if (t == "integer") return v.is_number_integer() || (v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<long long>(v.get<double>())));
    return false;
  }

  const nlohmann::json& resolve(const std::string& ref, const std::string& at, std::vector<std::string>& errors) const {
    static const nlohmann::json empty = nlohmann::json::object();
    if (ref.rfind("#/", 0) != 0) {
      errors.push_back(at + ": unsupported $ref " + ref);
      return empty;
    }
    const nlohmann::json::json_pointer ptr(ref.substr(1));
    if (!root_.contains(ptr)) {
      errors.push_back(at + ": $ref " + ref + " does not resolve");
      return empty;
    }
    return root_.at(ptr);
  }

  void check(const nlohmann::json& schema, const nlohmann::json& v, const std::string& at,
             std::vector<std::string>& errors) const {
    if (schema.is_boolean()) {
      if (!schema.get<bool>()) errors.push_back(at + ": not allowed here");
      return;
    }
    for (auto it = schema.begin(); it != schema.end(); ++it) {
      const std::string& k = it.key();
      const auto& s = it.value();
      if (k == "$schema" || k == "$id" || k == "title" || k == "description" || k == "$comment" || k == "$defs") {
        continue;
      } else if (k == "$ref") {
        check(resolve(s.get<std::string>(), at, errors), v, at, errors);
      } else if (k == "type") {
        std::vector<std::string> types = s.is_array() ? s.get<std::vector<std::string>>() : std::vector<std::string>{s.get<std::string>()};
        if (std::none_of(types.begin(), types.end(), [&](const std::string& t) { return is_type(v, t); }))
          errors.push_back(at + ": expected type " + s.dump() + ", got " + v.type_name());
      } else if (k == "const") {
        if (v != s) errors.push_back(at + ": expected " + s.dump() + ", got " + v.dump());
      } else if (k == "enum") {
        if (std::find(s.begin(), s.end(), v) == s.end()) errors.push_back(at + ": " + v.dump() + " not in " + s.dump());
      } else if (k == "required") {
        if (v.is_object())
          for (const auto& r : s)
            if (!v.contains(r.get<std::string>())) errors.push_back(at + "." + r.get<std::string>() + ": required");
      } else if (k == "properties") {
        if (v.is_object())
          for (auto p = s.begin(); p != s.end(); ++p)
            if (v.contains(p.key())) check(p.value(), v.at(p.key()), at + "." + p.key(), errors);
      } else if (k == "additionalProperties") {
        if (!v.is_object()) continue;
        const auto props = schema.value("properties", nlohmann::json::object());
        for (auto p = v.begin(); p != v.end(); ++p) {
          if (props.contains(p.key())) continue;
          if (s.is_boolean() && !s.get<bool>())
            errors.push_back(at + "." + p.key() + ": additional property not allowed");
          else if (s.is_object())
            check(s, p.value(), at + "." + p.key(), errors);
        }
      } else if (k == "items") {
        if (v.is_array())
          for (size_t i = 0; i < v.size(); ++i) check(s, v[i], at + "[" + std::to_string(i) + "]", errors);
      } else if (k == "minItems" || k == "maxItems") {
        if (!v.is_array()) continue;
        const auto n = s.get<size_t>();
        if (k == "minItems" ? v.size() < n : v.size() > n) errors.push_back(at + ": " + k + " " + s.dump() + " violated");
      } else if (k == "minLength" || k == "maxLength") {
        if (!v.is_string()) continue;
        const auto n = s.get<size_t>();
        const auto len = v.get<std::string>().size();
        if (k == "minLength" ? len < n : len > n) errors.push_back(at + ": " + k + " " + s.dump() + " violated");
      } else if (k == "minimum" || k == "maximum") {
        if (!v.is_number()) continue;
        const double x = v.get<double>(), b = s.get<double>();
        if (k == "minimum" ? x < b : x > b) errors.push_back(at + ": " + v.dump() + " violates " + k + " " + s.dump());
      } else {
        errors.push_back(at + ": the schema uses keyword \"" + k + "\", which this validator does not support");
      }
    }
  }

  nlohmann::json root_;
};

}  // namespace autorep::test
