#include "search/export.h"

#include <torch/torch.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <set>
#include <sstream>

#include "layers/gate.h"

namespace autorep::search {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), small and self-contained.
namespace {

class Sha256 {
 public:
  Sha256() { reset(); }
  void update(const uint8_t* data, size_t n) {
    total_ += n;
    while (n > 0) {
      const size_t take = std::min(n, 64 - fill_);
      std::memcpy(block_.data() + fill_, data, take);
      fill_ += take;
      data += take;
      n -= take;
      if (fill_ == 64) {
        compress(block_.data());
        fill_ = 0;
      }
    }
  }
  std::string hex() {
    const uint64_t bits = total_ * 8;
    const uint8_t one = 0x80, zero = 0;
    update(&one, 1);
    while (fill_ != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    update(len, 8);
    std::ostringstream o;
    for (uint32_t v : h_) o << std::hex << std::setw(8) << std::setfill('0') << v;
    reset();
    return o.str();
  }

 private:
  void reset() {
    h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    fill_ = 0;
    total_ = 0;
  }
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress(const uint8_t* p) {
    static constexpr uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) | (uint32_t(p[4 * i + 2]) << 8) | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a, h_[1] += b, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
  }

  std::array<uint32_t, 8> h_{};
  std::array<uint8_t, 64> block_{};
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

constexpr const char* kB64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int64_t product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (auto d : v) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? "," : "") + std::to_string(s[i]);
  return o + "]";
}

std::vector<int64_t> mask_shape_for(const std::string& granularity, const std::vector<int64_t>& shape) {
  if (granularity == "pixel") return shape;
  if (granularity == "channel") return {shape.empty() ? 0 : shape[0]};
  return {1};
}

std::string decision_of(int64_t ones, int64_t length) {
  return ones == length ? "relu" : (ones == 0 ? "poly" : "mixed");
}

// Effective coefficients as the kernels compute them: in the gate's dtype, scale cast first.
template <typename T>
std::vector<double> effective(const torch::Tensor& c, double scale, bool zero) {
  const auto t = c.detach().to(torch::kCPU).contiguous();
  std::vector<double> out(static_cast<size_t>(t.numel()));
  const T* p = t.data_ptr<T>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = zero ? 0.0 : static_cast<double>(static_cast<T>(scale) * p[i]);
  return out;
}

std::vector<double> effective_coefficients(const torch::Tensor& c, double scale, bool zero) {
  if (c.scalar_type() == torch::kDouble) return effective<double>(c, scale, zero);
  return effective<float>(c.to(torch::kFloat), scale, zero);
}

// A stored value c with fl(scale*c) == e in the dtype, searched around e/scale (the nearest one
// when none reproduces e exactly).
template <typename T>
T stored_for(double e_in, double scale_in) {
  const T e = static_cast<T>(e_in), s = static_cast<T>(scale_in);
  if (s == T(0)) return T(0);
  T c = e / s;
  if (s * c == e) return c;
  T up = c, down = c;
  for (int i = 0; i < 8; ++i) {
    up = std::nextafter(up, std::numeric_limits<T>::infinity());
    if (s * up == e) return up;
    down = std::nextafter(down, -std::numeric_limits<T>::infinity());
    if (s * down == e) return down;
  }
  return c;
}

// In the documented key order (cost.h's to_json gives a sorted object).
ExportJson estimate_json(const CostEstimate& e) {
  ExportJson j;
  j["relus"] = e.relus;
  j["poly_elements"] = e.poly_elements;
  j["multiplications"] = e.multiplications;
  j["offline_bytes"] = e.offline_bytes;
  j["online_bytes"] = e.online_bytes;
  return j;
}

// The table as embedded in an export: its numbers and sources, without the long comment.
ExportJson table_json(const CostTable& t) {
  const nlohmann::json full = to_json(t);
  ExportJson j;
  for (const char* k : {"name", "unit", "relu", "multiplication", "multiplications_per_poly_element", "sources"})
    j[k] = ExportJson(full.at(k));
  return j;
}

ExportJson cost_json(const CostTable& table, const CostEstimate& before, const CostEstimate& after) {
  auto ratio = [](double a, double b) { return b > 0 ? ExportJson(a / b) : ExportJson(nullptr); };
  ExportJson reduction;
  reduction["offline"] = ratio(before.offline_bytes, after.offline_bytes);
  reduction["online"] = ratio(before.online_bytes, after.online_bytes);
  reduction["total"] = ratio(before.total_bytes(), after.total_bytes());
  ExportJson j;
  j["table"] = table_json(table);
  j["before"] = estimate_json(before);
  j["after"] = estimate_json(after);
  j["reduction"] = reduction;
  return j;
}

ExportJson number_array(const std::vector<double>& v) {
  ExportJson a = ExportJson::array();
  for (double x : v) a.push_back(x);
  return a;
}

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  Sha256 h;
  h.update(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return h.hex();
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open for hashing");
  Sha256 h;
  std::vector<char> buf(1 << 16);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = in.gcount();
    if (got > 0) h.update(reinterpret_cast<const uint8_t*>(buf.data()), static_cast<size_t>(got));
  }
  if (in.bad()) throw std::runtime_error(path + ": read error while hashing");
  return h.hex();
}

std::string base64_encode(const std::vector<uint8_t>& b) {
  std::string out;
  out.reserve((b.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < b.size(); i += 3) {
    const uint32_t v = (uint32_t(b[i]) << 16) | (uint32_t(b[i + 1]) << 8) | b[i + 2];
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  if (i + 1 == b.size()) {
    const uint32_t v = uint32_t(b[i]) << 16;
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == b.size()) {
    const uint32_t v = (uint32_t(b[i]) << 16) | (uint32_t(b[i + 1]) << 8);
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::vector<uint8_t> base64_decode(const std::string& text) {
  if (text.size() % 4 != 0)
    throw std::runtime_error("base64 text has " + std::to_string(text.size()) +
                             " characters, not a multiple of 4 (truncated?)");
  std::vector<uint8_t> out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t v = 0;
    int pad = 0;
    for (size_t j = 0; j < 4; ++j) {
      const char ch = text[i + j];
      int d;
      if (ch == '=') {
        if (i + 4 != text.size() || j < 2) throw std::runtime_error("base64 padding '=' at offset " + std::to_string(i + j));
        ++pad;
        d = 0;
      } else {
        if (pad > 0) throw std::runtime_error("base64 character after padding at offset " + std::to_string(i + j));
        const char* p = std::strchr(kB64, ch);
        if (ch == '\0' || p == nullptr)
          throw std::runtime_error("invalid base64 character '" + std::string(1, ch) + "' at offset " +
                                   std::to_string(i + j));
        d = static_cast<int>(p - kB64);
      }
      v = (v << 6) | static_cast<uint32_t>(d);
    }
    out.push_back(static_cast<uint8_t>(v >> 16));
    if (pad < 2) out.push_back(static_cast<uint8_t>((v >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<uint8_t>(v & 0xff));
  }
  return out;
}

std::vector<uint8_t> pack_bits(const std::vector<uint8_t>& bits) {
  std::vector<uint8_t> out((bits.size() + 7) / 8, 0);
  for (size_t i = 0; i < bits.size(); ++i)
    if (bits[i]) out[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Building and writing.

ExportJson build_export(const std::vector<layers::Site>& sites, const ExportInfo& info, const CostTable& costs) {
  // First pass: the polynomial degree shared by every gate.
  std::optional<int64_t> degree;
  for (const auto& s : sites) {
    if (auto g = std::dynamic_pointer_cast<layers::GateImpl>(s.module)) {
      if (degree && *degree != g->options().degree())
        throw std::runtime_error("export: gates of different polynomial degrees (" + std::to_string(*degree) + " and " +
                                 std::to_string(g->options().degree()) + " at " + s.name + ")");
      degree = g->options().degree();
    }
  }
  const int64_t deg = degree.value_or(2);

  ExportJson out_sites = ExportJson::array();
  std::set<std::string> granularities;
  int64_t kept_sum = 0, total_sum = 0;
  CostEstimate before, after;
  for (const auto& s : sites) {
    std::string granularity;
    std::vector<uint8_t> bits;
    std::vector<double> c0, c1, c2;
    bool coefficients = false;
    if (auto g = std::dynamic_pointer_cast<layers::GateImpl>(s.module)) {
      granularity = g->options().granularity();
      const auto m = g->mask().detach().to(torch::kCPU).to(torch::kDouble).contiguous().flatten();
      const double* p = m.data_ptr<double>();
      bits.resize(static_cast<size_t>(m.numel()));
      for (size_t i = 0; i < bits.size(); ++i) {
        if (p[i] != 0.0 && p[i] != 1.0)
          throw std::runtime_error("export: site " + s.name + ": mask entry " + std::to_string(i) + " is " +
                                   std::to_string(p[i]) + ", expected 0 or 1");
        bits[i] = p[i] == 1.0;
      }
      const double s1 = g->options().scale1(), s2 = g->options().scale2();
      c0 = effective_coefficients(g->c0(), 1.0, false);
      c1 = effective_coefficients(g->c1(), s1, false);
      c2 = effective_coefficients(g->c2(), s2, g->options().degree() < 2);
      for (const auto* v : {&c0, &c1, &c2})
        for (double x : *v)
          if (!std::isfinite(x)) throw std::runtime_error("export: site " + s.name + ": a coefficient is not finite");
      coefficients = true;
    } else if (std::dynamic_pointer_cast<layers::ReluSiteImpl>(s.module)) {
      granularity = "layer";
      bits = {1};
    } else {
      throw std::runtime_error("export: site " + s.name +
                               " holds a module that is neither a gate nor a plain ReLU (cannot be exported)");
    }
    const auto mshape = mask_shape_for(granularity, s.shape);
    TORCH_INTERNAL_ASSERT(product(mshape) == static_cast<int64_t>(bits.size()), "site ", s.name, ": mask of ",
                          bits.size(), " entries for mask shape ", shape_str(mshape));
    int64_t ones = 0;
    for (auto b : bits) ones += b;
    const int64_t total = s.elements();
    const int64_t per = total / static_cast<int64_t>(bits.size());
    const int64_t kept = ones * per;
    granularities.insert(granularity);
    kept_sum += kept;
    total_sum += total;
    const CostEstimate cost = estimate_cost(costs, kept, total - kept, deg);
    before += estimate_cost(costs, total, 0, deg);
    after += cost;

    ExportJson site;
    site["name"] = s.name;
    site["kind"] = s.kind();
    site["shape"] = s.shape;
    site["granularity"] = granularity;
    site["decision"] = decision_of(ones, static_cast<int64_t>(bits.size()));
    site["kept"] = kept;
    site["total"] = total;
    site["mask"] = {{"encoding", "bitset-base64"},
                    {"bit_order", "lsb0"},
                    {"shape", mshape},
                    {"length", bits.size()},
                    {"data", base64_encode(pack_bits(bits))}};
    if (static_cast<double>(ones) <= kKeptIndicesMaxDensity * static_cast<double>(bits.size())) {
      ExportJson idx = ExportJson::array();
      for (size_t i = 0; i < bits.size(); ++i)
        if (bits[i]) idx.push_back(static_cast<int64_t>(i));
      site["kept_indices"] = idx;
    }
    if (coefficients) site["coefficients"] = {{"c0", number_array(c0)}, {"c1", number_array(c1)}, {"c2", number_array(c2)}};
    site["cost"] = estimate_json(cost);
    out_sites.push_back(std::move(site));
  }

  ExportJson doc;
  doc["format"] = kExportFormat;
  doc["version"] = kExportVersion;
  doc["producer"] = info.producer.empty() ? std::string("autorep ") + AUTOREP_VERSION : info.producer;
  ExportJson model;
  model["arch"] = info.arch;
  model["input_shape"] = info.input_shape;
  model["classes"] = info.classes;
  if (info.stem_relu) model["stem_relu"] = *info.stem_relu;
  model["checkpoint_sha256"] = info.checkpoint_sha256.empty() ? ExportJson(nullptr) : ExportJson(info.checkpoint_sha256);
  doc["model"] = model;
  doc["dataset"] = info.dataset.empty() ? ExportJson(nullptr) : ExportJson(info.dataset);
  doc["method"] = info.method;
  doc["granularity"] = granularities.size() == 1 ? *granularities.begin() : (granularities.empty() ? "layer" : "mixed");
  doc["polynomial"] = {{"degree", deg}, {"form", "c0 + c1*x + c2*x^2"}, {"coefficients", "effective"}};
  doc["budget"] = {{"target", info.budget_target ? ExportJson(*info.budget_target) : ExportJson(nullptr)},
                   {"kept", kept_sum},
                   {"total", total_sum}};
  ExportJson acc;
  acc["test"] = info.accuracy ? ExportJson(*info.accuracy) : ExportJson(nullptr);
  if (!info.accuracy_source.empty()) acc["source"] = info.accuracy_source;
  doc["accuracy"] = acc;
  doc["cost"] = cost_json(costs, before, after);
  doc["kept_indices_max_density"] = kKeptIndicesMaxDensity;
  doc["sites"] = std::move(out_sites);
  return doc;
}

namespace {

// Objects one key per line, arrays of scalars on one line (coefficients, shapes, indices).
void write_pretty(std::ostringstream& o, const ExportJson& j, int indent) {
  const std::string pad(static_cast<size_t>(indent), ' '), pad2(static_cast<size_t>(indent + 2), ' ');
  if (j.is_object()) {
    if (j.empty()) {
      o << "{}";
      return;
    }
    o << "{\n";
    bool first = true;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!first) o << ",\n";
      first = false;
      o << pad2 << ExportJson(it.key()).dump() << ": ";
      write_pretty(o, it.value(), indent + 2);
    }
    o << "\n" << pad << "}";
  } else if (j.is_array()) {
    bool scalars = true;
    for (const auto& e : j) scalars = scalars && !e.is_structured();
    if (scalars) {
      o << j.dump();
      return;
    }
    o << "[\n";
    for (size_t i = 0; i < j.size(); ++i) {
      o << pad2;
      write_pretty(o, j[i], indent + 2);
      o << (i + 1 < j.size() ? ",\n" : "\n");
    }
    o << pad << "]";
  } else {
    o << j.dump();
  }
}

}  // namespace

std::string export_to_string(const ExportJson& doc) {
  std::ostringstream o;
  write_pretty(o, doc, 0);
  o << "\n";
  return o.str();
}

void write_export(const std::string& path, const ExportJson& doc) {
  const fs::path p(path);
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const std::string text = export_to_string(doc);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(path + ": cannot open " + tmp + " for writing");
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error(path + ": write failed");
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot move the written export into place: " + ec.message());
  }
}

// ---------------------------------------------------------------------------------------------
// Reading and validation.

namespace {

class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw ExportError(source_ + ": " + (path.empty() ? std::string("(top level)") : path) + ": " + what);
  }

  static std::string join(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }

  // The object at `path`, with exactly the allowed keys (those in `required` must be present).
  void object(const ExportJson& j, const std::string& path, const std::vector<std::string>& required,
              const std::vector<std::string>& optional = {}) const {
    if (!j.is_object()) fail(path, "expected an object, got " + type_name(j));
    for (const auto& k : required)
      if (!j.contains(k)) fail(join(path, k), "missing");
    for (auto it = j.begin(); it != j.end(); ++it) {
      const bool known = std::find(required.begin(), required.end(), it.key()) != required.end() ||
                         std::find(optional.begin(), optional.end(), it.key()) != optional.end();
      if (!known) {
        std::string valid;
        for (const auto* list : {&required, &optional})
          for (const auto& k : *list) valid += (valid.empty() ? "" : ", ") + k;
        fail(join(path, it.key()), "unknown key (valid here: " + valid + ")");
      }
    }
  }

  std::string string(const ExportJson& j, const std::string& path) const {
    if (!j.is_string()) fail(path, "expected a string, got " + type_name(j));
    return j.get<std::string>();
  }
  int64_t integer(const ExportJson& j, const std::string& path, int64_t min = 0) const {
    if (!j.is_number_integer()) fail(path, "expected an integer, got " + type_name(j));
    const int64_t v = j.get<int64_t>();
    if (v < min) fail(path, "must be >= " + std::to_string(min) + ", got " + std::to_string(v));
    return v;
  }
  double number(const ExportJson& j, const std::string& path) const {
    if (!j.is_number()) fail(path, "expected a number, got " + type_name(j));
    const double v = j.get<double>();
    if (!std::isfinite(v)) fail(path, "must be finite");
    return v;
  }
  std::vector<int64_t> shape(const ExportJson& j, const std::string& path) const {
    if (!j.is_array() || j.empty()) fail(path, "expected a non-empty array of positive integers");
    std::vector<int64_t> s;
    for (size_t i = 0; i < j.size(); ++i) s.push_back(integer(j[i], path + "[" + std::to_string(i) + "]", 1));
    return s;
  }
  std::vector<double> numbers(const ExportJson& j, const std::string& path, size_t expected) const {
    if (!j.is_array()) fail(path, "expected an array of numbers, got " + type_name(j));
    if (j.size() != expected)
      fail(path, "has " + std::to_string(j.size()) + " values, expected " + std::to_string(expected) +
                     " (one per channel)");
    std::vector<double> v;
    v.reserve(j.size());
    for (size_t i = 0; i < j.size(); ++i) v.push_back(number(j[i], path + "[" + std::to_string(i) + "]"));
    return v;
  }
  void one_of(const std::string& v, const std::string& path, const std::vector<std::string>& allowed) const {
    if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    fail(path, "\"" + v + "\" is not one of " + list);
  }

  static std::string type_name(const ExportJson& j) {
    if (j.is_number_integer()) return "an integer (" + j.dump() + ")";
    if (j.is_number()) return "a number (" + j.dump() + ")";
    if (j.is_string()) return "a string (" + j.dump() + ")";
    if (j.is_boolean()) return "a boolean";
    if (j.is_null()) return "null";
    if (j.is_array()) return "an array";
    return "an object";
  }

 private:
  std::string source_;
};

}  // namespace

MaskExport parse_export(const ExportJson& doc, const std::string& source) {
  Reader r(source);
  if (!doc.is_object()) r.fail("", "an export must be a JSON object, got " + Reader::type_name(doc));
  // Format and version first: a different document deserves that answer, not a missing key.
  if (!doc.contains("format")) r.fail("format", "missing (not an autorep.relu-mask export?)");
  const std::string format = r.string(doc.at("format"), "format");
  if (format != kExportFormat) r.fail("format", "\"" + format + "\" is not \"" + kExportFormat + "\"");
  if (!doc.contains("version")) r.fail("version", "missing");
  if (!doc.at("version").is_number_integer()) r.fail("version", "expected an integer, got " + Reader::type_name(doc.at("version")));
  const int64_t version = doc.at("version").get<int64_t>();
  if (version != kExportVersion)
    r.fail("version", "this reader supports version " + std::to_string(kExportVersion) + ", the file has version " +
                          std::to_string(version));
  r.object(doc, "",
           {"format", "version", "producer", "model", "dataset", "method", "granularity", "polynomial", "budget",
            "accuracy", "cost", "kept_indices_max_density", "sites"});
  r.string(doc.at("producer"), "producer");
  const auto& model = doc.at("model");
  r.object(model, "model", {"arch", "input_shape", "classes", "checkpoint_sha256"}, {"stem_relu"});
  r.string(model.at("arch"), "model.arch");
  r.shape(model.at("input_shape"), "model.input_shape");
  r.integer(model.at("classes"), "model.classes", 1);
  if (model.contains("stem_relu") && !model.at("stem_relu").is_boolean()) r.fail("model.stem_relu", "expected true or false");
  if (!model.at("checkpoint_sha256").is_null()) {
    const std::string h = r.string(model.at("checkpoint_sha256"), "model.checkpoint_sha256");
    if (h.size() != 64 || h.find_first_not_of("0123456789abcdef") != std::string::npos)
      r.fail("model.checkpoint_sha256", "expected 64 lowercase hex digits or null");
  }
  if (!doc.at("dataset").is_null()) r.string(doc.at("dataset"), "dataset");
  r.string(doc.at("method"), "method");

  MaskExport ex;
  ex.doc = doc;
  ex.granularity = r.string(doc.at("granularity"), "granularity");
  r.one_of(ex.granularity, "granularity", {"pixel", "channel", "layer", "mixed"});
  const auto& poly = doc.at("polynomial");
  r.object(poly, "polynomial", {"degree", "form", "coefficients"});
  ex.degree = r.integer(poly.at("degree"), "polynomial.degree", 1);
  if (ex.degree > 2) r.fail("polynomial.degree", "must be 1 or 2, got " + std::to_string(ex.degree));
  if (r.string(poly.at("form"), "polynomial.form") != "c0 + c1*x + c2*x^2")
    r.fail("polynomial.form", "expected \"c0 + c1*x + c2*x^2\"");
  if (r.string(poly.at("coefficients"), "polynomial.coefficients") != "effective")
    r.fail("polynomial.coefficients", "expected \"effective\"");
  const auto& budget = doc.at("budget");
  r.object(budget, "budget", {"target", "kept", "total"});
  if (!budget.at("target").is_null()) ex.budget_target = r.integer(budget.at("target"), "budget.target");
  ex.kept = r.integer(budget.at("kept"), "budget.kept");
  ex.total = r.integer(budget.at("total"), "budget.total");
  const auto& acc = doc.at("accuracy");
  r.object(acc, "accuracy", {"test"}, {"source"});
  if (!acc.at("test").is_null()) {
    const double a = r.number(acc.at("test"), "accuracy.test");
    if (a < 0 || a > 1) r.fail("accuracy.test", "must be in [0, 1] or null");
  }
  if (acc.contains("source")) r.string(acc.at("source"), "accuracy.source");
  const auto& cost = doc.at("cost");
  r.object(cost, "cost", {"table", "before", "after", "reduction"});
  try {
    cost_table_from_json(nlohmann::json(cost.at("table")), "cost.table");
  } catch (const std::runtime_error& e) {
    throw ExportError(source + ": " + e.what());
  }
  auto check_cost = [&](const ExportJson& c, const std::string& path) {
    r.object(c, path, {"relus", "poly_elements", "multiplications", "offline_bytes", "online_bytes"});
    r.integer(c.at("relus"), path + ".relus");
    r.integer(c.at("poly_elements"), path + ".poly_elements");
    r.integer(c.at("multiplications"), path + ".multiplications");
    r.number(c.at("offline_bytes"), path + ".offline_bytes");
    r.number(c.at("online_bytes"), path + ".online_bytes");
  };
  check_cost(cost.at("before"), "cost.before");
  check_cost(cost.at("after"), "cost.after");
  r.object(cost.at("reduction"), "cost.reduction", {"offline", "online", "total"});
  for (const char* k : {"offline", "online", "total"})
    if (!cost.at("reduction").at(k).is_null()) r.number(cost.at("reduction").at(k), std::string("cost.reduction.") + k);
  const double max_density = r.number(doc.at("kept_indices_max_density"), "kept_indices_max_density");
  if (max_density < 0 || max_density > 1) r.fail("kept_indices_max_density", "must be in [0, 1]");

  const auto& sites = doc.at("sites");
  if (!sites.is_array()) r.fail("sites", "expected an array, got " + Reader::type_name(sites));
  std::set<std::string> names, granularities;
  int64_t kept_sum = 0, total_sum = 0;
  for (size_t i = 0; i < sites.size(); ++i) {
    const std::string p = "sites[" + std::to_string(i) + "]";
    const auto& js = sites[i];
    r.object(js, p, {"name", "kind", "shape", "granularity", "decision", "kept", "total", "mask", "cost"},
             {"kept_indices", "coefficients"});
    ExportSite s;
    s.name = r.string(js.at("name"), p + ".name");
    if (s.name.empty()) r.fail(p + ".name", "must not be empty");
    if (!names.insert(s.name).second) r.fail(p + ".name", "\"" + s.name + "\" appears twice");
    s.shape = r.shape(js.at("shape"), p + ".shape");
    s.kind = r.string(js.at("kind"), p + ".kind");
    r.one_of(s.kind, p + ".kind", {"conv", "linear"});
    const std::string expected_kind = s.shape.size() == 3 ? "conv" : "linear";
    if (s.kind != expected_kind)
      r.fail(p + ".kind", "\"" + s.kind + "\" does not match shape " + shape_str(s.shape) + " (expected \"" +
                              expected_kind + "\")");
    s.granularity = r.string(js.at("granularity"), p + ".granularity");
    r.one_of(s.granularity, p + ".granularity", {"pixel", "channel", "layer"});
    granularities.insert(s.granularity);
    s.kept = r.integer(js.at("kept"), p + ".kept");
    s.total = r.integer(js.at("total"), p + ".total");
    if (s.total != product(s.shape))
      r.fail(p + ".total", std::to_string(s.total) + " but shape " + shape_str(s.shape) + " has " +
                               std::to_string(product(s.shape)) + " elements");

    const auto& m = js.at("mask");
    const std::string mp = p + ".mask";
    r.object(m, mp, {"encoding", "bit_order", "shape", "length", "data"});
    if (r.string(m.at("encoding"), mp + ".encoding") != "bitset-base64")
      r.fail(mp + ".encoding", "expected \"bitset-base64\", got " + m.at("encoding").dump());
    if (r.string(m.at("bit_order"), mp + ".bit_order") != "lsb0")
      r.fail(mp + ".bit_order", "expected \"lsb0\", got " + m.at("bit_order").dump());
    s.mask_shape = r.shape(m.at("shape"), mp + ".shape");
    const auto expected_mshape = mask_shape_for(s.granularity, s.shape);
    if (s.mask_shape != expected_mshape)
      r.fail(mp + ".shape", shape_str(s.mask_shape) + " but " + s.granularity + " granularity of shape " +
                                shape_str(s.shape) + " means " + shape_str(expected_mshape));
    const int64_t length = r.integer(m.at("length"), mp + ".length", 1);
    if (length != product(s.mask_shape))
      r.fail(mp + ".length", std::to_string(length) + " but the mask shape " + shape_str(s.mask_shape) + " has " +
                                 std::to_string(product(s.mask_shape)) + " entries");
    std::vector<uint8_t> bytes;
    try {
      bytes = base64_decode(r.string(m.at("data"), mp + ".data"));
    } catch (const ExportError&) {
      throw;
    } catch (const std::runtime_error& e) {
      r.fail(mp + ".data", e.what());
    }
    const size_t want = static_cast<size_t>((length + 7) / 8);
    if (bytes.size() != want)
      r.fail(mp + ".data", "decodes to " + std::to_string(bytes.size()) + " bytes, but " + std::to_string(length) +
                               " bits need " + std::to_string(want) + " (truncated or wrong site?)");
    s.mask.resize(static_cast<size_t>(length));
    int64_t ones = 0;
    for (int64_t b = 0; b < length; ++b) {
      s.mask[static_cast<size_t>(b)] = (bytes[static_cast<size_t>(b / 8)] >> (b % 8)) & 1;
      ones += s.mask[static_cast<size_t>(b)];
    }
    if (length % 8 != 0 && (bytes.back() >> (length % 8)) != 0)
      r.fail(mp + ".data", "padding bits after bit " + std::to_string(length - 1) + " must be 0");
    const int64_t per = s.total / length;
    if (s.kept != ones * per)
      r.fail(p + ".kept", std::to_string(s.kept) + " but the mask has " + std::to_string(ones) + " bits set (x " +
                              std::to_string(per) + " element" + (per == 1 ? "" : "s") + " each = " +
                              std::to_string(ones * per) + ")");
    s.decision = r.string(js.at("decision"), p + ".decision");
    r.one_of(s.decision, p + ".decision", {"relu", "poly", "mixed"});
    const std::string expected_decision = decision_of(ones, length);
    if (s.decision != expected_decision)
      r.fail(p + ".decision", "\"" + s.decision + "\" but the mask says \"" + expected_decision + "\" (" +
                                  std::to_string(ones) + " of " + std::to_string(length) + " bits set)");

    const bool sparse = static_cast<double>(ones) <= max_density * static_cast<double>(length);
    if (js.contains("kept_indices")) {
      const auto& ki = js.at("kept_indices");
      const std::string kp = p + ".kept_indices";
      if (!sparse)
        r.fail(kp, "present, but the mask density " + std::to_string(double(ones) / double(length)) +
                       " exceeds kept_indices_max_density");
      if (!ki.is_array()) r.fail(kp, "expected an array of integers");
      if (static_cast<int64_t>(ki.size()) != ones)
        r.fail(kp, "lists " + std::to_string(ki.size()) + " indices but the mask has " + std::to_string(ones) +
                       " bits set");
      int64_t prev = -1;
      for (size_t k = 0; k < ki.size(); ++k) {
        const std::string ip = kp + "[" + std::to_string(k) + "]";
        const int64_t v = r.integer(ki[k], ip);
        if (v <= prev) r.fail(ip, "indices must be strictly increasing");
        if (v >= length || !s.mask[static_cast<size_t>(v)])
          r.fail(ip, std::to_string(v) + " is not a set bit of the mask");
        prev = v;
      }
    } else if (sparse) {
      r.fail(p + ".kept_indices", "missing: required when the kept fraction of the mask is <= kept_indices_max_density");
    }

    if (js.contains("coefficients")) {
      const auto& c = js.at("coefficients");
      const std::string cp = p + ".coefficients";
      r.object(c, cp, {"c0", "c1", "c2"});
      const auto C = static_cast<size_t>(s.shape[0]);
      s.c0 = r.numbers(c.at("c0"), cp + ".c0", C);
      s.c1 = r.numbers(c.at("c1"), cp + ".c1", C);
      s.c2 = r.numbers(c.at("c2"), cp + ".c2", C);
      if (ex.degree == 1)
        for (size_t k = 0; k < C; ++k)
          if (s.c2[k] != 0.0) r.fail(cp + ".c2[" + std::to_string(k) + "]", "must be 0 for polynomial.degree 1");
      s.has_coefficients = true;
    } else if (s.decision != "relu") {
      r.fail(p + ".coefficients", "missing: required for a site whose decision is \"" + s.decision + "\"");
    }
    check_cost(js.at("cost"), p + ".cost");
    kept_sum += s.kept;
    total_sum += s.total;
    ex.sites.push_back(std::move(s));
  }
  const std::string expected_granularity =
      granularities.size() == 1 ? *granularities.begin() : (granularities.empty() ? ex.granularity : "mixed");
  if (ex.granularity != expected_granularity)
    r.fail("granularity", "\"" + ex.granularity + "\" but the sites say \"" + expected_granularity + "\"");
  if (ex.kept != kept_sum)
    r.fail("budget.kept", std::to_string(ex.kept) + " but the sites keep " + std::to_string(kept_sum));
  if (ex.total != total_sum)
    r.fail("budget.total", std::to_string(ex.total) + " but the sites total " + std::to_string(total_sum));
  return ex;
}

MaskExport read_export(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ExportError(path + ": cannot open the export (no such file?)");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) throw ExportError(path + ": the file is empty");
  ExportJson doc;
  try {
    doc = ExportJson::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    const bool at_end = e.byte >= text.size();
    throw ExportError(path + ": not valid JSON" + std::string(at_end ? " (truncated: it ends early)" : "") + ": " +
                      e.what());
  }
  return parse_export(doc, path);
}

// ---------------------------------------------------------------------------------------------
// Model side.

std::vector<std::string> check_against_model(const MaskExport& ex, const std::vector<layers::Site>& sites) {
  std::vector<std::string> why;
  if (ex.sites.size() != sites.size())
    why.push_back("the export has " + std::to_string(ex.sites.size()) + " sites, the model " +
                  std::to_string(sites.size()));
  const size_t n = std::min(ex.sites.size(), sites.size());
  for (size_t i = 0; i < n; ++i) {
    const auto& e = ex.sites[i];
    const auto& s = sites[i];
    const std::string at = "site " + std::to_string(i) + " (" + s.name + "): ";
    if (e.name != s.name) {
      why.push_back(at + "the export names it \"" + e.name + "\"");
      continue;
    }
    if (e.shape != s.shape) {
      why.push_back(at + "shape " + shape_str(e.shape) + " in the export, " + shape_str(s.shape) + " in the model");
      continue;
    }
    if (auto g = std::dynamic_pointer_cast<layers::GateImpl>(s.module)) {
      if (e.granularity != g->options().granularity())
        why.push_back(at + "granularity " + e.granularity + " in the export, " + g->options().granularity() +
                      " in the model");
      if (e.decision != "relu" && ex.degree != g->options().degree())
        why.push_back(at + "polynomial degree " + std::to_string(ex.degree) + " in the export, " +
                      std::to_string(g->options().degree()) + " in the model");
      if (!e.has_coefficients) why.push_back(at + "the export has no coefficients for this gate");
    } else if (std::dynamic_pointer_cast<layers::ReluSiteImpl>(s.module)) {
      if (e.decision != "relu")
        why.push_back(at + "a plain ReLU in the model, but the export replaces " +
                      std::to_string(e.total - e.kept) + " of its ReLUs");
    } else {
      why.push_back(at + "holds a module that is neither a gate nor a plain ReLU");
    }
  }
  return why;
}

void apply_export(const MaskExport& ex, const std::vector<layers::Site>& sites) {
  const auto why = check_against_model(ex, sites);
  if (!why.empty()) {
    std::string msg = "the export does not fit the model: ";
    for (size_t i = 0; i < why.size(); ++i) msg += (i ? "; " : "") + why[i];
    throw std::runtime_error(msg);
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < sites.size(); ++i) {
    auto g = std::dynamic_pointer_cast<layers::GateImpl>(sites[i].module);
    if (!g) continue;  // plain ReLU, decision relu: nothing to set
    const auto& e = ex.sites[i];
    std::vector<float> m(e.mask.begin(), e.mask.end());
    const auto mt = torch::from_blob(m.data(), {static_cast<int64_t>(m.size())}, torch::kFloat).clone();
    g->mask().copy_(mt.reshape(g->mask().sizes()).to(g->mask().options()));
    const double s1 = g->options().scale1(), s2 = g->options().scale2();
    const bool dbl = g->c0().scalar_type() == torch::kDouble;
    auto store = [&](const torch::Tensor& param, const std::vector<double>& eff, double scale) {
      std::vector<double> v(eff.size());
      for (size_t k = 0; k < eff.size(); ++k)
        v[k] = scale == 1.0 ? eff[k] : (dbl ? stored_for<double>(eff[k], scale) : stored_for<float>(eff[k], scale));
      const auto t = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kDouble).clone();
      param.copy_(t.to(param.options()));
    };
    store(g->c0(), e.c0, 1.0);
    store(g->c1(), e.c1, s1);
    // Degree 1 never reads c2; keep the model's own value so nothing else changes.
    if (g->options().degree() >= 2) store(g->c2(), e.c2, s2);
  }
}

ExportJson cost_section(const MaskExport& ex, const CostTable& costs) {
  CostEstimate before, after;
  ExportJson per_site = ExportJson::array();
  for (const auto& s : ex.sites) {
    const auto c = estimate_cost(costs, s.kept, s.total - s.kept, ex.degree);
    before += estimate_cost(costs, s.total, 0, ex.degree);
    after += c;
    per_site.push_back(estimate_json(c));
  }
  ExportJson j = cost_json(costs, before, after);
  j["sites"] = per_site;
  return j;
}

CostTable export_cost_table(const MaskExport& ex) {
  if (ex.doc.contains("cost") && ex.doc.at("cost").contains("table"))
    return cost_table_from_json(nlohmann::json(ex.doc.at("cost").at("table")), "cost.table");
  return default_cost_table();
}

}  // namespace autorep::search
