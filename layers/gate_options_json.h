#pragma once
/// The `gate` section of a run config is GateOptions itself: these map it to and from JSON
/// (keys granularity, degree, scale1, scale2, threshold, dapa{enabled, sigma, var_floor, w0_div,
/// w2_div, refit_every, refit_until}). The per-site shape, the kernel choice and the DaPa
/// momentum are not config keys.

#include <nlohmann/json.hpp>

#include "layers/gate.h"

namespace autorep::layers {

void to_json(nlohmann::json& j, const DapaOptions& o);
/// Reads every key present (a missing key keeps its current value); a granularity name that is
/// not pixel, channel or layer throws naming "gate.granularity".
void from_json(const nlohmann::json& j, DapaOptions& o);
void to_json(nlohmann::json& j, const GateOptions& o);
void from_json(const nlohmann::json& j, GateOptions& o);

}  // namespace autorep::layers
