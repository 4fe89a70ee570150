#include <zlib.h>

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

namespace {

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

  // The most bytes the file can hold: its size when it is not compressed, else its size times
  // deflate's largest ratio (1032:1), so a header cannot make the reader allocate more than the
  // file could ever fill.
  int64_t max_bytes() const {
    std::error_code ec;
    const auto size = static_cast<int64_t>(fs::file_size(file_, ec));
    if (ec) return int64_t{1} << 36;
    return gzdirect(handle_) ? size : size * 1032 + 4096;
  }

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

  if (payload > in.max_bytes()) {
    throw std::runtime_error(file + ": truncated: expected " + std::to_string(expected_total) + " bytes of " + what +
                             " data (a " + std::to_string(header_bytes) + "-byte header and " + shape_text +
                             "), more than the file can hold; the header or the file is corrupt");
  }
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


}  // namespace

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

}  // namespace autorep::trainer::data
