#include <torch/torch.h>

#include <stdexcept>

#include "layers/stem_conv.h"
#include "trainer/models/blocks.h"

namespace autorep::trainer::models {

namespace {

// ---- post-activation basic block (ResNet-18 / ResNet-20): relu(bn(conv(relu(bn(conv x)))) + skip).
class BasicBlockImpl : public nn::Module {
 public:
  BasicBlockImpl(NetImpl& net, const std::string& path, int64_t in, int64_t out, int64_t stride,
                 int64_t h, int64_t w, const ActivationFactory& f)
      : path_(path) {
    const int64_t oh = strided(h, stride), ow = strided(w, stride);
    conv1_ = register_module("conv1", conv3x3(in, out, stride));
    bn1_ = register_module("bn1", nn::BatchNorm2d(out));
    act1_ = net.add_site(*this, "act1", join(path, "act1"), {out, oh, ow}, f, Thinning::keep);
    conv2_ = register_module("conv2", conv3x3(out, out));
    bn2_ = register_module("bn2", nn::BatchNorm2d(out));
    if (stride != 1 || in != out) {
      shortcut_ = register_module("shortcut", nn::Sequential(conv1x1(in, out, stride), nn::BatchNorm2d(out)));
    }
    act2_ = net.add_site(*this, "act2", join(path, "act2"), {out, oh, ow}, f, Thinning::drop);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = act1_.forward(bn1_(conv1_(x)));
    y = bn2_(conv2_(y));
    y = y + (shortcut_ ? shortcut_->forward(x) : x);
    return act2_.forward(y);
  }
  GraphSink::Value describe(GraphSink& g, const GraphSink::Value& x) {
    auto y = g.activation(g.conv(x, join(path_, "conv1"), *conv1_, join(path_, "bn1"), bn1_.get()));
    y = g.conv(y, join(path_, "conv2"), *conv2_, join(path_, "bn2"), bn2_.get());
    if (!shortcut_) return g.activation(g.add(y, x, join(path_, "add")));
    const auto conv = std::dynamic_pointer_cast<nn::Conv2dImpl>(shortcut_->ptr(0));
    const auto bn = std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(shortcut_->ptr(1));
    const auto skip = g.conv(x, join(path_, "shortcut.0"), *conv, join(path_, "shortcut.1"), bn.get());
    return g.activation(g.add(y, skip, join(path_, "add")));
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Sequential shortcut_{nullptr};
  nn::AnyModule act1_, act2_;
  std::string path_;
};
TORCH_MODULE(BasicBlock);

// ---- CIFAR ResNets: a 3x3 stem, stages of basic blocks, global average pool, linear. Channel
// counts scale with spec.width; spec.stem_stride lowers the resolution from the stem on.
class ResNetImpl : public NetImpl {
 public:
  ResNetImpl(const ModelSpec& spec, const ActivationFactory& f, int64_t stem_channels, const std::vector<int64_t>& widths,
             const std::vector<int64_t>& blocks, bool stem_relu)
      : NetImpl(spec) {
    const int64_t stem = scaled_width(stem_channels, spec.width);
    conv1_ = register_module("conv1", conv3x3(spec.input_shape[0], stem, spec.stem_stride));
    bn1_ = register_module("bn1", nn::BatchNorm2d(stem));
    int64_t h = strided(spec.input_shape[1], spec.stem_stride), w = strided(spec.input_shape[2], spec.stem_stride);
    begin_stage(stem_relu ? "stem+layer1" : "layer1");
    if (stem_relu) act1_ = add_site(*this, "act1", "act1", {stem, h, w}, f, Thinning::keep);
    int64_t in = stem;
    for (size_t s = 0; s < widths.size(); ++s) {
      const std::string name = "layer" + std::to_string(s + 1);
      if (s > 0) begin_stage(name);
      const int64_t width = scaled_width(widths[s], spec.width);
      auto stage = nn::Sequential();
      for (int64_t b = 0; b < blocks[s]; ++b) {
        const int64_t stride = (b == 0 && s > 0) ? 2 : 1;
        stage->push_back(BasicBlock(*this, name + "." + std::to_string(b), in, width, stride, h, w, f));
        h = strided(h, stride);
        w = strided(w, stride);
        in = width;
      }
      stages_.push_back(register_module(name, stage));
    }
    fc_ = register_module("fc", nn::Linear(in, spec.classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = bn1_(layers::stem_conv2d(*conv1_, x));
    if (!act1_.is_empty()) x = act1_.forward(x);
    for (auto& stage : stages_) x = stage->forward(x);
    return fc_(torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1));
  }
  GraphSink::Value describe(GraphSink& g, const GraphSink::Value& input) override {
    auto x = g.conv(input, "conv1", *conv1_, "bn1", bn1_.get());
    if (!act1_.is_empty()) x = g.activation(x);
    for (auto& stage : stages_)
      for (size_t b = 0; b < stage->size(); ++b) x = std::dynamic_pointer_cast<BasicBlockImpl>(stage->ptr(b))->describe(g, x);
    return g.linear(g.global_average_pool(x, "pool"), "fc", *fc_);
  }

 private:
  nn::Conv2d conv1_{nullptr};
  nn::BatchNorm2d bn1_{nullptr};
  nn::AnyModule act1_;
  std::vector<nn::Sequential> stages_;
  nn::Linear fc_{nullptr};
};


}  // namespace

Net make_resnet18(const ModelSpec& spec, const ActivationFactory& f) {
  return std::make_shared<ResNetImpl>(spec, f, 64, Shape{64, 128, 256, 512}, Shape{2, 2, 2, 2}, spec.stem_relu);
}

Net make_resnet20(const ModelSpec& spec, const ActivationFactory& f) {
  return std::make_shared<ResNetImpl>(spec, f, 16, Shape{16, 32, 64}, Shape{3, 3, 3}, true);
}

}  // namespace autorep::trainer::models
