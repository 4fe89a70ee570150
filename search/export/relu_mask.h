#pragma once
/// The export format `autorep.relu-mask`, version 1 (docs/export-format.md, schema in
/// docs/relu-mask.schema.json): which ReLUs a reduced model keeps, per site in forward order,
/// with the effective polynomial coefficients of the replaced ones and a cost estimate.
/// Building, writing (atomically), reading with validation, checking against a model, and
/// applying an export back onto a model's gates.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/site.h"
#include "search/export/cost.h"
#include "search/export/encoding.h"

namespace autorep::exports {

/// The document type: an ordered JSON object (keys keep the documented order).
using ExportJson = nlohmann::ordered_json;

inline constexpr const char* kExportFormat = "autorep.relu-mask";
inline constexpr int64_t kExportVersion = 1;
/// A site gets `kept_indices` when kept mask entries / mask entries <= this.
inline constexpr double kKeptIndicesMaxDensity = 0.1;

/// One class's test accuracy in the export (accuracy.per_class).
struct ClassAccuracy {
  std::string name;
  std::optional<double> accuracy;  ///< none: the test split held no sample of the class
  int64_t samples = 0;
  std::optional<double> drop;      ///< the teacher's accuracy on the class minus this one
};

/// What the export says about the model and the run besides the sites (plain fields, so
/// the export needs nothing from trainer/).
struct ExportInfo {
  std::string arch;                  ///< model name, e.g. "resnet20"
  std::vector<int64_t> input_shape;  ///< C, H, W
  int64_t classes = 0;
  std::optional<bool> stem_relu;     ///< resnet18's stem ReLU option, when it applies
  std::string checkpoint_sha256;     ///< hex SHA-256 of the checkpoint ("" = unknown)
  std::string dataset;               ///< e.g. "fashion-mnist"
  std::string method;                ///< e.g. "autorep"
  std::optional<int64_t> budget_target;  ///< the run's ReLU budget (none for a baseline)
  std::optional<double> accuracy;        ///< test accuracy in [0, 1]
  std::optional<double> val_accuracy;    ///< validation accuracy in [0, 1] (runs with a validation split)
  std::string accuracy_source;           ///< e.g. "metrics.jsonl epoch 12", "evaluated (10000 samples)"
  std::vector<ClassAccuracy> per_class;  ///< test accuracy per class, label order (empty: unknown)
  std::string producer;                  ///< "" = "autorep <version>"
};

/// Thrown for an export that cannot be read: message "<source>: <key path>: <what is wrong>".
class ExportError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Builds the export document of `sites` (forward order). Every site's module must be a
/// layers::Gate or a layers::ReluSite (a plain ReLU: exported as a layer-granularity site whose
/// one mask bit is 1, decision "relu", without coefficients). Effective coefficients are
/// computed as the gate kernels do, in the gate's dtype: (c0, float(s1)*c1, float(s2)*c2), the
/// last 0 for degree 1. Throws for other modules, masks holding values other than 0/1, gates
/// of different degrees, or non-finite coefficients.
ExportJson build_export(const std::vector<layers::Site>& sites, const ExportInfo& info, const CostTable& costs);

/// Writes the document to `path` atomically (temporary file in the same folder, then rename),
/// creating the folder. Pretty-printed, 1 space indent, one line per coefficient array.
void write_export(const std::string& path, const ExportJson& doc);
/// The text write_export writes.
std::string export_to_string(const ExportJson& doc);

/// One site of a parsed export.
struct ExportSite {
  std::string name, kind, granularity, decision;
  std::vector<int64_t> shape;       ///< per-sample shape
  std::vector<int64_t> mask_shape;  ///< shape (pixel), [C] (channel), [1] (layer)
  int64_t kept = 0, total = 0;      ///< ReLU elements per sample
  std::vector<uint8_t> mask;        ///< 0/1 per mask entry, flat C-H-W order
  bool has_coefficients = false;
  std::vector<double> c0, c1, c2;   ///< effective, [C] each (exact float32 values)
  std::vector<std::string> onnx_nodes;  ///< the site's nodes in the ONNX export made with it (optional)
  int64_t elements_per_entry() const { return mask.empty() ? 0 : total / static_cast<int64_t>(mask.size()); }
};

/// A parsed, self-consistent export.
struct MaskExport {
  ExportJson doc;                 ///< the document as read
  std::string granularity;        ///< pixel | channel | layer | mixed
  int64_t degree = 2;
  int64_t kept = 0, total = 0;
  std::optional<int64_t> budget_target;
  std::vector<ExportSite> sites;
};

/// Checks a document (format, version, every key and type, then consistency: kept ==
/// popcount(mask) x elements per mask entry, mask length == product of the mask shape and the
/// mask shape == what the granularity implies, decision == what the mask says, kept_indices ==
/// the set bits, coefficient lengths == C, budget sums) and parses it. Throws ExportError
/// naming `source` and the key path, e.g. "mask.json: sites[0].kept: 312 but the mask has 311
/// bits set (x 1 element each = 311)".
MaskExport parse_export(const ExportJson& doc, const std::string& source = "export");
/// Reads and parses a file (ExportError for a missing file, invalid or truncated JSON, ...).
MaskExport read_export(const std::string& path);

/// Why the export does not fit `sites` (count, names, shapes, granularity, degree, module
/// types); empty when it fits.
std::vector<std::string> check_against_model(const MaskExport& ex, const std::vector<layers::Site>& sites);

/// Writes the export's masks and coefficients into the gates of `sites` (which must fit:
/// throws std::runtime_error with the reasons of check_against_model otherwise). Coefficients
/// are stored back as c0, c1 = e1/s1, c2 = e2/s2, choosing among the nearest floats one for
/// which float(s)*c reproduces the effective value exactly (the kernels then compute with
/// exactly the exported polynomial).
void apply_export(const MaskExport& ex, const std::vector<layers::Site>& sites);

/// Recomputes the cost section of `ex` under another table (per site and totals), in the
/// layout build_export writes.
ExportJson cost_section(const MaskExport& ex, const CostTable& costs);
/// The cost table an export was estimated with (its "cost.table"), or the default when absent.
CostTable export_cost_table(const MaskExport& ex);

}  // namespace autorep::exports
