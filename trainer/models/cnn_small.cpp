#include <torch/torch.h>

#include <stdexcept>

#include "layers/pool.h"
#include "layers/stem_conv.h"
#include "trainer/models/blocks.h"

namespace autorep::trainer::models {

namespace {

// ---- cnn-small: two conv blocks and a hidden linear layer; fast enough for tests and demos.
class CnnSmallImpl : public NetImpl {
 public:
  CnnSmallImpl(const ModelSpec& spec, const ActivationFactory& f) : NetImpl(spec) {
    const int64_t c = spec.input_shape[0], h = spec.input_shape[1], w = spec.input_shape[2];
    conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(c, 16, 3).padding(1).bias(false)));
    bn1_ = register_module("bn1", nn::BatchNorm2d(16));
    act1_ = add_site(*this, "act1", "act1", {16, h, w}, f);
    conv2_ = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(16, 32, 3).padding(1).bias(false)));
    bn2_ = register_module("bn2", nn::BatchNorm2d(32));
    act2_ = add_site(*this, "act2", "act2", {32, h / 2, w / 2}, f);
    const int64_t flat = 32 * (h / 4) * (w / 4);
    fc1_ = register_module("fc1", nn::Linear(flat, 64));
    act3_ = add_site(*this, "act3", "act3", {64}, f);
    fc2_ = register_module("fc2", nn::Linear(64, spec.classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = layers::max_pool2(act1_.forward(bn1_(layers::stem_conv2d(*conv1_, x))));
    x = layers::max_pool2(act2_.forward(bn2_(conv2_(x))));
    x = act3_.forward(fc1_(x.flatten(1)));
    return fc2_(x);
  }
  GraphSink::Value describe(GraphSink& g, const GraphSink::Value& input) override {
    auto x = g.max_pool(g.activation(g.conv(input, "conv1", *conv1_, "bn1", bn1_.get())), 2, "pool1");
    x = g.max_pool(g.activation(g.conv(x, "conv2", *conv2_, "bn2", bn2_.get())), 2, "pool2");
    x = g.activation(g.linear(g.flatten(x, "flatten"), "fc1", *fc1_));
    return g.linear(x, "fc2", *fc2_);
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Linear fc1_{nullptr}, fc2_{nullptr};
  nn::AnyModule act1_, act2_, act3_;
};


}  // namespace

Net make_cnn_small(const ModelSpec& spec, const ActivationFactory& f) {
  if (spec.input_shape[1] < 4 || spec.input_shape[2] < 4)
    throw std::runtime_error("model cnn-small: input must be at least 4x4");
  return std::make_shared<CnnSmallImpl>(spec, f);
}

}  // namespace autorep::trainer::models
