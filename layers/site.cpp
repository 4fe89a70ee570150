#include "layers/site.h"

#include <torch/torch.h>

#include <stdexcept>

namespace autorep::layers {

int64_t Site::elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

const ActivationSite& Site::activation() const {
  auto* a = dynamic_cast<const ActivationSite*>(module.get());
  TORCH_INTERNAL_ASSERT(a != nullptr, "site ", name, " holds a module that is not an activation site");
  return *a;
}

ReluSiteImpl::ReluSiteImpl(std::vector<int64_t> shape) : shape_(std::move(shape)) {}

torch::Tensor ReluSiteImpl::forward(const torch::Tensor& x) { return torch::relu(x); }

int64_t ReluSiteImpl::kept_relus() const { return total_relus(); }

int64_t ReluSiteImpl::total_relus() const {
  int64_t n = 1;
  for (auto d : shape_) n *= d;
  return n;
}

ActivationFactory relu_factory() {
  return [](const std::string&, const std::vector<int64_t>& shape) {
    return torch::nn::AnyModule(ReluSite(shape));
  };
}

int64_t kept_relus(const std::vector<Site>& sites) {
  int64_t n = 0;
  for (const auto& s : sites) n += s.activation().kept_relus();
  return n;
}

int64_t total_relus(const std::vector<Site>& sites) {
  int64_t n = 0;
  for (const auto& s : sites) n += s.activation().total_relus();
  return n;
}

}  // namespace autorep::layers
