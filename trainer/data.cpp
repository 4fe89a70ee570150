#include "trainer/data.h"

#include "trainer/image_decode.h"

#include <ATen/Parallel.h>
#include <torch/types.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>

namespace autorep::trainer {
namespace {

namespace fs = std::filesystem;

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// A counter-based stream: cheap to seed, so every sample of a batch gets its own.
struct SplitMix64 {
  uint64_t state;
  uint64_t operator()() { return splitmix64(state++); }
};

// std::uniform_int_distribution is implementation-defined, so orders would differ between
// standard libraries; rejection sampling on the raw 64-bit stream is the same everywhere.
template <typename Generator>
uint64_t uniform_below(Generator& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do {
    r = rng();
  } while (r >= limit);
  return r % n;
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

// ---------------------------------------------------------------------------------------------
// IDX (MNIST / Fashion-MNIST)

class GzReader {
 public:
  explicit GzReader(const std::string& file) : file_(file) {
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) throw std::runtime_error(file + ": no such file");
    handle_ = gzopen(file.c_str(), "rb");
    if (!handle_) throw std::runtime_error(file + ": cannot open (" + std::strerror(errno) + ")");
    gzbuffer(handle_, 1 << 20);
  }
  ~GzReader() {
    if (handle_) gzclose(handle_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes; fewer means the data ended early (plain EOF or a cut-off gzip stream).
  size_t read(void* dst, size_t n) {
    auto* out = static_cast<uint8_t*>(dst);
    size_t total = 0;
    while (total < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - total, size_t{1} << 30));
      const int got = gzread(handle_, out + total, chunk);
      if (got < 0 || got == 0) {
        check_stream(total);
        break;
      }
      total += static_cast<size_t>(got);
      consumed_ += static_cast<size_t>(got);
    }
    return total;
  }

  size_t consumed() const { return consumed_; }

 private:
  void check_stream(size_t) {
    int errnum = Z_OK;
    const char* message = gzerror(handle_, &errnum);
    // Z_BUF_ERROR is zlib's "unexpected end of file": the caller reports it as truncation.
    if (errnum == Z_OK || errnum == Z_BUF_ERROR) return;
    throw std::runtime_error(file_ + ": corrupt gzip stream (zlib: " + (message ? message : "unknown error") +
                             ") after " + std::to_string(consumed_) + " bytes of data");
  }

  std::string file_;
  gzFile handle_ = nullptr;
  size_t consumed_ = 0;
};

uint32_t big_endian_u32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string describe_idx_magic(uint32_t magic) {
  if (magic == 2051) return "2051 (an IDX image file)";
  if (magic == 2049) return "2049 (an IDX label file)";
  std::ostringstream s;
  s << magic << " (0x" << std::hex << magic << ")";
  return s.str();
}

// Reads an IDX file of unsigned bytes with `ndim` dimensions; `what` names the payload for
// messages ("image" / "label").
torch::Tensor read_idx(const std::string& file, int ndim, const std::string& what, std::vector<int64_t>* dims) {
  GzReader in(file);
  const uint32_t expected_magic = 0x0800u | static_cast<uint32_t>(ndim);
  const size_t header_bytes = 4 + 4 * static_cast<size_t>(ndim);
  std::array<uint8_t, 16> header{};
  const size_t got_header = in.read(header.data(), header_bytes);
  if (got_header >= 4 && big_endian_u32(header.data()) != expected_magic) {
    throw std::runtime_error(file + ": bad magic number " + describe_idx_magic(big_endian_u32(header.data())) +
                             ", expected " + describe_idx_magic(expected_magic) +
                             "; this is not an IDX " + what + " file");
  }
  if (got_header < header_bytes) {
    throw std::runtime_error(file + ": truncated: expected a " + std::to_string(header_bytes) +
                             "-byte IDX header, got " + std::to_string(got_header) + " bytes");
  }
  dims->clear();
  int64_t payload = 1;
  for (int d = 0; d < ndim; ++d) {
    const int64_t v = big_endian_u32(header.data() + 4 + 4 * d);
    const int64_t max = d == 0 ? (int64_t{1} << 31) : 65536;
    if (v <= 0 || v > max) {
      throw std::runtime_error(file + ": implausible dimension " + std::to_string(d) + " = " + std::to_string(v) +
                               " in the IDX header (expected 1.." + std::to_string(max) + ")");
    }
    dims->push_back(v);
    payload *= v;
  }
  if (payload > (int64_t{1} << 36)) {
    throw std::runtime_error(file + ": implausible IDX header: " + std::to_string(payload) + " bytes of " + what +
                             " data");
  }
  std::string shape_text = std::to_string((*dims)[0]) + " " + what + "s";
  if (ndim == 3) shape_text += " of " + std::to_string((*dims)[1]) + "x" + std::to_string((*dims)[2]);
  const int64_t expected_total = static_cast<int64_t>(header_bytes) + payload;

  auto data = torch::empty({payload}, torch::kUInt8);
  const size_t got = in.read(data.data_ptr<uint8_t>(), static_cast<size_t>(payload));
  if (static_cast<int64_t>(got) < payload) {
    throw std::runtime_error(file + ": truncated: expected " + std::to_string(expected_total) + " bytes of " + what +
                             " data (a " + std::to_string(header_bytes) + "-byte header and " + shape_text +
                             "), got " + std::to_string(header_bytes + got));
  }
  uint8_t extra = 0;
  if (in.read(&extra, 1) != 0) {
    throw std::runtime_error(file + ": holds more data than its IDX header says (" + shape_text + " = " +
                             std::to_string(expected_total) + " bytes); the header or the file is corrupt");
  }
  return data;
}

// "<dir>/<base>.gz" if present, else the uncompressed "<dir>/<base>".
std::string resolve_idx_file(const std::string& dir, const std::string& base) {
  const fs::path gz = fs::path(dir) / (base + ".gz");
  const fs::path plain = fs::path(dir) / base;
  std::error_code ec;
  if (fs::exists(gz, ec)) return gz.string();
  if (fs::exists(plain, ec)) return plain.string();
  throw std::runtime_error(gz.string() + ": no such file (nor " + plain.string() + ")");
}

Dataset read_idx_split(const std::string& dir, const std::string& prefix, int64_t classes, int64_t limit) {
  const std::string images_file = resolve_idx_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_file = resolve_idx_file(dir, prefix + "-labels-idx1-ubyte");
  Dataset split;
  split.images = read_idx_images(images_file);
  split.labels = read_idx_labels(labels_file, classes);
  if (split.images.size(0) != split.labels.size(0)) {
    throw std::runtime_error(images_file + " holds " + std::to_string(split.images.size(0)) + " images but " +
                             labels_file + " holds " + std::to_string(split.labels.size(0)) + " labels");
  }
  if (limit > 0 && limit < split.size()) {
    split.images = split.images.narrow(0, 0, limit).clone();
    split.labels = split.labels.narrow(0, 0, limit).clone();
  }
  return split;
}

// ---------------------------------------------------------------------------------------------
// CIFAR binary batches

constexpr int64_t kCifarPixels = 3 * 32 * 32;

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

// ---------------------------------------------------------------------------------------------
// Registry

struct DatasetSpec {
  std::string name;
  std::string default_path;
  int64_t crop_padding;
  bool flip;
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
      {"fashion-mnist", "/usr/share/datasets/fashion-mnist", 2, true,
       [](const DataOptions& o, const std::string& path, DataSplits& out) {
         load_idx_set(o, path, out);
         out.mean = {0.2860f};
         out.std = {0.3530f};
       }},
      {"mnist", "/usr/share/datasets/mnist", 2, false,
       [](const DataOptions& o, const std::string& path, DataSplits& out) {
         load_idx_set(o, path, out);
         out.mean = {0.1307f};
         out.std = {0.3081f};
       }},
      {"cifar10", "/usr/share/datasets/cifar10", 4, true,
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
      {"cifar100", "/usr/share/datasets/cifar100", 4, true,
       [](const DataOptions& o, const std::string& path, DataSplits& out) {
         const std::string dir =
             find_cifar_dir(path, "train.bin", "cifar-100-binary", "CIFAR-100", "train.bin and test.bin");
         out.classes = 100;
         out.train = read_cifar_files(existing_files(dir, {"train.bin"}), "CIFAR-100", 2, 100, 20, o.limit_train);
         out.test = read_cifar_files(existing_files(dir, {"test.bin"}), "CIFAR-100", 2, 100, 20, o.limit_test);
         out.mean = {0.5071f, 0.4865f, 0.4409f};
         out.std = {0.2673f, 0.2564f, 0.2762f};
       }},
      {"image-folder", "", 4, true, load_image_folder},
  };
  return specs;
}

const DatasetSpec& find_spec(const std::string& name) {
  for (const auto& spec : registry()) {
    if (spec.name == name) return spec;
  }
  throw std::runtime_error("data.name: unknown data set \"" + name + "\" (known: " + join(dataset_names(), ", ") + ")");
}

}  // namespace

std::string default_data_path(const std::string& name) { return find_spec(name).default_path; }

std::vector<std::string> dataset_names() {
  std::vector<std::string> names;
  for (const auto& spec : registry()) names.push_back(spec.name);
  return names;
}

torch::Tensor read_idx_images(const std::string& file) {
  std::vector<int64_t> dims;
  auto data = read_idx(file, 3, "image", &dims);
  return data.view({dims[0], 1, dims[1], dims[2]});
}

torch::Tensor read_idx_labels(const std::string& file, int64_t classes) {
  std::vector<int64_t> dims;
  auto data = read_idx(file, 1, "label", &dims);
  const uint8_t* p = data.data_ptr<uint8_t>();
  for (int64_t i = 0; i < dims[0]; ++i) {
    if (p[i] >= classes) {
      throw std::runtime_error(file + ": label " + std::to_string(p[i]) + " at index " + std::to_string(i) +
                               " is out of range; expected 0.." + std::to_string(classes - 1) + " (" +
                               std::to_string(classes) + " classes)");
    }
  }
  return data.to(torch::kLong);
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
  return out;
}

torch::Tensor epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  TORCH_CHECK(n >= 0, "epoch_order: n must be >= 0, got ", n);
  auto order = torch::empty({n}, torch::kLong);
  int64_t* p = order.data_ptr<int64_t>();
  std::iota(p, p + n, int64_t{0});
  std::mt19937_64 rng(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(epoch) ^ 0x6A09E667F3BCC909ULL)));
  for (int64_t i = n - 1; i > 0; --i) {
    std::swap(p[i], p[uniform_below(rng, static_cast<uint64_t>(i + 1))]);
  }
  return order;
}

torch::Tensor make_batch(const DataSplits& data, const Dataset& split, const torch::Tensor& indices, bool train,
                         uint64_t augment_seed, int64_t first_position) {
  TORCH_CHECK(split.images.defined() && split.images.dim() == 4 && split.images.scalar_type() == torch::kUInt8,
              "make_batch: split images must be uint8 N x C x H x W");
  TORCH_CHECK(indices.dim() == 1, "make_batch: indices must be 1-D, got ", indices.sizes());
  const auto images_t = split.images.is_contiguous() ? split.images : split.images.contiguous();
  const auto idx_t = indices.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t batch = idx_t.numel(), n = images_t.size(0);
  const int64_t channels = images_t.size(1), height = images_t.size(2), width = images_t.size(3);
  const int64_t plane = height * width;
  TORCH_CHECK(static_cast<int64_t>(data.mean.size()) == channels && static_cast<int64_t>(data.std.size()) == channels,
              "make_batch: ", data.mean.size(), " normalisation channels for images with ", channels, " channels");
  const int64_t* idx = idx_t.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(idx[b] >= 0 && idx[b] < n, "make_batch: index ", idx[b], " out of range for ", n, " samples");
  }

  // (v / 255 - mean) / std for every byte value; padding is a black (0) pixel, as torchvision
  // pads before normalising.
  std::vector<float> lut(static_cast<size_t>(channels * 256));
  for (int64_t c = 0; c < channels; ++c) {
    for (int v = 0; v < 256; ++v) lut[c * 256 + v] = (v / 255.0f - data.mean[c]) / data.std[c];
  }

  std::vector<int64_t> shift_y(batch, 0), shift_x(batch, 0);
  std::vector<uint8_t> flip(batch, 0);
  if (train) {
    // Each sample draws from its own stream, keyed by its position in the whole batch, so a
    // batch split across processes is augmented exactly as the whole batch in one process.
    const uint64_t key = splitmix64(augment_seed ^ 0xBB67AE8584CAA73BULL);
    const int64_t pad = data.crop_padding;
    for (int64_t b = 0; b < batch; ++b) {
      SplitMix64 rng{splitmix64(key ^ static_cast<uint64_t>(first_position + b) * 0x9E3779B97F4A7C15ULL)};
      if (pad > 0) {
        shift_y[b] = static_cast<int64_t>(uniform_below(rng, 2 * pad + 1)) - pad;
        shift_x[b] = static_cast<int64_t>(uniform_below(rng, 2 * pad + 1)) - pad;
      }
      if (data.flip) flip[b] = static_cast<uint8_t>(rng() >> 63);
    }
  }

  auto out = torch::empty({batch, channels, height, width}, torch::kFloat);
  float* dst = out.data_ptr<float>();
  const uint8_t* src = images_t.data_ptr<uint8_t>();
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, channels * plane));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t dy = shift_y[b], dx = shift_x[b];
      const bool mirrored = flip[b] != 0;
      for (int64_t c = 0; c < channels; ++c) {
        const float* table = lut.data() + c * 256;
        const uint8_t* in = src + (idx[b] * channels + c) * plane;
        float* o = dst + (b * channels + c) * plane;
        for (int64_t y = 0; y < height; ++y) {
          const int64_t sy = y + dy;
          float* row = o + y * width;
          if (sy < 0 || sy >= height) {
            std::fill(row, row + width, table[0]);
            continue;
          }
          const uint8_t* in_row = in + sy * width;
          if (dx == 0 && !mirrored) {
            for (int64_t x = 0; x < width; ++x) row[x] = table[in_row[x]];
            continue;
          }
          // Crop, then flip: output x shows cropped column (width - 1 - x) when mirrored.
          for (int64_t x = 0; x < width; ++x) {
            const int64_t sx = (mirrored ? width - 1 - x : x) + dx;
            row[x] = (sx < 0 || sx >= width) ? table[0] : table[in_row[sx]];
          }
        }
      }
    }
  });
  return out;
}

}  // namespace autorep::trainer
