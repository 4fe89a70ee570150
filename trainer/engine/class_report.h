#pragma once
/// Who pays for fewer ReLUs: the per-class (and per-group) accuracy of an evaluation, as
/// metrics.jsonl, result.json, the export and `autorep eval` report it.

#include <nlohmann/json.hpp>

#include <string>

#include "trainer/data/dataset.h"
#include "trainer/engine/evaluate.h"

namespace autorep::trainer::engine {

/// The report of one evaluation of `data`'s classes:
///   "per_class": [{"class": name, "accuracy": a (null without samples), "samples": n
///                  [, "drop": reference accuracy - a]}, ...] in label order,
///   "worst_class", "worst_class_accuracy" (over the classes with samples),
///   with a reference (the teacher on the same split): "max_class_drop", "max_class_drop_class";
///   with data.groups: "per_group" [{"group", "accuracy", "samples"[, "drop"]}], "worst_group",
///   "worst_group_accuracy" and, with a reference, "max_group_drop", "max_group_drop_group".
/// A non-finite sample counts as wrong for its class, as for the overall accuracy.
nlohmann::json class_report(const EvalResult& r, const data::DataSplits& data, const EvalResult* reference = nullptr);

/// One line of a report: "worst class Shirt 71.20%, largest drop 3.10 points (Shirt)".
std::string class_summary(const nlohmann::json& report);

}  // namespace autorep::trainer::engine
