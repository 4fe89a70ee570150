// The ONNX export of a checkpoint: what the commands call, with or without ONNX support.
#include <torch/torch.h>

#include <stdexcept>

#include "trainer/deploy/onnx_export.h"

namespace autorep::trainer::deploy {

Normalisation normalisation_of(const methods::LoadedModel& lm) {
  data::DataOptions d = data::test_split_options(lm.config.data);
  d.limit_test = 1;
  const data::DataSplits splits = methods::load_test_split(lm, d);
  return {splits.mean, splits.std};
}

OnnxSummary export_onnx(methods::LoadedModel& lm, exports::ExportJson& mask_doc, const std::string& path,
                        const OnnxOptions& options) {
  lm.model->to(torch::kCPU, torch::kFloat);
  lm.model->eval();
  const exports::MaskExport ex = exports::parse_export(mask_doc, path);
  const OnnxSummary summary = write_onnx(*lm.model, ex, normalisation_of(lm), path, options);
  add_onnx_nodes(mask_doc, summary);
  return summary;
}

void add_onnx_nodes(exports::ExportJson& doc, const OnnxSummary& summary) {
  auto& sites = doc.at("sites");
  if (sites.size() != summary.sites.size())
    throw std::runtime_error("onnx export: " + std::to_string(summary.sites.size()) + " sites in the graph, " +
                             std::to_string(sites.size()) + " in the mask export");
  for (size_t i = 0; i < summary.sites.size(); ++i) {
    if (sites[i].at("name").get<std::string>() != summary.sites[i].name)
      throw std::runtime_error("onnx export: site " + std::to_string(i) + " is " + summary.sites[i].name +
                               " in the graph but " + sites[i].at("name").get<std::string>() + " in the mask export");
    sites[i]["onnx_nodes"] = summary.sites[i].nodes;
  }
}

}  // namespace autorep::trainer::deploy
