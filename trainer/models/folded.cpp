#include "trainer/models/folded.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>

#include "layers/pool.h"
#include "layers/site.h"
#include "trainer/models/folding.h"
#include "trainer/models/graph.h"

namespace autorep::trainer::models {

struct FoldedNet::Op {
  enum class Kind { conv, affine, linear, relu, add, max_pool, mean_hw, flatten };
  Kind kind = Kind::conv;
  int in = 0, other = -1, out = 0;
  bool in_place = false;   ///< overwrites slot `in`: this is its last use and it is not the input
  std::vector<int> done;   ///< slots last read here, dropped after it
  torch::Tensor weight, bias;
  ConvGeometry geo;
  int64_t kernel = 0;
};

namespace {

using Op = FoldedNet::Op;
using Kind = Op::Kind;

constexpr const char* kContext = "frozen teacher";

// Records the description as operations on numbered slots, folding as it goes.
class Recorder : public GraphSink {
 public:
  Recorder(NetImpl& net, torch::Dtype dtype, const torch::Device& device, bool channels_last)
      : net_(net), dtype_(dtype), device_(device), channels_last_(channels_last) {}

  Value conv(const Value& x, const std::string& name, const torch::nn::Conv2dImpl& conv, const std::string&,
             const torch::nn::BatchNorm2dImpl* bn) override {
    Op op = make(Kind::conv, x);
    op.geo = geometry(conv, name, kContext);
    const auto [w, b] = folded_conv(conv, bn, kContext);
    op.weight = place(w), op.bias = place(b);
    return emit(std::move(op));
  }
  Value batchnorm(const Value& x, const std::string&, const torch::nn::BatchNorm2dImpl& bn) override {
    Op op = make(Kind::affine, x);
    const auto [scale, shift] = bn_affine(bn, kContext);
    op.weight = place(scale.view({1, -1, 1, 1})), op.bias = place(shift.view({1, -1, 1, 1}));
    return emit(std::move(op));
  }
  Value linear(const Value& x, const std::string&, const torch::nn::LinearImpl& fc) override {
    Op op = make(Kind::linear, x);
    op.weight = place(fc.weight.detach());
    if (fc.options.bias()) op.bias = place(fc.bias.detach());
    return emit(std::move(op));
  }
  Value activation(const Value& x) override {
    const auto& sites = net_.sites();
    if (site_ >= sites.size()) throw std::logic_error("frozen teacher: the model describes more sites than it has");
    const layers::Site& s = sites[site_++];
    if (dynamic_cast<const layers::ReluSiteImpl*>(s.module.get()) == nullptr)
      throw std::runtime_error(std::string(kContext) + ": site " + s.name + " is not a ReLU (the teacher must be an all-ReLU network)");
    return emit(make(Kind::relu, x));
  }
  Value add(const Value& a, const Value& b, const std::string&) override {
    Op op = make(Kind::add, a);
    op.other = slot(b);
    return emit(std::move(op));
  }
  Value max_pool(const Value& x, int64_t kernel, const std::string&) override {
    Op op = make(Kind::max_pool, x);
    op.kernel = kernel;
    return emit(std::move(op));
  }
  Value global_average_pool(const Value& x, const std::string&) override { return emit(make(Kind::mean_hw, x)); }
  Value flatten(const Value& x, const std::string&) override { return emit(make(Kind::flatten, x)); }

  std::vector<Op> ops;
  int slots = 1;

 private:
  static int slot(const Value& v) { return std::stoi(v); }
  static Op make(Kind kind, const Value& in) {
    Op op;
    op.kind = kind;
    op.in = slot(in);
    return op;
  }
  Value emit(Op op) {
    op.out = slots++;
    ops.push_back(std::move(op));
    return std::to_string(ops.back().out);
  }
  torch::Tensor place(const torch::Tensor& t) const {
    torch::Tensor p = t.detach().to(device_, dtype_, /*non_blocking=*/false, /*copy=*/true);
    return channels_last_ && p.dim() == 4 ? p.contiguous(at::MemoryFormat::ChannelsLast) : p.contiguous();
  }

  NetImpl& net_;
  torch::Dtype dtype_;
  torch::Device device_;
  bool channels_last_;
  size_t site_ = 0;
};

// Last uses, in-place operations and early drops. A flatten's output is a view of its input and
// an in-place operation's output is its input: both join their input's storage ("root"), which
// may be overwritten only at the last read of any of its slots, and never when it is the input.
// A slot that joins a root later is read later still, so each root's last read is kept up to
// date as slots join it.
void schedule(std::vector<Op>& ops, int slots, int output) {
  const int n = static_cast<int>(ops.size());
  std::vector<int> last_read(slots, -1);
  for (int i = 0; i < n; ++i) {
    last_read[ops[i].in] = i;
    if (ops[i].other >= 0) last_read[ops[i].other] = i;
  }
  last_read[output] = n;
  std::vector<int> root(slots), root_last(last_read);
  for (int s = 0; s < slots; ++s) root[s] = s;
  const auto join = [&](int slot, int r) {
    root[slot] = r;
    root_last[r] = std::max(root_last[r], last_read[slot]);
  };
  for (int i = 0; i < n; ++i) {
    Op& op = ops[i];
    const int r = root[op.in];
    if (op.kind == Kind::flatten) join(op.out, r);
    if (op.kind == Kind::relu || op.kind == Kind::add || op.kind == Kind::affine) {
      const bool alone = op.other < 0 || root[op.other] != r;
      op.in_place = r != 0 && alone && root_last[r] == i;
      if (op.in_place) join(op.out, r);
    }
  }
  for (int s = 0; s < slots; ++s)
    if (last_read[s] >= 0 && last_read[s] < n) ops[last_read[s]].done.push_back(s);
}

torch::Tensor run(const Op& op, std::vector<torch::Tensor>& v) {
  torch::Tensor& x = v[op.in];
  switch (op.kind) {
    case Kind::conv: {
      const auto& g = op.geo;
      return torch::conv2d(x, op.weight, op.bias, {g.stride[0], g.stride[1]}, {g.padding[0], g.padding[1]},
                           {g.dilation[0], g.dilation[1]}, g.groups);
    }
    case Kind::affine:
      return op.in_place ? x.mul_(op.weight).add_(op.bias) : torch::addcmul(op.bias, x, op.weight);
    case Kind::linear:
      return torch::nn::functional::linear(x, op.weight, op.bias);
    case Kind::relu:
      return op.in_place ? x.relu_() : torch::relu(x);
    case Kind::add:
      return op.in_place ? x.add_(v[op.other]) : x + v[op.other];
    case Kind::max_pool:
      if (op.kernel == 2) return layers::max_pool2(x);
      return torch::max_pool2d(x, {op.kernel, op.kernel}, {op.kernel, op.kernel});
    case Kind::mean_hw:
      return x.mean({2, 3});
    case Kind::flatten:
      return x.flatten(1);
  }
  throw std::logic_error("frozen teacher: unknown operation");
}

}  // namespace

FoldedNet::FoldedNet(NetImpl& net, torch::Dtype dtype, const torch::Device& device, bool channels_last)
    : dtype_(dtype), channels_last_(channels_last) {
  Recorder rec(net, dtype, device, channels_last);
  output_ = std::stoi(net.describe(rec, "0"));
  if (output_ == 0) throw std::logic_error("frozen teacher: the model describes no operation");
  schedule(rec.ops, rec.slots, output_);
  ops_ = std::move(rec.ops);
  slots_ = rec.slots;
}

FoldedNet::~FoldedNet() = default;
FoldedNet::FoldedNet(FoldedNet&&) noexcept = default;
FoldedNet& FoldedNet::operator=(FoldedNet&&) noexcept = default;

size_t FoldedNet::size() const { return ops_.size(); }

torch::Tensor FoldedNet::forward(const torch::Tensor& x) const {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> v(slots_);
  v[0] = x.to(dtype_);
  if (channels_last_ && x.dim() == 4) v[0] = v[0].contiguous(at::MemoryFormat::ChannelsLast);
  for (const Op& op : ops_) {
    v[op.out] = run(op, v);
    for (int s : op.done) v[s].reset();
  }
  return v[output_];
}

}  // namespace autorep::trainer::models
