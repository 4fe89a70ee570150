#pragma once
/// The one JSON validator of autorep: every reader of a user-written or saved JSON file (run
/// configs, sweep files, cost tables, exports) reports a problem as
/// "<source>: <key.path>: <what is wrong and what is valid>" through these helpers.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace autorep::util {

/// Throws std::runtime_error("<source>: <path>: <what>").
[[noreturn]] void json_fail(const std::string& source, const std::string& path, const std::string& what);

/// "boolean", "integer", "number", "string", "object", "array" or "null".
std::string json_type_name(const nlohmann::json& v);

/// `items` joined by `sep`.
std::string join(const std::vector<std::string>& items, const std::string& sep = ", ");

/// The keys of an object, comma-separated, in its order.
std::string keys_of(const nlohmann::json& obj);

/// `parent.key`, or `key` at the top level.
std::string key_path(const std::string& parent, const std::string& key);

/// Whether a key is a comment ("_..."), which every reader ignores.
bool is_comment_key(const std::string& key);

/// Fails on the first key of `obj` that is not in `valid` (comment keys are skipped), naming it
/// as <prefix><key> and listing the valid keys after `label` ("valid keys", "valid keys here" ...).
void check_keys(const nlohmann::json& obj, const std::vector<std::string>& valid, const std::string& source,
                const std::string& prefix, const std::string& label = "valid keys");

/// Fails unless `value` is one of `valid` ("expected one of a, b, got \"c\"").
void check_one_of(const std::string& source, const std::string& path, const std::string& value,
                  const std::vector<std::string>& valid);

/// Fails unless `v` is an object ("expected an object, got ...").
void expect_object(const nlohmann::json& v, const std::string& source, const std::string& path);

/// obj[key], failing with "<path>: missing" when absent.
const nlohmann::json& require(const nlohmann::json& obj, const std::string& key, const std::string& source,
                              const std::string& path);

/// A finite number in [min, max] (as given in `range`, e.g. "a finite number >= 0").
double number_in(const nlohmann::json& v, double min, double max, const std::string& range,
                 const std::string& source, const std::string& path);

/// An integer (signed or unsigned JSON integer) in [min, max].
int64_t integer_in(const nlohmann::json& v, int64_t min, int64_t max, const std::string& source,
                   const std::string& path);

/// A string.
std::string string_value(const nlohmann::json& v, const std::string& source, const std::string& path);

}  // namespace autorep::util
