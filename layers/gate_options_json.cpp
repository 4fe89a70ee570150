#include "layers/gate_options_json.h"

namespace autorep::layers {

namespace {

template <typename T, typename Setter>
void read_if(const nlohmann::json& j, const char* key, Setter set) {
  if (j.contains(key)) set(j.at(key).get<T>());
}

}  // namespace

void to_json(nlohmann::json& j, const DapaOptions& o) {
  j = {{"enabled", o.enabled()},         {"sigma", o.sigma()},           {"var_floor", o.var_floor()},
       {"sigma_scale", o.sigma_scale()}, {"range_bound", o.range_bound()},
       {"w0_div", o.w0_div()},           {"w2_div", o.w2_div()},         {"refit_every", o.refit_every()},
       {"refit_until", o.refit_until()}, {"calibration_batches", o.calibration_batches()}};
}

void from_json(const nlohmann::json& j, DapaOptions& o) {
  read_if<bool>(j, "enabled", [&](bool v) { o.enabled(v); });
  read_if<std::string>(j, "sigma", [&](const std::string& v) { o.sigma(v); });
  read_if<double>(j, "var_floor", [&](double v) { o.var_floor(v); });
  read_if<double>(j, "sigma_scale", [&](double v) { o.sigma_scale(v); });
  read_if<double>(j, "range_bound", [&](double v) { o.range_bound(v); });
  read_if<double>(j, "w0_div", [&](double v) { o.w0_div(v); });
  read_if<double>(j, "w2_div", [&](double v) { o.w2_div(v); });
  read_if<int64_t>(j, "refit_every", [&](int64_t v) { o.refit_every(v); });
  read_if<int64_t>(j, "refit_until", [&](int64_t v) { o.refit_until(v); });
  read_if<int64_t>(j, "calibration_batches", [&](int64_t v) { o.calibration_batches(v); });
}

void to_json(nlohmann::json& j, const GateOptions& o) {
  j = {{"granularity", granularity_name(o.granularity())},
       {"degree", o.degree()},
       {"scale1", o.scale1()},
       {"scale2", o.scale2()},
       {"threshold", o.threshold()},
       {"dapa", o.dapa()}};
}

void from_json(const nlohmann::json& j, GateOptions& o) {
  read_if<std::string>(j, "granularity",
                       [&](const std::string& v) { o.granularity(parse_granularity(v, "gate.granularity")); });
  read_if<int64_t>(j, "degree", [&](int64_t v) { o.degree(v); });
  read_if<double>(j, "scale1", [&](double v) { o.scale1(v); });
  read_if<double>(j, "scale2", [&](double v) { o.scale2(v); });
  read_if<double>(j, "threshold", [&](double v) { o.threshold(v); });
  if (j.contains("dapa")) {
    DapaOptions d = o.dapa();
    from_json(j.at("dapa"), d);
    o.dapa(d);
  }
}

}  // namespace autorep::layers
