#include "trainer/models.h"

#include <torch/torch.h>

#include <sstream>
#include <stdexcept>

namespace autorep::trainer {

namespace nn = torch::nn;
using layers::ActivationFactory;
using Shape = std::vector<int64_t>;

torch::nn::AnyModule NetImpl::add_site(torch::nn::Module& parent, const std::string& local_name,
                                       const std::string& path, const Shape& shape,
                                       const ActivationFactory& factory) {
  torch::nn::AnyModule act = factory(path, shape);
  parent.register_module(local_name, act.ptr());
  sites_.push_back(layers::Site{path, shape, act.ptr()});
  return act;
}

namespace {

nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
}
nn::Conv2d conv1x1(int64_t in, int64_t out, int64_t stride = 1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false));
}
int64_t strided(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }
std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }

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

 private:
  nn::Linear fc1_{nullptr}, fc2_{nullptr}, fc3_{nullptr};
  torch::nn::AnyModule act1_, act2_;
};

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
    x = torch::max_pool2d(act1_.forward(bn1_(conv1_(x))), 2);
    x = torch::max_pool2d(act2_.forward(bn2_(conv2_(x))), 2);
    x = act3_.forward(fc1_(x.flatten(1)));
    return fc2_(x);
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Linear fc1_{nullptr}, fc2_{nullptr};
  nn::AnyModule act1_, act2_, act3_;
};

// ---- post-activation basic block (ResNet-18 / ResNet-20): relu(bn(conv(relu(bn(conv x)))) + skip).
class BasicBlockImpl : public nn::Module {
 public:
  BasicBlockImpl(NetImpl& net, const std::string& path, int64_t in, int64_t out, int64_t stride,
                 int64_t h, int64_t w, const ActivationFactory& f) {
    const int64_t oh = strided(h, stride), ow = strided(w, stride);
    conv1_ = register_module("conv1", conv3x3(in, out, stride));
    bn1_ = register_module("bn1", nn::BatchNorm2d(out));
    act1_ = net.add_site(*this, "act1", join(path, "act1"), {out, oh, ow}, f);
    conv2_ = register_module("conv2", conv3x3(out, out));
    bn2_ = register_module("bn2", nn::BatchNorm2d(out));
    if (stride != 1 || in != out) {
      shortcut_ = register_module("shortcut", nn::Sequential(conv1x1(in, out, stride), nn::BatchNorm2d(out)));
    }
    act2_ = net.add_site(*this, "act2", join(path, "act2"), {out, oh, ow}, f);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = act1_.forward(bn1_(conv1_(x)));
    y = bn2_(conv2_(y));
    y = y + (shortcut_ ? shortcut_->forward(x) : x);
    return act2_.forward(y);
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Sequential shortcut_{nullptr};
  nn::AnyModule act1_, act2_;
};
TORCH_MODULE(BasicBlock);

// ---- CIFAR ResNets: a 3x3 stem, stages of basic blocks, global average pool, linear.
class ResNetImpl : public NetImpl {
 public:
  ResNetImpl(const ModelSpec& spec, const ActivationFactory& f, int64_t stem, const std::vector<int64_t>& widths,
             const std::vector<int64_t>& blocks, bool stem_relu)
      : NetImpl(spec) {
    int64_t h = spec.input_shape[1], w = spec.input_shape[2];
    conv1_ = register_module("conv1", conv3x3(spec.input_shape[0], stem));
    bn1_ = register_module("bn1", nn::BatchNorm2d(stem));
    if (stem_relu) act1_ = add_site(*this, "act1", "act1", {stem, h, w}, f);
    int64_t in = stem;
    for (size_t s = 0; s < widths.size(); ++s) {
      const std::string name = "layer" + std::to_string(s + 1);
      auto stage = nn::Sequential();
      for (int64_t b = 0; b < blocks[s]; ++b) {
        const int64_t stride = (b == 0 && s > 0) ? 2 : 1;
        stage->push_back(BasicBlock(*this, name + "." + std::to_string(b), in, widths[s], stride, h, w, f));
        h = strided(h, stride);
        w = strided(w, stride);
        in = widths[s];
      }
      stages_.push_back(register_module(name, stage));
    }
    fc_ = register_module("fc", nn::Linear(in, spec.classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = bn1_(conv1_(x));
    if (!act1_.is_empty()) x = act1_.forward(x);
    for (auto& stage : stages_) x = stage->forward(x);
    return fc_(torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1));
  }

 private:
  nn::Conv2d conv1_{nullptr};
  nn::BatchNorm2d bn1_{nullptr};
  nn::AnyModule act1_;
  std::vector<nn::Sequential> stages_;
  nn::Linear fc_{nullptr};
};

// ---- pre-activation wide block (WRN): conv(relu(bn(conv(relu(bn x))))) + skip.
class WideBlockImpl : public nn::Module {
 public:
  WideBlockImpl(NetImpl& net, const std::string& path, int64_t in, int64_t out, int64_t stride, int64_t h,
                int64_t w, const ActivationFactory& f) {
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

 private:
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr};
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, shortcut_{nullptr};
  nn::AnyModule act1_, act2_;
};
TORCH_MODULE(WideBlock);

// ---- WRN-22-8, pre-activation, no ReLU after the last block (as the ReLU-reduction papers count it).
class WideResNetImpl : public NetImpl {
 public:
  WideResNetImpl(const ModelSpec& spec, const ActivationFactory& f, int64_t depth, int64_t k) : NetImpl(spec) {
    const int64_t n = (depth - 4) / 6;
    int64_t h = spec.input_shape[1], w = spec.input_shape[2];
    conv1_ = register_module("conv1", conv3x3(spec.input_shape[0], 16));
    int64_t in = 16;
    const std::vector<int64_t> widths{16 * k, 32 * k, 64 * k};
    for (size_t s = 0; s < widths.size(); ++s) {
      const std::string name = "layer" + std::to_string(s + 1);
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
    x = conv1_(x);
    for (auto& stage : stages_) x = stage->forward(x);
    return fc_(torch::adaptive_avg_pool2d(bn_(x), {1, 1}).flatten(1));
  }

 private:
  nn::Conv2d conv1_{nullptr};
  std::vector<nn::Sequential> stages_;
  nn::BatchNorm2d bn_{nullptr};
  nn::Linear fc_{nullptr};
};

// ---- VGG-16 with batch norm (CIFAR variant); pooling stops once the feature map is 1x1.
class Vgg16Impl : public NetImpl {
 public:
  Vgg16Impl(const ModelSpec& spec, const ActivationFactory& f) : NetImpl(spec) {
    const std::vector<int64_t> cfg{64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
    int64_t in = spec.input_shape[0], h = spec.input_shape[1], w = spec.input_shape[2];
    for (int64_t v : cfg) {
      if (v == 0) {  // 'M': a 2x2 max pool after the previous convolution, while the map is large enough
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
    fc_act_ = add_site(*this, "fc_act", "fc_act", {512}, f);
    fc2_ = register_module("fc2", nn::Linear(512, spec.classes));
  }
  torch::Tensor forward(torch::Tensor x) override {
    for (size_t i = 0; i < convs_.size(); ++i) {
      x = acts_[i].forward(bns_[i](convs_[i](x)));
      if (pool_after_[i]) x = torch::max_pool2d(x, 2);
    }
    return fc2_(fc_act_.forward(fc1_(x.flatten(1))));
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

std::vector<std::string> model_names() { return {"mlp", "cnn-small", "resnet18", "resnet20", "wrn-22-8", "vgg16"}; }

Net build_model(const ModelSpec& spec, const ActivationFactory& factory) {
  if (spec.input_shape.size() != 3 || spec.input_shape[0] <= 0 || spec.input_shape[1] <= 0 ||
      spec.input_shape[2] <= 0)
    throw std::runtime_error("model " + spec.name + ": input shape must be C x H x W with positive sizes");
  if (spec.classes < 2) throw std::runtime_error("model " + spec.name + ": needs at least 2 classes");
  if (spec.name == "mlp") return std::make_shared<MlpImpl>(spec, factory);
  if (spec.name == "cnn-small") {
    if (spec.input_shape[1] < 4 || spec.input_shape[2] < 4)
      throw std::runtime_error("model cnn-small: input must be at least 4x4");
    return std::make_shared<CnnSmallImpl>(spec, factory);
  }
  if (spec.name == "resnet18")
    return std::make_shared<ResNetImpl>(spec, factory, 64, Shape{64, 128, 256, 512}, Shape{2, 2, 2, 2}, spec.stem_relu);
  if (spec.name == "resnet20")
    return std::make_shared<ResNetImpl>(spec, factory, 16, Shape{16, 32, 64}, Shape{3, 3, 3}, true);
  if (spec.name == "wrn-22-8") return std::make_shared<WideResNetImpl>(spec, factory, 22, 8);
  if (spec.name == "vgg16") return std::make_shared<Vgg16Impl>(spec, factory);
  std::string names;
  for (const auto& n : model_names()) names += (names.empty() ? "" : ", ") + n;
  throw std::runtime_error("unknown model \"" + spec.name + "\" (known: " + names + ")");
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, 'x')) {
    try {
      size_t used = 0;
      const long long v = std::stoll(part, &used);
      if (used != part.size() || v <= 0) throw std::invalid_argument(part);
      shape.push_back(v);
    } catch (const std::exception&) {
      throw std::runtime_error("malformed shape \"" + text + "\": expected CxHxW with positive integers, e.g. 3x32x32");
    }
  }
  if (shape.size() != 3)
    throw std::runtime_error("malformed shape \"" + text + "\": expected CxHxW, e.g. 3x32x32");
  return shape;
}

}  // namespace autorep::trainer
