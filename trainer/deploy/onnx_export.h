#pragma once
/// The deployable export: the whole trained network as one ONNX graph (opset kOnnxOpset), its
/// activation sites written as the autorep.relu-mask export of the same checkpoint says
/// (docs/deploy.md has the layout per site kind).

#include <cstdint>
#include <string>
#include <vector>

#include "search/export/relu_mask.h"
#include "trainer/data/dataset.h"
#include "trainer/methods/run_model.h"
#include "trainer/models/net.h"

namespace autorep::trainer::deploy {

/// The one opset every file is written in (OpenCV 4.6 DNN, onnx 1.12's checker, CrypTen and
/// EzPC's ONNX front ends read it).
inline constexpr int64_t kOnnxOpset = 13;

struct OnnxOptions {
  /// Keep every batch norm as a BatchNormalization node; by default each is folded into the
  /// convolution before it (or, with none before it, written as a depthwise 1x1 convolution).
  bool keep_batchnorm = false;
  std::string producer_version;  ///< "" = the autorep version
};

/// How one activation site is written, and its nodes (names are "<site>/<part>").
struct OnnxSite {
  std::string name;
  std::string form;                ///< relu | polynomial | identity | mixed
  std::vector<std::string> nodes;  ///< empty for identity (the site's input passes through)
};

struct OnnxSummary {
  std::string path;
  int64_t bytes = 0;
  int64_t nodes = 0;
  int64_t parameters = 0;  ///< floats held in initializers
  std::vector<OnnxSite> sites;
};

/// The image normalisation of the training pipeline, x -> (x - mean) / std per channel, with x
/// in [0, 1]: the graph's first nodes.
struct Normalisation {
  std::vector<float> mean, std;
};

/// The serialised ModelProto of `net` (moved to float32 CPU and eval mode by the caller) with
/// the activations of `ex`, which must fit its sites (exports::check_against_model). Input
/// "input" N x C x H x W (dynamic N), output "logits" N x classes.
std::string onnx_bytes(models::NetImpl& net, const exports::MaskExport& ex, const Normalisation& norm,
                       const OnnxOptions& options, OnnxSummary& summary);

/// onnx_bytes, written atomically to `path`.
OnnxSummary write_onnx(models::NetImpl& net, const exports::MaskExport& ex, const Normalisation& norm,
                       const std::string& path, const OnnxOptions& options = {});

/// Whether this build has the ONNX export (CMake option AUTOREP_ONNX); without it every function
/// below that writes or runs a graph throws saying so.
bool onnx_available();

/// The normalisation a checkpoint was trained with (methods::load_test_split).
Normalisation normalisation_of(const methods::LoadedModel& lm);

/// Writes the ONNX graph of a loaded checkpoint with the activations of `mask_doc` (the
/// relu-mask document built from the same checkpoint) to `path`, and adds each site's node
/// names to `mask_doc` (add_onnx_nodes).
OnnxSummary export_onnx(methods::LoadedModel& lm, exports::ExportJson& mask_doc, const std::string& path,
                        const OnnxOptions& options = {});

/// Adds each site's ONNX node names to a relu-mask document (the optional per-site field
/// "onnx_nodes"), so the two files cross-reference.
void add_onnx_nodes(exports::ExportJson& doc, const OnnxSummary& summary);

}  // namespace autorep::trainer::deploy
