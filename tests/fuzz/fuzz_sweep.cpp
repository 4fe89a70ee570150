// libFuzzer target: a sweep file as `autorep sweep --config F` reads it (its base config is
// resolved against the shipped configs/ folder).
#include <nlohmann/json.hpp>

#include <exception>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/app/sweep.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto j = nlohmann::json::parse(autorep::fuzz::text(data, size));
    (void)autorep::trainer::app::sweep_config_from_json(j, "fuzz.json", AUTOREP_SOURCE_DIR "/configs");
  } catch (const std::exception&) {
  }
  return 0;
}
