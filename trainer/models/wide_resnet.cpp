#include <torch/torch.h>

#include <stdexcept>

#include "layers/stem_conv.h"
#include "trainer/models/blocks.h"

namespace autorep::trainer::models {

namespace {

// ---- pre-activation wide block (WRN): conv(relu(bn(conv(relu(bn x))))) + skip.
class WideBlockImpl : public nn::Module {
 public:
  WideBlockImpl(NetImpl& net, const std::string& path, int64_t in, int64_t out, int64_t stride, int64_t h,
                int64_t w, const ActivationFactory& f)
      : path_(path) {
    const int64_t oh = strided(h, stride), ow = strided(w, stride);
    bn1_ = register_module("bn1", nn::BatchNorm2d(in));
    act1_ = net.add_site(*this, "act1", join(path, "act1"), {in, h, w}, f);
    conv1_ = register_module("conv1", conv3x3(in, out, stride));
    bn2_ = register_module("bn2", nn::BatchNorm2d(out));
    act2_ = net.add_site(*this, "act2", join(path, "act2"), {out, oh, ow}, f);
    conv2_ = register_module("conv2", conv3x3(out, out));
    if (stride != 1 || in != out) shortcut_ = register_module("shortcut", conv1x1(in, out, stride));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto o = act1_.forward(bn1_(x));
    auto y = conv2_(act2_.forward(bn2_(conv1_(o))));
    return y + (shortcut_ ? shortcut_(o) : x);
  }
  GraphSink::Value describe(GraphSink& g, const GraphSink::Value& x) {
    const auto o = g.activation(g.batchnorm(x, join(path_, "bn1"), *bn1_));
    auto y = g.activation(g.conv(o, join(path_, "conv1"), *conv1_, join(path_, "bn2"), bn2_.get()));
    y = g.conv(y, join(path_, "conv2"), *conv2_);
    const auto skip = shortcut_ ? g.conv(o, join(path_, "shortcut"), *shortcut_) : x;
    return g.add(y, skip, join(path_, "add"));
  }

 private:
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, shortcut_{nullptr};
  nn::AnyModule act1_, act2_;
  std::string path_;
};
TORCH_MODULE(WideBlock);

// ---- WRN-22-8, pre-activation, no ReLU after the last block (as the ReLU-reduction papers count it).
// Channel counts scale with spec.width; spec.stem_stride lowers the resolution from the stem on.
class WideResNetImpl : public NetImpl {
 public:
  WideResNetImpl(const ModelSpec& spec, const ActivationFactory& f, int64_t depth, int64_t k) : NetImpl(spec) {
    const int64_t n = (depth - 4) / 6;
    const int64_t stem = scaled_width(16, spec.width);
    conv1_ = register_module("conv1", conv3x3(spec.input_shape[0], stem, spec.stem_stride));
    int64_t h = strided(spec.input_shape[1], spec.stem_stride), w = strided(spec.input_shape[2], spec.stem_stride);
    int64_t in = stem;
    const std::vector<int64_t> widths{scaled_width(16 * k, spec.width), scaled_width(32 * k, spec.width),
                                      scaled_width(64 * k, spec.width)};
    for (size_t s = 0; s < widths.size(); ++s) {
      const std::string name = "layer" + std::to_string(s + 1);
      begin_stage(name);
      auto stage = nn::Sequential();
      for (int64_t b = 0; b < n; ++b) {
        const int64_t stride = (b == 0 && s > 0) ? 2 : 1;
        stage->push_back(WideBlock(*this, name + "." + std::to_string(b), in, widths[s], stride, h, w, f));
        h = strided(h, stride);
        w = strided(w, stride);
        in = widths[s];
      }
      stages_.push_back(register_module(name, stage));
    }
    bn_ = register_module("bn", nn::BatchNorm2d(in));
    fc_ = register_module("fc", nn::Linear(in, spec.classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = layers::stem_conv2d(*conv1_, x);
    for (auto& stage : stages_) x = stage->forward(x);
    return fc_(torch::adaptive_avg_pool2d(bn_(x), {1, 1}).flatten(1));
  }
  GraphSink::Value describe(GraphSink& g, const GraphSink::Value& input) override {
    auto x = g.conv(input, "conv1", *conv1_);
    for (auto& stage : stages_)
      for (size_t b = 0; b < stage->size(); ++b) x = std::dynamic_pointer_cast<WideBlockImpl>(stage->ptr(b))->describe(g, x);
    return g.linear(g.global_average_pool(g.batchnorm(x, "bn", *bn_), "pool"), "fc", *fc_);
  }

 private:
  nn::Conv2d conv1_{nullptr};
  std::vector<nn::Sequential> stages_;
  nn::BatchNorm2d bn_{nullptr};
  nn::Linear fc_{nullptr};
};


}  // namespace

Net make_wrn_22_8(const ModelSpec& spec, const ActivationFactory& f) {
  return std::make_shared<WideResNetImpl>(spec, f, 22, 8);
}

}  // namespace autorep::trainer::models
