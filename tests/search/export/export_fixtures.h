#pragma once
// Fixtures of the export tests (also used by the tests of the run exports in tests/trainer/app).

#include <catch2/catch.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "layers/gate.h"
#include "layers/site.h"
#include "search/export/cost.h"
#include "search/export/relu_mask.h"
#include "tests/search/export/json_schema.h"
#include "tests/trainer/test_util.h"

namespace autorep::test::export_fixtures {

namespace fs = std::filesystem;
using exports::ExportJson;
using autorep::test::read_text;


// Temporary folders of this process, removed when it exits.
struct TempDirs {
  std::vector<fs::path> paths;
  ~TempDirs() {
    for (const auto& p : paths) {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  }
};

inline fs::path fresh_dir(const std::string& name) {
  static TempDirs dirs;
  auto p = fs::temp_directory_path() / ("autorep-test-export-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  dirs.paths.push_back(p);
  return p;
}

inline void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

// Every export a test produces must pass the shipped schema.
inline void require_schema_valid(const ExportJson& doc) {
  static const test::SchemaValidator validator(
      nlohmann::json::parse(read_text(fs::path(AUTOREP_SOURCE_DIR) / "docs" / "relu-mask.schema.json")));
  const auto errors = validator.validate(nlohmann::json::parse(doc.dump()));
  std::string all;
  for (const auto& e : errors) all += e + "\n";
  INFO(all);
  REQUIRE(errors.empty());
}

// What the export records of a model (the cnn-small of the trainer, on 1 x side x side).
struct TinySpec {
  std::string name;
  std::vector<int64_t> input_shape;
  int64_t classes = 10;
};

inline TinySpec tiny_spec(int64_t side) { return TinySpec{"cnn-small", {1, side, side}, 10}; }

// The activation sites of cnn-small on 1 x side x side (act1 16 x s x s, act2 32 x s/2 x s/2,
// act3 64), each built by `factory`: what an export is made from, without a model.
struct SiteNet {
  std::vector<layers::Site> sites_;
  const std::vector<layers::Site>& sites() const { return sites_; }
};

inline std::shared_ptr<SiteNet> site_net(const TinySpec& spec, const layers::ActivationFactory& factory) {
  const int64_t s = spec.input_shape[1];
  auto net = std::make_shared<SiteNet>();
  for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"act1", {16, s, s}}, {"act2", {32, s / 2, s / 2}}, {"act3", {64}}})
    net->sites_.push_back(layers::Site{name, shape, factory(name, shape).ptr()});
  return net;
}

inline layers::GateOptions gate_proto(const std::string& granularity, int64_t degree) {
  layers::GateOptions o;
  // s1 = 0.3 and s2 = 0.1 are inexact in float: folding them must match the kernels bit for bit.
  o.granularity(layers::parse_granularity(granularity)).degree(degree).scale1(0.3).scale2(0.1);
  return o;
}

inline std::shared_ptr<SiteNet> gated_model(const TinySpec& spec, const std::string& granularity, int64_t degree) {
  return site_net(spec, layers::gate_factory(gate_proto(granularity, degree)));
}

// Random masks (one sparse site so kept_indices appear) and coefficients.
template <typename Net>
void randomize_gates(Net& net, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  const auto& sites = net.sites();
  for (size_t i = 0; i < sites.size(); ++i) {
    auto g = std::dynamic_pointer_cast<layers::GateImpl>(sites[i].module);
    REQUIRE(g);
    const double p = i + 1 == sites.size() ? 0.05 : 0.4;
    g->mask().copy_(torch::bernoulli(torch::full_like(g->mask(), p)));
    g->c0().copy_(torch::randn_like(g->c0()));
    g->c1().copy_(torch::randn_like(g->c1()));
    g->c2().copy_(torch::randn_like(g->c2()));
  }
}

template <typename Spec>
exports::ExportInfo tiny_info(const Spec& spec) {
  exports::ExportInfo info;
  info.arch = spec.name;
  info.input_shape = spec.input_shape;
  info.classes = spec.classes;
  info.checkpoint_sha256 = exports::sha256_hex("no checkpoint");
  info.dataset = "fashion-mnist";
  info.method = "autorep";
  info.budget_target = 100;
  info.accuracy = 0.5;
  info.accuracy_source = "test";
  info.producer = "autorep (test)";
  return info;
}

inline bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

inline std::vector<float> floats(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Copies every parameter and buffer of `from` into `to` (same structure).
inline void copy_state(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto fp = from.named_parameters(), tp = to.named_parameters();
  for (const auto& kv : fp) tp[kv.key()].copy_(kv.value());
  auto fb = from.named_buffers(), tb = to.named_buffers();
  for (const auto& kv : fb) tb[kv.key()].copy_(kv.value());
}

// Flips mask bit `bit` of site `site` and updates kept, decision, kept_indices and the budget so
// the document stays self-consistent (it just no longer matches the model).
inline void flip_consistently(ExportJson& doc, size_t site, int64_t bit) {
  auto& s = doc["sites"][site];
  auto bytes = exports::base64_decode(s["mask"]["data"].get<std::string>());
  bytes[static_cast<size_t>(bit / 8)] ^= static_cast<uint8_t>(1u << (bit % 8));
  s["mask"]["data"] = exports::base64_encode(bytes);
  const int64_t length = s["mask"]["length"].get<int64_t>();
  const int64_t per = s["total"].get<int64_t>() / length;
  std::vector<int64_t> idx;
  for (int64_t b = 0; b < length; ++b)
    if ((bytes[static_cast<size_t>(b / 8)] >> (b % 8)) & 1) idx.push_back(b);
  const int64_t old_kept = s["kept"].get<int64_t>();
  s["kept"] = static_cast<int64_t>(idx.size()) * per;
  s["decision"] = idx.size() == static_cast<size_t>(length) ? "relu" : (idx.empty() ? "poly" : "mixed");
  if (static_cast<double>(idx.size()) <= doc["kept_indices_max_density"].get<double>() * length)
    s["kept_indices"] = idx;
  else
    s.erase("kept_indices");
  doc["budget"]["kept"] = doc["budget"]["kept"].get<int64_t>() - old_kept + s["kept"].get<int64_t>();
}

// The golden model: cnn-small on 1x4x4 with one site of each granularity and hand-set state.
inline std::shared_ptr<SiteNet> golden_model() {
  auto factory = [](const std::string& name, const std::vector<int64_t>& shape) {
    layers::GateOptions o(shape);
    o.granularity(name == "act1" ? layers::Granularity::Pixel
                                 : (name == "act2" ? layers::Granularity::Channel : layers::Granularity::Layer)).degree(2).scale1(1.0).scale2(0.1);
    return torch::nn::AnyModule(layers::Gate(o));
  };
  auto net = site_net(tiny_spec(4), factory);
  torch::NoGradGuard no_grad;
  for (const auto& s : net->sites()) {
    auto g = std::dynamic_pointer_cast<layers::GateImpl>(s.module);
    const int64_t n = g->mask().numel(), C = g->c0().numel();
    auto m = torch::zeros({n});
    if (s.name == "act1")
      for (int64_t i = 0; i < n; i += 3) m[i] = 1;  // every third pixel kept
    if (s.name == "act2") m[1] = 1, m[7] = 1;      // channels 1 and 7 kept: sparse
    // act3: its single layer bit stays 0 (the whole layer is a polynomial)
    g->mask().copy_(m.reshape(g->mask().sizes()));
    auto c = torch::arange(C, torch::kFloat);
    g->c0().copy_(0.125 * c - 1);
    g->c1().copy_(0.5 + 0.0625 * c);
    g->c2().copy_(1 + c);  // effective float(0.1)*(1+c): not a short decimal
  }
  return net;
}

}  // namespace autorep::test::export_fixtures
