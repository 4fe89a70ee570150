#include "trainer/engine/evaluate.h"

#include <torch/torch.h>

#include <cmath>

#include "trainer/engine/distributed.h"

namespace autorep::trainer::engine {

EvalResult evaluate(models::NetImpl& model, const data::DataSplits& data, const data::Dataset& split,
                    torch::Device device, int64_t batch_size, dist::Group* group) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  EvalResult r;
  double loss_sum = 0.0;
  int64_t correct = 0, nonfinite = 0;
  const int64_t n = split.size();
  // With a process group each process evaluates its contiguous share; the sums are combined.
  const int64_t parts = group ? group->size() : 1, part = group ? group->rank() : 0;
  const int64_t first = n * part / parts, last = n * (part + 1) / parts;
  for (int64_t start = first; start < last; start += batch_size) {
    const int64_t end = std::min(last, start + batch_size);
    auto idx = torch::arange(start, end, torch::kLong);
    auto x = data::make_batch(data, split, idx, /*train=*/false, 0).to(device);
    auto y = split.labels.slice(0, start, end).to(device);
    auto logits = model.forward(x);
    const auto finite = torch::isfinite(logits).all(1);
    const int64_t bad = finite.numel() - finite.sum().item<int64_t>();
    if (bad > 0) {
      nonfinite += bad;
      logits = logits.index({finite});
      y = y.index({finite});
    }
    loss_sum += torch::nn::functional::cross_entropy(
                    logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .item<double>();
    correct += logits.argmax(1).eq(y).sum().item<int64_t>();
  }
  model.train(was_training);
  if (group != nullptr) {
    auto sums = torch::tensor({loss_sum, static_cast<double>(correct), static_cast<double>(nonfinite)}, torch::kDouble);
    group->allreduce_sum(sums);
    loss_sum = sums[0].item<double>();
    correct = static_cast<int64_t>(sums[1].item<double>() + 0.5);
    nonfinite = static_cast<int64_t>(sums[2].item<double>() + 0.5);
  }
  r.samples = n;
  r.nonfinite = nonfinite;
  r.accuracy = n > 0 ? static_cast<double>(correct) / n : 0.0;
  r.loss = n > nonfinite ? loss_sum / (n - nonfinite) : (n > 0 ? std::nan("") : 0.0);
  return r;
}

}  // namespace autorep::trainer::engine
