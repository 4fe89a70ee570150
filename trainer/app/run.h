#pragma once
/// One run as `autorep train` and `autorep sweep` run it: train it (methods::train), export the
/// best checkpoint of a reduction run to `<run>/export/mask.json`, and write `result.json`.

#include "trainer/engine/config.h"
#include "trainer/engine/loop.h"

namespace autorep::trainer::app {

/// Trains (or resumes) the run; when it completes, rank 0 exports a reduction run's best.pt
/// (the model `autorep verify` is checked against) and writes result.json, and every process
/// waits for those files. `result.summary` holds the export's summary (null for a baseline).
engine::RunResult train_run(const engine::Config& config, const engine::RunOptions& options);

}  // namespace autorep::trainer::app
