#include "trainer/app/run.h"

#include <filesystem>
#include <iostream>

#include "layers/util/atomic_file.h"
#include "trainer/app/export_run.h"
#include "trainer/deploy/onnx_export.h"
#include "trainer/engine/distributed.h"
#include "trainer/engine/run_result.h"
#include "trainer/methods/registry.h"
#include "trainer/methods/run_model.h"

#include "trainer/app/common.h"

namespace autorep::trainer::app {

engine::RunResult train_run(const engine::Config& config, const engine::RunOptions& options) {
  engine::RunResult r = methods::train(config, options);
  if (!r.completed) return r;
  if (engine::dist::is_primary()) {
    if (methods::find_method(config.method).reduces) {
      const std::filesystem::path dir = std::filesystem::path(r.out_dir) / "export";
      const std::string path = (dir / "mask.json").string(), log = (std::filesystem::path(r.out_dir) / "log.txt").string();
      ExportOptions eo;
      if (deploy::onnx_available()) eo.onnx_path = (dir / "model.onnx").string();
      eo.onnx_optional = true;
      r.summary = export_checkpoint(r.best_checkpoint, path, eo);
      if (!r.summary["onnx_error"].is_null()) {
        // The mask is written; say why the graph is missing.
        const std::string line =
            "export: warning: " + eo.onnx_path + " not written (" + r.summary["onnx_error"].get<std::string>() + ")";
        util::append_line(log, line);
        if (!options.quiet) std::cerr << line << std::endl;
      }
      std::string line = "export: " + path + " (" + std::to_string(r.summary.value("kept", int64_t{0})) + " of " +
                         std::to_string(r.summary.value("total", int64_t{0})) + " ReLUs kept, budget " +
                         r.summary.value("target", nlohmann::json()).dump() + ")";
      if (!r.summary["onnx"].is_null()) line += ", " + r.summary["onnx"]["path"].get<std::string>();
      util::append_line(log, line);
      if (!options.quiet) std::cerr << line << std::endl;
    }
    engine::write_run_result(config, r);
  }
  // The other processes wait until rank 0's files (export, result.json) are complete.
  engine::dist::barrier();
  return r;
}

}  // namespace autorep::trainer::app
