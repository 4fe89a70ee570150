#pragma once
/// The convolution a network's input goes through first: few input channels (an image's 1 or 3).

#include <torch/nn/modules/conv.h>
#include <torch/types.h>

namespace autorep::layers {

/// conv.forward(x), the same output; on the CPU, for a float32/float64 NCHW input with at most
/// 4 channels (groups 1, dilation 1, zero padding), the weight (and bias) gradient comes from a
/// direct loop over the input instead of oneDNN: oneDNN's AVX2 weight gradient pads the input
/// channels to 8, so a 1-channel stem costs it several times its forward (resnet20 or cnn-small
/// at 28x28, batch 128: ~5 ms against ~1 ms forward). Each output channel's gradient is summed
/// by one thread in a fixed order (float64 across images): the same at any thread count. The
/// input gradient, when x needs one, is LibTorch's. Differentiable once (no double backward).
torch::Tensor stem_conv2d(torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

}  // namespace autorep::layers
