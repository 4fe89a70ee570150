#include "trainer/engine/checkpoint.h"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "layers/util/atomic_file.h"
#include "trainer/engine/device.h"

namespace autorep::trainer::engine {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "autorep.checkpoint.v1";

torch::serialize::InputArchive open_archive(const std::string& path) {
  if (!fs::exists(path)) throw std::runtime_error(path + ": no such checkpoint file");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": not a readable checkpoint (" + std::string(e.what_without_backtrace()) + ")");
  }
  return archive;
}

nlohmann::json read_json_entry(torch::serialize::InputArchive& archive, const std::string& key,
                               const std::string& path) {
  c10::IValue value;
  if (!archive.try_read(key, value) || !value.isString())
    throw std::runtime_error(path + ": not an autorep checkpoint (no '" + key + "' entry)");
  return nlohmann::json::parse(value.toStringRef());
}

}  // namespace

void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                     const torch::optim::Optimizer* optimizer, const CheckpointMeta& meta) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormat)));
  archive.write("config", c10::IValue(meta.config.dump()));
  archive.write("state", c10::IValue(meta.state.dump()));
  torch::serialize::OutputArchive model_archive;
  model.save(model_archive);
  archive.write("model", model_archive);
  if (optimizer != nullptr) {
    torch::serialize::OutputArchive optim_archive;
    optimizer->save(optim_archive);
    archive.write("optimizer", optim_archive);
  }
  archive.write("rng", at::detail::getDefaultCPUGenerator().get_state(), /*is_buffer=*/true);
  // Serialised in memory first: LibTorch's file writer throws from its destructor when the disk
  // fills up (the process aborts); a failed write of the finished bytes is one clear error.
  std::ostringstream bytes;
  archive.save_to(bytes);
  util::write_file_atomic(path, bytes.str());
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  auto archive = open_archive(path);
  c10::IValue format;
  if (!archive.try_read("format", format) || !format.isString() || format.toStringRef() != kFormat)
    throw std::runtime_error(path + ": not an autorep checkpoint (expected format " + kFormat + ")");
  CheckpointMeta meta;
  meta.config = read_json_entry(archive, "config", path);
  meta.state = read_json_entry(archive, "state", path);
  return meta;
}

bool checkpoint_has_optimizer(const std::string& path) {
  auto archive = open_archive(path);
  torch::serialize::InputArchive sub;
  return archive.try_read("optimizer", sub);
}

void load_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     RngState rng_state) {
  auto archive = open_archive(path);
  torch::serialize::InputArchive model_archive;
  if (!archive.try_read("model", model_archive))
    throw std::runtime_error(path + ": not an autorep checkpoint (no model entry)");
  // Loading replaces each parameter by the stored tensor, strides included: the model keeps its
  // own memory format whatever the file's (a channels_last run's checkpoint loads into an NCHW
  // model for export, and the reverse on resume).
  const bool channels_last = is_channels_last(model);
  try {
    model.load(model_archive);
    set_memory_format(model, channels_last);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": does not match the model built from its config (" +
                             std::string(e.what_without_backtrace()) + ")");
  }
  if (optimizer != nullptr) {
    torch::serialize::InputArchive optim_archive;
    if (archive.try_read("optimizer", optim_archive)) optimizer->load(optim_archive);
  }
  torch::Tensor rng;
  if (rng_state == RngState::restore && archive.try_read("rng", rng, /*is_buffer=*/true)) {
    auto gen = at::detail::getDefaultCPUGenerator();
    gen.set_state(rng);
  }
}

}  // namespace autorep::trainer::engine
