// libFuzzer target: an `autorep.relu-mask` export and a cost table, as `autorep export --verify`,
// `inspect` and `--cost-table` read them.
#include <nlohmann/json.hpp>

#include <exception>

#include "search/export/cost.h"
#include "search/export/relu_mask.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace autorep::exports;
  const std::string t = autorep::fuzz::text(data, size);
  try {
    const auto doc = ExportJson::parse(t);
    const MaskExport ex = parse_export(doc, "fuzz.json");
    (void)cost_section(ex, export_cost_table(ex));
  } catch (const std::exception&) {
  }
  try {
    (void)cost_table_from_json(nlohmann::json::parse(t), "fuzz.json");
  } catch (const std::exception&) {
  }
  return 0;
}
