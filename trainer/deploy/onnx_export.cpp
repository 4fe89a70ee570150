// The ONNX writer: a GraphSink that turns a model's description into ONNX nodes and
// initializers. Op forms are the ones OpenCV 4.6 DNN loads and runs (measured): per-channel
// constants as [C,1,1] (an Add of a [1,C,1,1] initializer does not load there), per-channel
// polynomials as depthwise 1x1 convolutions, linear layers as Gemm with transB.
#define ONNX_NAMESPACE onnx
#define ONNX_ML 1
#include <onnx/onnx_pb.h>

#include <torch/torch.h>

#include <cmath>
#include <set>
#include <stdexcept>

#include "layers/util/atomic_file.h"
#include "trainer/deploy/folding.h"
#include "trainer/deploy/onnx_export.h"
#include "trainer/models/graph.h"

namespace autorep::trainer::deploy {
namespace {

using models::GraphSink;
using Value = GraphSink::Value;

std::vector<float> floats_of(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

std::vector<int64_t> dims_of(const torch::Tensor& t) { return t.sizes().vec(); }

class OnnxWriter : public GraphSink {
 public:
  OnnxWriter(models::NetImpl& net, const exports::MaskExport& ex, const OnnxOptions& options, onnx::GraphProto& graph)
      : net_(net), ex_(ex), options_(options), g_(graph) {}

  Value conv(const Value& x, const std::string& name, const torch::nn::Conv2dImpl& conv, const std::string& bn_name,
             const torch::nn::BatchNorm2dImpl* bn) override {
    const detail::ConvGeometry geo = detail::geometry(conv, name);
    const bool fold = bn != nullptr && !options_.keep_batchnorm;
    const auto [w, b] = detail::folded_conv(conv, fold ? bn : nullptr);
    const Value y = node("Conv", name, {x, constant(name + ".weight", w), constant(name + ".bias", b)});
    auto* n = last();
    ints(n, "kernel_shape", {geo.kernel[0], geo.kernel[1]});
    ints(n, "strides", {geo.stride[0], geo.stride[1]});
    ints(n, "pads", {geo.padding[0], geo.padding[1], geo.padding[0], geo.padding[1]});
    ints(n, "dilations", {geo.dilation[0], geo.dilation[1]});
    integer(n, "group", geo.groups);
    if (bn != nullptr && !fold) return batchnorm(y, bn_name, *bn);
    return y;
  }

  Value batchnorm(const Value& x, const std::string& name, const torch::nn::BatchNorm2dImpl& bn) override {
    if (options_.keep_batchnorm) {
      const Value y = node("BatchNormalization", name,
                           {x, constant(name + ".weight", bn.weight), constant(name + ".bias", bn.bias),
                            constant(name + ".running_mean", bn.running_mean),
                            constant(name + ".running_var", bn.running_var)});
      auto* a = last()->add_attribute();
      a->set_name("epsilon");
      a->set_type(onnx::AttributeProto::FLOAT);
      a->set_f(static_cast<float>(bn.options.eps()));
      return y;
    }
    const auto [scale, shift] = detail::bn_affine(bn);
    return depthwise(x, name, scale, shift);
  }

  Value linear(const Value& x, const std::string& name, const torch::nn::LinearImpl& fc) override {
    std::vector<Value> in{x, constant(name + ".weight", fc.weight)};
    if (fc.options.bias()) in.push_back(constant(name + ".bias", fc.bias));
    const Value y = node("Gemm", name, in);
    integer(last(), "transB", 1);
    return y;
  }

  Value activation(const Value& x) override {
    const size_t i = next_site_++;
    if (i >= ex_.sites.size() || i >= net_.sites().size())
      throw std::runtime_error("onnx export: the model describes more activation sites than it has");
    const exports::ExportSite& s = ex_.sites[i];
    if (s.name != net_.sites()[i].name)
      throw std::runtime_error("onnx export: site " + std::to_string(i) + " is " + net_.sites()[i].name +
                               " in the model but " + s.name + " in the export");
    OnnxSite site{s.name, "", {}};
    const size_t first = static_cast<size_t>(g_.node_size());
    Value y;
    if (s.decision == "relu") {
      site.form = "relu";
      y = node("Relu", s.name + "/relu", {x});
    } else {
      const bool identity = detail::is_identity(s);
      const Value p = identity ? x : polynomial(x, s);
      if (s.decision == "poly") {
        site.form = identity ? "identity" : "polynomial";
        y = p;
      } else {
        site.form = "mixed";
        y = mixed(x, p, s);
      }
    }
    for (int k = static_cast<int>(first); k < g_.node_size(); ++k) site.nodes.push_back(g_.node(k).name());
    sites_.push_back(std::move(site));
    return y;
  }

  Value add(const Value& a, const Value& b, const std::string& name) override { return node("Add", name, {a, b}); }

  Value max_pool(const Value& x, int64_t kernel, const std::string& name) override {
    const Value y = node("MaxPool", name, {x});
    ints(last(), "kernel_shape", {kernel, kernel});
    ints(last(), "strides", {kernel, kernel});
    return y;
  }

  Value global_average_pool(const Value& x, const std::string& name) override {
    return flatten(node("GlobalAveragePool", name, {x}), name + "/flatten");
  }

  Value flatten(const Value& x, const std::string& name) override {
    const Value y = node("Flatten", name, {x});
    integer(last(), "axis", 1);
    return y;
  }

  /// The first nodes: (x - mean) * (1 / std), per channel.
  Value normalise(const Value& x, const Normalisation& norm) {
    const int64_t c = static_cast<int64_t>(norm.mean.size());
    std::vector<float> inv(norm.std.size());
    for (size_t k = 0; k < inv.size(); ++k) inv[k] = 1.0f / norm.std[k];
    const Value centred = node("Sub", "normalise/sub", {x, constant("normalise.mean", norm.mean, {c, 1, 1})});
    return node("Mul", "normalise/mul", {centred, constant("normalise.inv_std", inv, {c, 1, 1})});
  }

  size_t sites_described() const { return next_site_; }
  std::vector<OnnxSite> take_sites() { return std::move(sites_); }
  int64_t parameters() const { return parameters_; }

 private:
  /// y[c] = scale[c] * x[c] (+ shift[c]) as a 1x1 convolution with one group per channel.
  Value depthwise(const Value& x, const std::string& name, const torch::Tensor& scale, const torch::Tensor& shift) {
    const int64_t c = scale.numel();
    std::vector<Value> in{x, constant(name + ".weight", scale.reshape({c, 1, 1, 1}))};
    if (shift.defined()) in.push_back(constant(name + ".bias", shift));
    const Value y = node("Conv", name, in);
    ints(last(), "kernel_shape", {1, 1});
    integer(last(), "group", c);
    return y;
  }

  /// c0 + c1*x + c2*x*x per channel (conv sites) or per feature (linear sites).
  Value polynomial(const Value& x, const exports::ExportSite& s) {
    const bool quadratic = detail::has_quadratic(s);
    auto tensor = [](const std::vector<double>& v) { return torch::tensor(v, torch::kDouble); };
    Value lin, quad;
    if (s.kind == "conv") {
      lin = depthwise(x, s.name + "/poly.linear", tensor(s.c1), tensor(s.c0));
      if (!quadratic) return lin;
      const Value sq = node("Mul", s.name + "/poly.square", {x, x});
      quad = depthwise(sq, s.name + "/poly.quadratic", tensor(s.c2), torch::Tensor());
    } else {
      const Value scaled = node("Mul", s.name + "/poly.linear", {x, constant(s.name + ".c1", tensor(s.c1))});
      lin = node("Add", s.name + "/poly.constant", {scaled, constant(s.name + ".c0", tensor(s.c0))});
      if (!quadratic) return lin;
      const Value sq = node("Mul", s.name + "/poly.square", {x, x});
      quad = node("Mul", s.name + "/poly.quadratic", {sq, constant(s.name + ".c2", tensor(s.c2))});
    }
    return node("Add", s.name + "/poly", {lin, quad});
  }

  /// mask * relu(x) + (1 - mask) * p, the mask a constant of the site's shape ([C,1,1] for
  /// channel masks of conv sites).
  Value mixed(const Value& x, const Value& p, const exports::ExportSite& s) {
    std::vector<int64_t> shape = s.mask_shape;
    if (s.kind == "conv" && shape.size() == 1) shape = {shape[0], 1, 1};
    std::vector<float> keep(s.mask.size()), drop(s.mask.size());
    for (size_t k = 0; k < s.mask.size(); ++k) {
      keep[k] = s.mask[k] ? 1.0f : 0.0f;
      drop[k] = 1.0f - keep[k];
    }
    const Value r = node("Relu", s.name + "/relu", {x});
    const Value kept = node("Mul", s.name + "/mask.relu", {r, constant(s.name + ".mask", keep, shape)});
    const Value replaced = node("Mul", s.name + "/mask.poly", {p, constant(s.name + ".inverse_mask", drop, shape)});
    return node("Add", s.name + "/mix", {kept, replaced});
  }

  /// Adds a node whose one output is named after it (names made unique).
  Value node(const std::string& op, const std::string& name, const std::vector<Value>& inputs) {
    std::string unique = name;
    for (int k = 2; !names_.insert(unique).second; ++k) unique = name + "#" + std::to_string(k);
    auto* n = g_.add_node();
    n->set_op_type(op);
    n->set_name(unique);
    for (const auto& in : inputs) n->add_input(in);
    n->add_output(unique);
    return unique;
  }
  onnx::NodeProto* last() { return g_.mutable_node(g_.node_size() - 1); }

  Value constant(const std::string& name, const std::vector<float>& values, const std::vector<int64_t>& dims) {
    if (!names_.insert(name).second) throw std::runtime_error("onnx export: two initializers named " + name);
    auto* t = g_.add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->add_dims(d);
    // raw_data is little-endian IEEE float, the layout of every machine autorep builds on.
    t->set_raw_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
    parameters_ += static_cast<int64_t>(values.size());
    return name;
  }
  Value constant(const std::string& name, const torch::Tensor& t) { return constant(name, floats_of(t), dims_of(t)); }

  static void ints(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& values) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t v : values) a->add_ints(v);
  }
  static void integer(onnx::NodeProto* n, const std::string& name, int64_t value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(value);
  }

  models::NetImpl& net_;
  const exports::MaskExport& ex_;
  const OnnxOptions& options_;
  onnx::GraphProto& g_;
  std::set<std::string> names_{"input", "logits"};
  size_t next_site_ = 0;
  std::vector<OnnxSite> sites_;
  int64_t parameters_ = 0;
};

void tensor_type(onnx::ValueInfoProto* v, const std::string& name, const std::vector<int64_t>& dims) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  auto* shape = t->mutable_shape();
  shape->add_dim()->set_dim_param("N");
  for (int64_t d : dims) shape->add_dim()->set_dim_value(d);
}

}  // namespace

std::string onnx_bytes(models::NetImpl& net, const exports::MaskExport& ex, const Normalisation& norm,
                       const OnnxOptions& options, OnnxSummary& summary) {
  const auto problems = exports::check_against_model(ex, net.sites());
  if (!problems.empty()) throw std::runtime_error("onnx export: the mask export does not fit the model: " + problems.front());
  const auto& spec = net.spec();
  if (norm.mean.size() != static_cast<size_t>(spec.input_shape[0]) || norm.std.size() != norm.mean.size())
    throw std::runtime_error("onnx export: the normalisation has " + std::to_string(norm.mean.size()) +
                             " channels, the model's input " + std::to_string(spec.input_shape[0]));

  onnx::ModelProto model;
  model.set_ir_version(onnx::IR_VERSION);
  model.set_producer_name("autorep");
  model.set_producer_version(options.producer_version.empty() ? AUTOREP_VERSION : options.producer_version);
  model.set_doc_string("autorep " + spec.name + ": ReLU-reduced network, activation sites as in the autorep.relu-mask export");
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOnnxOpset);
  auto* graph = model.mutable_graph();
  graph->set_name(spec.name);
  tensor_type(graph->add_input(), "input", spec.input_shape);
  tensor_type(graph->add_output(), "logits", {spec.classes});

  torch::NoGradGuard no_grad;
  OnnxWriter writer(net, ex, options, *graph);
  const Value out = net.describe(writer, writer.normalise("input", norm));
  if (writer.sites_described() != net.sites().size())
    throw std::runtime_error("onnx export: the model described " + std::to_string(writer.sites_described()) + " of its " +
                             std::to_string(net.sites().size()) + " activation sites");
  // The last node's output becomes the graph output "logits".
  auto* tail = graph->mutable_node(graph->node_size() - 1);
  if (tail->output(0) != out) throw std::runtime_error("onnx export: the model's output is not its last node");
  tail->set_output(0, "logits");

  summary.nodes = graph->node_size();
  summary.parameters = writer.parameters();
  summary.sites = writer.take_sites();
  std::string bytes;
  if (!model.SerializeToString(&bytes)) throw std::runtime_error("onnx export: the graph could not be serialised");
  summary.bytes = static_cast<int64_t>(bytes.size());
  return bytes;
}

OnnxSummary write_onnx(models::NetImpl& net, const exports::MaskExport& ex, const Normalisation& norm,
                       const std::string& path, const OnnxOptions& options) {
  OnnxSummary summary;
  const std::string bytes = onnx_bytes(net, ex, norm, options, summary);
  util::write_file_atomic(path, bytes);
  summary.path = path;
  return summary;
}

bool onnx_available() { return true; }

}  // namespace autorep::trainer::deploy
