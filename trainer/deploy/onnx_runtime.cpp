// OpenCV DNN as the independent runtime of the ONNX export.
#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <stdexcept>

#include "trainer/data/dataset.h"
#include "trainer/deploy/onnx_runtime.h"
#include "trainer/methods/run_model.h"

namespace autorep::trainer::deploy {

struct OpenCvNet::Impl {
  cv::dnn::Net net;
};

OpenCvNet::OpenCvNet(const std::string& path) : impl_(std::make_unique<Impl>()) {
  try {
    impl_->net = cv::dnn::readNetFromONNX(path);
  } catch (const cv::Exception& e) {
    throw std::runtime_error(path + ": OpenCV DNN cannot load it (" + e.what() + ")");
  }
  if (impl_->net.empty()) throw std::runtime_error(path + ": OpenCV DNN cannot load it (empty network)");
  impl_->net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
  impl_->net.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
  cv::setNumThreads(std::max(1, torch::get_num_threads()));
}

OpenCvNet::~OpenCvNet() = default;

torch::Tensor OpenCvNet::forward(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4, "OpenCvNet::forward: expected N x C x H x W, got ", images.sizes());
  torch::Tensor x = images.to(torch::kCPU, torch::kFloat).contiguous();
  const int sizes[4] = {static_cast<int>(x.size(0)), static_cast<int>(x.size(1)), static_cast<int>(x.size(2)),
                        static_cast<int>(x.size(3))};
  cv::Mat blob(4, sizes, CV_32F, x.data_ptr<float>());
  cv::Mat out;
  try {
    impl_->net.setInput(blob);
    out = impl_->net.forward();
  } catch (const cv::Exception& e) {
    throw std::runtime_error(std::string("OpenCV DNN failed to run the graph (") + e.what() + ")");
  }
  const int64_t n = x.size(0);
  if (out.type() != CV_32F || static_cast<int64_t>(out.total()) % std::max<int64_t>(1, n) != 0)
    throw std::runtime_error("OpenCV DNN returned an output of unexpected shape or type");
  cv::Mat c = out.isContinuous() ? out : out.clone();
  return torch::from_blob(c.ptr<float>(), {n, static_cast<int64_t>(c.total()) / n}, torch::kFloat).clone();
}

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

OnnxVerifyResult verify_onnx(const std::string& onnx_path, const std::string& checkpoint, const OnnxVerifyOptions& options) {
  OnnxVerifyResult r;
  methods::LoadedModel lm = methods::load_model(checkpoint);
  lm.model->to(torch::kCPU, torch::kFloat);
  lm.model->eval();
  OpenCvNet onnx(onnx_path);

  data::DataOptions d = data::test_split_options(lm.config.data);
  if (!options.data_path.empty()) d.path = options.data_path;
  if (!options.eval) d.limit_test = options.batch;
  const data::DataSplits data = methods::load_test_split(lm, d);
  const int64_t n = std::min<int64_t>(options.batch, data.test.size());
  if (n <= 0) throw std::runtime_error("verify: the test split is empty");

  torch::NoGradGuard no_grad;
  auto raw = [&](int64_t from, int64_t to) {
    return data.test.images.slice(0, from, to).to(torch::kFloat).div(255.0f);
  };
  auto normalised = [&](int64_t from, int64_t to) {
    return data::make_batch(data, data.test, torch::arange(from, to, torch::kLong), /*train=*/false, 0);
  };
  const torch::Tensor a = lm.model->forward(normalised(0, n)).to(torch::kDouble);
  const torch::Tensor b = onnx.forward(raw(0, n)).to(torch::kDouble);
  r.samples = n;
  if (a.sizes() != b.sizes()) {
    std::ostringstream o;
    o << "the graph's output is " << b.sizes() << ", the checkpoint's " << a.sizes();
    r.problems.push_back(o.str());
    return r;
  }
  r.max_abs_diff = (a - b).abs().max().item<double>();
  r.max_rel_diff = r.max_abs_diff / std::max(1e-30, a.abs().max().item<double>());
  if (!(r.max_rel_diff <= options.tolerance)) {
    std::ostringstream o;
    o << "logits differ by up to " << r.max_abs_diff << " (relative " << r.max_rel_diff << ", tolerance "
      << options.tolerance << ")";
    r.problems.push_back(o.str());
  }
  if (options.eval) {
    const int64_t total = data.test.size(), step = 100;
    int64_t right_t = 0, right_o = 0;
    double ms_t = 0, ms_o = 0;
    for (int64_t from = 0; from < total; from += step) {
      const int64_t to = std::min(total, from + step);
      const torch::Tensor x = normalised(from, to), x01 = raw(from, to);
      auto t0 = std::chrono::steady_clock::now();
      const torch::Tensor pt = lm.model->forward(x).argmax(1);
      ms_t += ms_since(t0);
      t0 = std::chrono::steady_clock::now();
      const torch::Tensor po = onnx.forward(x01).argmax(1);
      ms_o += ms_since(t0);
      const torch::Tensor y = data.test.labels.slice(0, from, to);
      right_t += pt.eq(y).sum().item<int64_t>();
      right_o += po.eq(y).sum().item<int64_t>();
      r.prediction_mismatches += pt.ne(po).sum().item<int64_t>();
    }
    r.eval_samples = total;
    r.accuracy_libtorch = static_cast<double>(right_t) / static_cast<double>(total);
    r.accuracy_onnx = static_cast<double>(right_o) / static_cast<double>(total);
    r.ms_per_image_libtorch = ms_t / static_cast<double>(total);
    r.ms_per_image_onnx = ms_o / static_cast<double>(total);
  }
  r.ok = r.problems.empty();
  return r;
}

}  // namespace autorep::trainer::deploy
