#include <torch/torch.h>

#include <stdexcept>

#include "layers/pool.h"
#include "layers/stem_conv.h"
#include "trainer/models/blocks.h"

namespace autorep::trainer::models {

namespace {

// ---- VGG-16 with batch norm (CIFAR variant); pooling stops once the feature map is 1x1.
class Vgg16Impl : public NetImpl {
 public:
  Vgg16Impl(const ModelSpec& spec, const ActivationFactory& f) : NetImpl(spec) {
    const std::vector<int64_t> cfg{64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
    int64_t in = spec.input_shape[0], h = spec.input_shape[1], w = spec.input_shape[2];
    int64_t block = 1;
    begin_stage("block1");
    for (size_t i = 0; i < cfg.size(); ++i) {
      const int64_t v = cfg[i];
      if (v == 0) {  // 'M': a 2x2 max pool after the previous convolution, while the map is large enough
        if (i + 1 < cfg.size()) begin_stage("block" + std::to_string(++block));
        if (h >= 2 && w >= 2) {
          pool_after_.back() = true;
          h /= 2;
          w /= 2;
        }
        continue;
      }
      const std::string idx = std::to_string(convs_.size());
      convs_.push_back(register_module("conv" + idx, conv3x3(in, v)));
      bns_.push_back(register_module("bn" + idx, nn::BatchNorm2d(v)));
      acts_.push_back(add_site(*this, "act" + idx, "act" + idx, {v, h, w}, f));
      pool_after_.push_back(false);
      in = v;
    }
    fc1_ = register_module("fc1", nn::Linear(in * h * w, 512));
    begin_stage("classifier");
    fc_act_ = add_site(*this, "fc_act", "fc_act", {512}, f);
    fc2_ = register_module("fc2", nn::Linear(512, spec.classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    for (size_t i = 0; i < convs_.size(); ++i) {
      x = acts_[i].forward(bns_[i](i == 0 ? layers::stem_conv2d(*convs_[i], x) : convs_[i](x)));
      if (pool_after_[i]) x = layers::max_pool2(x);
    }
    return fc2_(fc_act_.forward(fc1_(x.flatten(1))));
  }
  GraphSink::Value describe(GraphSink& g, const GraphSink::Value& input) override {
    auto x = input;
    for (size_t i = 0; i < convs_.size(); ++i) {
      const std::string idx = std::to_string(i);
      x = g.activation(g.conv(x, "conv" + idx, *convs_[i], "bn" + idx, bns_[i].get()));
      if (pool_after_[i]) x = g.max_pool(x, 2, "pool" + idx);
    }
    x = g.activation(g.linear(g.flatten(x, "flatten"), "fc1", *fc1_));
    return g.linear(x, "fc2", *fc2_);
  }

 private:
  std::vector<nn::Conv2d> convs_;
  std::vector<nn::BatchNorm2d> bns_;
  std::vector<nn::AnyModule> acts_;
  std::vector<bool> pool_after_;
  nn::Linear fc1_{nullptr}, fc2_{nullptr};
  nn::AnyModule fc_act_;
};


}  // namespace

Net make_vgg16(const ModelSpec& spec, const ActivationFactory& f) { return std::make_shared<Vgg16Impl>(spec, f); }

}  // namespace autorep::trainer::models
