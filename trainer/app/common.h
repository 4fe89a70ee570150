#pragma once
// The names the command-line sources use unqualified: what the app builds on (included by
// trainer/app/*.cpp only, never by a header).

#include "layers/util/json_check.h"
#include "layers/util/text.h"
#include "trainer/data/dataset.h"
#include "trainer/engine/config.h"
#include "trainer/engine/device.h"
#include "trainer/engine/class_report.h"
#include "trainer/engine/evaluate.h"
#include "trainer/engine/loop.h"
#include "trainer/engine/run_result.h"
#include "trainer/methods/registry.h"
#include "trainer/methods/run_config.h"
#include "trainer/methods/run_model.h"
#include "trainer/models/registry.h"

namespace autorep::trainer::app {

using namespace engine;
using namespace methods;
using namespace models;
using data::DataOptions;
using data::DataSplits;
using data::load_dataset;
using util::check_keys;
using util::fixed;
using util::join;
using util::keys_of;
using util::shape_text;
using util::with_commas;

}  // namespace autorep::trainer::app
