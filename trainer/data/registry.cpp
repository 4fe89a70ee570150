#include "trainer/data/dataset.h"

#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
#include <functional>
#include <tuple>

#include "layers/util/json_check.h"
#include "trainer/data/loaders.h"

namespace autorep::trainer::data {

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// Registry

struct DatasetSpec {
  std::string name;
  std::string default_path;
  int64_t crop_padding;
  bool flip;
  int64_t default_val_split;  ///< validation images by default (0: a tenth of the training images)
  std::function<void(const DataOptions&, const std::string& path, DataSplits&)> load;
};

void load_idx_set(const DataOptions& options, const std::string& path, DataSplits& out) {
  out.classes = 10;
  out.train = read_idx_split(path, "train", out.classes, options.limit_train);
  out.test = read_idx_split(path, "t10k", out.classes, options.limit_test);
}

const std::vector<DatasetSpec>& registry() {
  static const std::vector<DatasetSpec> specs = {
      // Clothing is left-right symmetric, so Fashion-MNIST keeps the flip; digits are not.
      {"fashion-mnist", "/usr/share/datasets/fashion-mnist", 2, true, 5000,
       [](const DataOptions& o, const std::string& path, DataSplits& out) {
         load_idx_set(o, path, out);
         out.mean = {0.2860f};
         out.std = {0.3530f};
       }},
      {"mnist", "/usr/share/datasets/mnist", 2, false, 5000,
       [](const DataOptions& o, const std::string& path, DataSplits& out) {
         load_idx_set(o, path, out);
         out.mean = {0.1307f};
         out.std = {0.3081f};
       }},
      {"cifar10", "/usr/share/datasets/cifar10", 4, true, 5000,
       [](const DataOptions& o, const std::string& path, DataSplits& out) {
         const std::string dir = find_cifar_dir(path, "data_batch_1.bin", "cifar-10-batches-bin", "CIFAR-10",
                                                "data_batch_1.bin .. data_batch_5.bin and test_batch.bin");
         const auto train = existing_files(dir, {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                                 "data_batch_4.bin", "data_batch_5.bin"});
         const auto test = existing_files(dir, {"test_batch.bin"});
         out.classes = 10;
         out.train = read_cifar_files(train, "CIFAR-10", 1, 10, 0, o.limit_train);
         out.test = read_cifar_files(test, "CIFAR-10", 1, 10, 0, o.limit_test);
         out.mean = {0.4914f, 0.4822f, 0.4465f};
         out.std = {0.2470f, 0.2435f, 0.2616f};
       }},
      {"cifar100", "/usr/share/datasets/cifar100", 4, true, 5000,
       [](const DataOptions& o, const std::string& path, DataSplits& out) {
         const std::string dir =
             find_cifar_dir(path, "train.bin", "cifar-100-binary", "CIFAR-100", "train.bin and test.bin");
         out.classes = 100;
         out.train = read_cifar_files(existing_files(dir, {"train.bin"}), "CIFAR-100", 2, 100, 20, o.limit_train);
         out.test = read_cifar_files(existing_files(dir, {"test.bin"}), "CIFAR-100", 2, 100, 20, o.limit_test);
         out.mean = {0.5071f, 0.4865f, 0.4409f};
         out.std = {0.2673f, 0.2564f, 0.2762f};
       }},
      {"image-folder", "", 4, true, 0, load_image_folder},
  };
  return specs;
}

const DatasetSpec& find_spec(const std::string& name) {
  for (const auto& spec : registry()) {
    if (spec.name == name) return spec;
  }
  throw std::runtime_error("data.name: unknown data set \"" + name + "\" (known: " + util::join(dataset_names()) + ")");
}

// Moves `count` training images, chosen by a seeded permutation, into the validation split.
void hold_out_validation(DataSplits& out, int64_t count, uint64_t seed) {
  const int64_t n = out.train.size();
  if (count >= n)
    throw std::runtime_error("data.val_split: " + std::to_string(count) + " of the " + std::to_string(n) +
                             " training images leaves none to train on");
  // Epoch -1 is a permutation no training epoch (0, 1, ...) draws.
  const auto order = epoch_order(n, seed, -1);
  const auto val_idx = std::get<0>(order.slice(0, 0, count).sort());
  const auto train_idx = std::get<0>(order.slice(0, count, n).sort());
  out.val.images = out.train.images.index_select(0, val_idx);
  out.val.labels = out.train.labels.index_select(0, val_idx);
  out.train.images = out.train.images.index_select(0, train_idx);
  out.train.labels = out.train.labels.index_select(0, train_idx);
}

}  // namespace


int64_t val_split_size(const DataOptions& options, int64_t train_images) {
  if (options.val_split >= 0) return options.val_split;
  const int64_t tenth = train_images / 10;
  const int64_t preset = find_spec(options.name).default_val_split;
  return preset > 0 ? std::min(preset, tenth) : tenth;
}

DataOptions test_split_options(DataOptions options) {
  options.limit_train = 1;
  options.val_split = 0;
  return options;
}

std::string default_data_path(const std::string& name) { return find_spec(name).default_path; }

std::vector<std::string> dataset_names() {
  std::vector<std::string> names;
  for (const auto& spec : registry()) names.push_back(spec.name);
  return names;
}

DataSplits load_dataset(const DataOptions& options) {
  const DatasetSpec& spec = find_spec(options.name);
  auto bad = [](const std::string& key, int64_t value, const std::string& valid) {
    throw std::runtime_error("data." + key + ": " + std::to_string(value) + " is not valid; expected " + valid);
  };
  if (options.crop_padding < -1) bad("crop_padding", options.crop_padding, "-1 (data set default), 0 (off) or > 0");
  if (options.flip < -1 || options.flip > 1) bad("flip", options.flip, "-1 (data set default), 0 or 1");
  if (options.limit_train < 0) bad("limit_train", options.limit_train, ">= 0 (0 = all)");
  if (options.limit_test < 0) bad("limit_test", options.limit_test, ">= 0 (0 = all)");
  if (options.val_split < -1) bad("val_split", options.val_split, "-1 (data set default), 0 (off) or > 0");
  if (options.split_seed < 0) bad("split_seed", options.split_seed, ">= 0");
  if (options.batch_size <= 0) bad("batch_size", options.batch_size, "> 0");
  if (options.eval_batch_size <= 0) bad("eval_batch_size", options.eval_batch_size, "> 0");
  if (options.image_size < 0) bad("image_size", options.image_size, ">= 0 (0 = keep)");
  if (options.image_size > 0 && spec.name != "image-folder") {
    bad("image_size", options.image_size, "0 for " + spec.name + " (resizing applies to image-folder only)");
  }
  const std::string path = options.path.empty() ? spec.default_path : options.path;
  if (path.empty()) {
    throw std::runtime_error("data.path: " + spec.name + " needs a folder (e.g. tiny-imagenet-200 holding train/ and val/)");
  }
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    throw std::runtime_error(path + ": no such folder (set data.path to the folder holding the " + spec.name + " files)");
  }

  DataSplits out;
  out.name = spec.name;
  spec.load(options, path, out);
  TORCH_INTERNAL_ASSERT(out.train.images.dim() == 4 && out.test.images.dim() == 4);
  const auto train_shape = out.train.images.sizes().slice(1), test_shape = out.test.images.sizes().slice(1);
  if (train_shape != test_shape) {
    std::ostringstream s;
    s << path << ": training images are " << train_shape << " but test images are " << test_shape;
    throw std::runtime_error(s.str());
  }
  out.input_shape = train_shape.vec();
  TORCH_INTERNAL_ASSERT(static_cast<int64_t>(out.mean.size()) == out.input_shape[0] && out.mean.size() == out.std.size());
  out.crop_padding = options.crop_padding >= 0 ? options.crop_padding : spec.crop_padding;
  out.flip = options.flip >= 0 ? options.flip == 1 : spec.flip;
  if (out.class_names.empty()) out.class_names = builtin_class_names(spec.name);
  for (int64_t c = static_cast<int64_t>(out.class_names.size()); c < out.classes; ++c)
    out.class_names.push_back(std::to_string(c));
  out.class_names.resize(out.classes);
  out.groups = resolve_groups(options.groups, out.class_names);
  const int64_t val = val_split_size(options, out.train.size());
  if (val > 0) hold_out_validation(out, val, static_cast<uint64_t>(options.split_seed));
  out.subsampled = subsample_classes(out.train, options.class_fraction, out.class_names, static_cast<uint64_t>(options.split_seed));
  return out;
}

}  // namespace autorep::trainer::data
