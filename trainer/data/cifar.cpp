#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/data/loaders.h"

namespace autorep::trainer::data {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// CIFAR binary batches

namespace {
constexpr int64_t kCifarPixels = 3 * 32 * 32;

}  // namespace

// Reads CIFAR records: `label_bytes` label bytes (the last one is the class) then 3x32x32 pixels.
Dataset read_cifar_files(const std::vector<std::string>& files, const std::string& set_name, int64_t label_bytes,
                         int64_t classes, int64_t coarse_classes, int64_t limit) {
  const int64_t record = label_bytes + kCifarPixels;
  std::vector<int64_t> records(files.size());
  int64_t total = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    std::error_code ec;
    const auto size = fs::file_size(files[f], ec);
    if (ec) throw std::runtime_error(files[f] + ": cannot read (" + ec.message() + ")");
    if (size == 0 || size % static_cast<uint64_t>(record) != 0) {
      throw std::runtime_error(files[f] + ": size " + std::to_string(size) + " bytes is not a whole number of " +
                               std::to_string(record) + "-byte records (" + std::to_string(label_bytes) +
                               " label byte" + (label_bytes > 1 ? "s" : "") +
                               " + 3x32x32 pixels); the file is truncated or not a " + set_name + " batch");
    }
    records[f] = static_cast<int64_t>(size) / record;
    total += records[f];
    if (limit > 0 && total >= limit) {
      records.resize(f + 1);
      break;
    }
  }
  const int64_t n = limit > 0 ? std::min(limit, total) : total;
  Dataset split;
  split.images = torch::empty({n, 3, 32, 32}, torch::kUInt8);
  split.labels = torch::empty({n}, torch::kLong);
  uint8_t* images = split.images.data_ptr<uint8_t>();
  int64_t* labels = split.labels.data_ptr<int64_t>();
  int64_t at = 0;
  std::vector<uint8_t> buffer;
  for (size_t f = 0; f < records.size() && at < n; ++f) {
    const int64_t take = std::min(records[f], n - at);
    buffer.resize(static_cast<size_t>(take * record));
    std::ifstream in(files[f], std::ios::binary);
    in.read(reinterpret_cast<char*>(buffer.data()), static_cast<std::streamsize>(buffer.size()));
    if (!in) throw std::runtime_error(files[f] + ": read error after " + std::to_string(in.gcount()) + " bytes");
    for (int64_t r = 0; r < take; ++r) {
      const uint8_t* rec = buffer.data() + r * record;
      if (coarse_classes > 0 && rec[0] >= coarse_classes) {
        throw std::runtime_error(files[f] + ": record " + std::to_string(r) + " has coarse label " +
                                 std::to_string(rec[0]) + ", expected 0.." + std::to_string(coarse_classes - 1) +
                                 "; the file is corrupt or not a " + set_name + " batch");
      }
      const int64_t label = rec[label_bytes - 1];
      if (label >= classes) {
        throw std::runtime_error(files[f] + ": record " + std::to_string(r) + " has label " + std::to_string(label) +
                                 ", expected 0.." + std::to_string(classes - 1) + "; the file is corrupt or not a " +
                                 set_name + " batch");
      }
      labels[at] = label;
      std::memcpy(images + at * kCifarPixels, rec + label_bytes, kCifarPixels);
      ++at;
    }
  }
  return split;
}

// The folder holding the batch files: `path` itself or the archive's sub-folder inside it.
std::string find_cifar_dir(const std::string& path, const std::string& probe, const std::string& subdir,
                           const std::string& set_name, const std::string& expected) {
  std::error_code ec;
  if (fs::exists(fs::path(path) / probe, ec)) return path;
  if (fs::exists(fs::path(path) / subdir / probe, ec)) return (fs::path(path) / subdir).string();
  throw std::runtime_error(path + ": no " + set_name + " binary batches here (expected " + expected + ", in " +
                           path + " or in " + (fs::path(path) / subdir).string() + ")");
}

std::vector<std::string> existing_files(const std::string& dir, const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (const auto& name : names) {
    const std::string file = (fs::path(dir) / name).string();
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) throw std::runtime_error(file + ": no such file");
    out.push_back(file);
  }
  return out;
}

}  // namespace autorep::trainer::data
