#include <torch/torch.h>

#include <stdexcept>

#include "trainer/models/blocks.h"

namespace autorep::trainer::models {

namespace {

// ---- mlp: two hidden linear layers without batch norm. A sample's output depends on that
// sample only, so a batch split across processes trains exactly like the whole batch (the
// multi-process equivalence test uses it).
class MlpImpl : public NetImpl {
 public:
  MlpImpl(const ModelSpec& spec, const ActivationFactory& f) : NetImpl(spec) {
    const int64_t in = spec.input_shape[0] * spec.input_shape[1] * spec.input_shape[2];
    fc1_ = register_module("fc1", nn::Linear(in, 64));
    act1_ = add_site(*this, "act1", "act1", {64}, f);
    fc2_ = register_module("fc2", nn::Linear(64, 32));
    act2_ = add_site(*this, "act2", "act2", {32}, f);
    fc3_ = register_module("fc3", nn::Linear(32, spec.classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = act1_.forward(fc1_(x.flatten(1)));
    x = act2_.forward(fc2_(x));
    return fc3_(x);
  }
  GraphSink::Value describe(GraphSink& g, const GraphSink::Value& input) override {
    auto x = g.activation(g.linear(g.flatten(input, "flatten"), "fc1", *fc1_));
    x = g.activation(g.linear(x, "fc2", *fc2_));
    return g.linear(x, "fc3", *fc3_);
  }

 private:
  nn::Linear fc1_{nullptr}, fc2_{nullptr}, fc3_{nullptr};
  torch::nn::AnyModule act1_, act2_;
};

}  // namespace

Net make_mlp(const ModelSpec& spec, const ActivationFactory& f) { return std::make_shared<MlpImpl>(spec, f); }

}  // namespace autorep::trainer::models
