#include <ATen/Parallel.h>

#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
#include <cctype>

#include "trainer/data/image_decode.h"
#include "trainer/data/loaders.h"

namespace autorep::trainer::data {

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// Image folders (Tiny-ImageNet layout)

bool is_jpeg_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".jpeg" || ext == ".jpg";
}

std::vector<std::string> sorted_subdirs(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_directory()) out.push_back(entry.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// JPEGs of one class folder: <dir>/*.JPEG, or <dir>/images/*.JPEG as in Tiny-ImageNet's train/.
std::vector<std::string> class_images(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file() && is_jpeg_name(entry.path())) out.push_back(entry.path().string());
  }
  std::error_code ec;
  if (out.empty() && fs::is_directory(dir / "images", ec)) {
    for (const auto& entry : fs::directory_iterator(dir / "images")) {
      if (entry.is_regular_file() && is_jpeg_name(entry.path())) out.push_back(entry.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct FolderSample {
  std::string file;
  int64_t label;
};

// Round-robin over classes so that "the first N samples" (data.limit_*) covers every class
// instead of the first few; the order is fixed by the sorted names.
std::vector<FolderSample> interleave(const std::vector<std::vector<std::string>>& per_class) {
  std::vector<FolderSample> out;
  size_t longest = 0;
  for (const auto& files : per_class) longest = std::max(longest, files.size());
  for (size_t r = 0; r < longest; ++r) {
    for (size_t c = 0; c < per_class.size(); ++c) {
      if (r < per_class[c].size()) out.push_back({per_class[c][r], static_cast<int64_t>(c)});
    }
  }
  return out;
}

// Decodes every sample into N x 3 x H x W. With image_size > 0 every image is resized to it;
// otherwise all must match `*height` x `*width` (taken from the first image when 0).
Dataset decode_folder(const std::vector<FolderSample>& samples, int64_t image_size, int64_t* height, int64_t* width) {
  const int64_t n = static_cast<int64_t>(samples.size());
  DecodedImage first = decode_jpeg_file(samples[0].file);
  if (image_size > 0) {
    *height = *width = image_size;
  } else if (*height == 0) {
    *height = first.height;
    *width = first.width;
  }
  const int64_t h = *height, w = *width, plane = h * w;
  Dataset split;
  split.images = torch::empty({n, 3, h, w}, torch::kUInt8);
  split.labels = torch::empty({n}, torch::kLong);
  uint8_t* images = split.images.data_ptr<uint8_t>();
  int64_t* labels = split.labels.data_ptr<int64_t>();
  const std::string reference = samples[0].file;
  std::vector<std::string> errors(static_cast<size_t>(n));
  auto store = [&](int64_t i, DecodedImage image) {
    if (image.height != h || image.width != w) {
      if (image_size <= 0) {
        throw std::runtime_error(samples[i].file + ": image is " + std::to_string(image.height) + "x" +
                                 std::to_string(image.width) + " but the data set's images are " +
                                 std::to_string(h) + "x" + std::to_string(w) + " (" + reference +
                                 "); set data.image_size to resize every image to one size");
      }
      image = resize_bilinear(image, h, w);
    }
    uint8_t* dst = images + i * 3 * plane;
    for (int64_t p = 0; p < plane; ++p) {
      dst[p] = image.pixels[3 * p];
      dst[plane + p] = image.pixels[3 * p + 1];
      dst[2 * plane + p] = image.pixels[3 * p + 2];
    }
    labels[i] = samples[i].label;
  };
  store(0, std::move(first));
  at::parallel_for(1, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        store(i, decode_jpeg_file(samples[i].file));
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
  });
  for (const auto& e : errors) {
    if (!e.empty()) throw std::runtime_error(e);
  }
  return split;
}

}  // namespace

void load_image_folder(const DataOptions& options, const std::string& path, DataSplits& out) {
  const fs::path root(path);
  const fs::path train_dir = root / "train", val_dir = root / "val";
  std::error_code ec;
  if (!fs::is_directory(train_dir, ec)) {
    throw std::runtime_error(train_dir.string() + ": no such folder (image-folder expects " + path +
                             "/train/<class>/*.JPEG and " + path + "/val/...)");
  }
  const std::vector<std::string> classes = sorted_subdirs(train_dir);
  if (classes.empty()) throw std::runtime_error(train_dir.string() + ": no class folders (expected train/<class>/*.JPEG)");
  std::map<std::string, int64_t> class_index;
  std::vector<std::vector<std::string>> train_files;
  for (const auto& name : classes) {
    class_index[name] = static_cast<int64_t>(train_files.size());
    train_files.push_back(class_images(train_dir / name));
    if (train_files.back().empty()) {
      throw std::runtime_error((train_dir / name).string() + ": class folder holds no .JPEG/.jpg images");
    }
  }

  std::vector<std::vector<std::string>> val_files(classes.size());
  const fs::path annotations = val_dir / "val_annotations.txt";
  if (!fs::is_directory(val_dir, ec)) {
    throw std::runtime_error(val_dir.string() + ": no such folder (expected val/<class>/*.JPEG, or val/images/ with " +
                             "val/val_annotations.txt as in Tiny-ImageNet)");
  }
  if (fs::is_regular_file(annotations, ec) && fs::is_directory(val_dir / "images", ec)) {
    // Tiny-ImageNet: "<file>\t<class>\t<box...>" per line, images in val/images/.
    std::ifstream in(annotations);
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.empty() || line == "\r") continue;
      std::istringstream fields(line);
      std::string file, cls;
      if (!(fields >> file >> cls)) {
        throw std::runtime_error(annotations.string() + ":" + std::to_string(line_no) +
                                 ": expected '<file> <class> ...', got '" + line + "'");
      }
      const auto it = class_index.find(cls);
      if (it == class_index.end()) {
        throw std::runtime_error(annotations.string() + ":" + std::to_string(line_no) + ": class '" + cls +
                                 "' has no folder in " + train_dir.string());
      }
      val_files[it->second].push_back((val_dir / "images" / file).string());
    }
    for (auto& files : val_files) std::sort(files.begin(), files.end());
  } else {
    for (const auto& name : sorted_subdirs(val_dir)) {
      const auto it = class_index.find(name);
      if (it == class_index.end()) {
        throw std::runtime_error((val_dir / name).string() + ": class '" + name + "' has no folder in " +
                                 train_dir.string());
      }
      val_files[it->second] = class_images(val_dir / name);
    }
  }

  std::vector<FolderSample> train = interleave(train_files), test = interleave(val_files);
  if (test.empty()) throw std::runtime_error(val_dir.string() + ": holds no .JPEG/.jpg images");
  if (options.limit_train > 0 && options.limit_train < static_cast<int64_t>(train.size())) train.resize(options.limit_train);
  if (options.limit_test > 0 && options.limit_test < static_cast<int64_t>(test.size())) test.resize(options.limit_test);

  int64_t height = 0, width = 0;
  out.train = decode_folder(train, options.image_size, &height, &width);
  out.test = decode_folder(test, options.image_size, &height, &width);
  out.classes = static_cast<int64_t>(classes.size());
  out.class_names = classes;

  // Per-channel statistics of the training images; per-sample partial sums keep the result
  // independent of the thread count.
  const int64_t n = out.train.size(), plane = height * width;
  std::vector<std::array<double, 6>> partial(static_cast<size_t>(n));
  const uint8_t* images = out.train.images.data_ptr<uint8_t>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      auto& acc = partial[i];
      for (int c = 0; c < 3; ++c) {
        const uint8_t* p = images + (i * 3 + c) * plane;
        uint64_t sum = 0, sq = 0;
        for (int64_t k = 0; k < plane; ++k) {
          sum += p[k];
          sq += uint64_t{p[k]} * p[k];
        }
        acc[c] = static_cast<double>(sum);
        acc[3 + c] = static_cast<double>(sq);
      }
    }
  });
  std::array<double, 6> total{};
  for (const auto& acc : partial) {
    for (int k = 0; k < 6; ++k) total[k] += acc[k];
  }
  const double count = static_cast<double>(n) * plane;
  out.mean.clear();
  out.std.clear();
  for (int c = 0; c < 3; ++c) {
    const double mean = total[c] / count / 255.0;
    const double var = std::max(0.0, total[3 + c] / count / (255.0 * 255.0) - mean * mean);
    out.mean.push_back(static_cast<float>(mean));
    out.std.push_back(static_cast<float>(std::max(std::sqrt(var), 1e-3)));
  }
}

}  // namespace autorep::trainer::data
