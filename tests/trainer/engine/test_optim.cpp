#include "tests/torch_catch.h"

#include <torch/torch.h>

#include <sstream>
#include <vector>

#include "trainer/engine/optim.h"

using namespace autorep::trainer::engine;

namespace {

// Parameters of the shapes a gated model trains (a convolution weight, also in channels_last
// memory, a per-pixel aux, per-channel coefficients, a scalar), float32.
std::vector<torch::Tensor> make_params(int seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> ps = {torch::randn({8, 4, 3, 3}),
                                   torch::randn({8, 4, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast),
                                   torch::randn({4, 7, 7}), torch::randn({16}), torch::randn({})};
  for (auto& p : ps) p.requires_grad_(true);
  return ps;
}

std::vector<ParamGroup> groups_of(const std::vector<torch::Tensor>& ps) {
  // Two groups with their own lr and weight decay, as the search phase has.
  return {ParamGroup{{ps[0], ps[1], ps[2]}, 2e-3, 5e-4}, ParamGroup{{ps[3], ps[4]}, 1e-2, 0.0}};
}

// Gradients that depend on the parameters (so the trajectories would part if an update did).
void set_grads(const std::vector<torch::Tensor>& ps, int step) {
  for (size_t i = 0; i < ps.size(); ++i) {
    torch::NoGradGuard no_grad;
    ps[i].mutable_grad() = (ps[i].sin() * (1.0 + 0.1 * step) + 0.01 * static_cast<double>(i)).detach();
  }
}

// LibTorch's own Adam over the same groups, lr and weight decay as make_optimizer(groups, o).
std::unique_ptr<torch::optim::Adam> reference_adam(const std::vector<ParamGroup>& groups, const OptimOptions& o) {
  std::vector<torch::optim::OptimizerParamGroup> pg;
  for (const auto& g : groups) {
    auto go = std::make_unique<torch::optim::AdamOptions>(g.lr);
    go->betas({o.beta1, o.beta2}).weight_decay(g.weight_decay);
    pg.emplace_back(g.params, std::move(go));
  }
  return std::make_unique<torch::optim::Adam>(pg, torch::optim::AdamOptions(1e-3));
}

double max_diff(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, (a[i] - b[i]).abs().max().item<double>());
  return d;
}

}  // namespace

TEST_CASE("the Adam of make_optimizer follows LibTorch's Adam to float rounding and shares its state format",
          "[optim]") {
  OptimOptions o;
  o.name = "adam";
  o.beta1 = 0.9;
  o.beta2 = 0.999;
  auto mine = make_params(1), ref = make_params(1);
  auto opt = make_optimizer(groups_of(mine), o);
  auto adam = reference_adam(groups_of(ref), o);
  for (int step = 0; step < 20; ++step) {
    set_grads(mine, step);
    set_grads(ref, step);
    opt->step();
    adam->step();
  }
  // Twenty steps of updates ~1e-2 each: float rounding only.
  CHECK(max_diff(mine, ref) < 1e-6);
  CHECK(max_diff(mine, make_params(1)) > 1e-2);  // and they did move
  CHECK(mine[1].is_contiguous(at::MemoryFormat::ChannelsLast));

  // A checkpoint of either loads into the other and continues the same way.
  std::stringstream buffer;
  {
    torch::serialize::OutputArchive archive;
    opt->save(archive);
    archive.save_to(buffer);
  }
  auto resumed = make_params(1);
  for (size_t i = 0; i < resumed.size(); ++i) resumed[i].detach().copy_(mine[i].detach());
  auto plain = reference_adam(groups_of(resumed), o);
  {
    torch::serialize::InputArchive archive;
    archive.load_from(buffer);
    plain->load(archive);
  }
  set_grads(mine, 20);
  set_grads(resumed, 20);
  opt->step();
  plain->step();
  CHECK(max_diff(mine, resumed) < 1e-6);
}

TEST_CASE("the fused Adam hands anything it does not cover to LibTorch's update", "[optim]") {
  OptimOptions o;
  o.name = "adam";
  // A strided view's gradient (not laid out like a dense parameter) and float64.
  auto base = torch::randn({6, 6}, torch::kDouble);
  auto p = base.clone().requires_grad_(true);
  auto q = torch::randn({5}).requires_grad_(true);
  auto opt = make_optimizer({ParamGroup{{p, q}, 1e-2, 0.0}}, o);
  torch::optim::Adam adam({p.detach().clone().requires_grad_(true), q.detach().clone().requires_grad_(true)},
                          torch::optim::AdamOptions(1e-2).betas({o.beta1, o.beta2}));
  auto& refs = adam.param_groups()[0].params();
  for (int step = 0; step < 5; ++step) {
    p.mutable_grad() = (torch::ones({6, 12}, torch::kDouble) * (step + 1)).narrow(1, 0, 6);  // strided
    q.mutable_grad() = torch::full({5}, 0.5 * (step + 1));
    refs[0].mutable_grad() = p.grad().clone();
    refs[1].mutable_grad() = q.grad().clone();
    opt->step();
    adam.step();
  }
  CHECK_FALSE(p.grad().is_contiguous());
  CHECK((p - refs[0]).abs().max().item<double>() < 1e-12);
  CHECK((q - refs[1]).abs().max().item<double>() < 1e-6);
}

TEST_CASE("clip_gradients scales gradients as LibTorch's clip_grad_norm_ does", "[optim]") {
  for (const double max_norm : {0.5, 1e3}) {  // clipped, and left alone
    INFO("max_norm " << max_norm);
    auto mine = make_params(4), ref = make_params(4);
    set_grads(mine, 0);
    set_grads(ref, 0);
    const auto before = mine[0].grad().clone();
    const double norm = clip_gradients(mine, max_norm);
    const double ref_norm = torch::nn::utils::clip_grad_norm_(ref, max_norm);
    CHECK(norm == Approx(ref_norm).epsilon(1e-6));
    for (size_t i = 0; i < mine.size(); ++i) CHECK(torch::allclose(mine[i].grad(), ref[i].grad(), 1e-6, 1e-8));
    CHECK(torch::equal(mine[0].grad(), before) == (max_norm > norm));
  }
  // A parameter without a gradient is skipped; none at all gives 0.
  auto p = torch::zeros({3}, torch::requires_grad());
  CHECK(clip_gradients({p}, 1.0) == 0.0);
}
