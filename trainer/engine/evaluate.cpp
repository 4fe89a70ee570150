#include "trainer/engine/evaluate.h"

#include <torch/torch.h>

#include <cmath>

#include "trainer/engine/device.h"
#include "trainer/engine/distributed.h"

namespace autorep::trainer::engine {

void accumulate(EvalResult& r, const torch::Tensor& logits_in, const torch::Tensor& labels, int64_t classes) {
  torch::NoGradGuard no_grad;
  if (static_cast<int64_t>(r.class_samples.size()) < classes) {
    r.class_samples.resize(classes, 0);
    r.class_correct.resize(classes, 0);
  }
  auto logits = logits_in;
  auto y = labels.to(logits.device(), torch::kLong);
  const int64_t n = y.size(0);
  const auto finite = torch::isfinite(logits).all(1);
  // Counted wrong where not finite: -1 never equals a label.
  const auto pred = torch::where(finite, logits.argmax(1), torch::full_like(y, -1));
  const auto right = pred.eq(y);
  const auto per_class = torch::stack({torch::bincount(y, {}, classes), torch::bincount(y.index({right}), {}, classes)})
                             .to(torch::kCPU, torch::kLong)
                             .contiguous();
  const int64_t* p = per_class.data_ptr<int64_t>();
  for (int64_t c = 0; c < classes; ++c) {
    r.class_samples[c] += p[c];
    r.class_correct[c] += p[classes + c];
    r.correct += p[classes + c];  // every right prediction is of some class
  }
  const int64_t bad = n - finite.sum().item<int64_t>();
  if (bad > 0) {
    logits = logits.index({finite});
    y = y.index({finite});
  }
  r.loss_sum += torch::nn::functional::cross_entropy(
                    logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
  r.nonfinite += bad;
  r.samples += n;
}

void finish(EvalResult& r) {
  const int64_t n = r.samples;
  r.accuracy = n > 0 ? static_cast<double>(r.correct) / n : 0.0;
  r.loss = n > r.nonfinite ? r.loss_sum / (n - r.nonfinite) : (n > 0 ? std::nan("") : 0.0);
}

EvalResult evaluate(models::NetImpl& model, const data::DataSplits& data, const data::Dataset& split,
                    torch::Device device, int64_t batch_size, dist::Group* group) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  EvalResult r;
  const int64_t classes = std::max<int64_t>(data.classes, 1);
  r.class_samples.assign(classes, 0);
  r.class_correct.assign(classes, 0);
  const int64_t n = split.size();
  // With a process group each process evaluates its contiguous share; the sums are combined.
  const int64_t parts = group ? group->size() : 1, part = group ? group->rank() : 0;
  const int64_t first = n * part / parts, last = n * (part + 1) / parts;
  for (int64_t start = first; start < last; start += batch_size) {
    const int64_t end = std::min(last, start + batch_size);
    auto idx = torch::arange(start, end, torch::kLong);
    auto x = in_format_of(model, data::make_batch(data, split, idx, /*train=*/false, 0).to(device));
    accumulate(r, model.forward(x), split.labels.slice(0, start, end), classes);
  }
  model.train(was_training);
  if (group != nullptr) {
    std::vector<double> packed = {r.loss_sum, static_cast<double>(r.correct), static_cast<double>(r.nonfinite),
                                  static_cast<double>(r.samples)};
    for (int64_t c = 0; c < classes; ++c) packed.push_back(static_cast<double>(r.class_samples[c]));
    for (int64_t c = 0; c < classes; ++c) packed.push_back(static_cast<double>(r.class_correct[c]));
    auto sums = torch::tensor(packed, torch::kDouble);
    group->allreduce_sum(sums);
    const auto s = sums.contiguous();
    const double* p = s.data_ptr<double>();
    auto count = [](double v) { return static_cast<int64_t>(v + 0.5); };
    r.loss_sum = p[0];
    r.correct = count(p[1]);
    r.nonfinite = count(p[2]);
    r.samples = count(p[3]);
    for (int64_t c = 0; c < classes; ++c) {
      r.class_samples[c] = count(p[4 + c]);
      r.class_correct[c] = count(p[4 + classes + c]);
    }
  }
  finish(r);
  return r;
}

}  // namespace autorep::trainer::engine
