#include "trainer/engine/distributed.h"

#include <torch/torch.h>

#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <utility>

#ifdef AUTOREP_WITH_DIST
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef AUTOREP_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif

namespace autorep::trainer::engine::dist {

namespace {

// The value of an integer launch variable, or `fallback` when it is unset.
int64_t env_int(const char* name, int64_t fallback, int64_t min_value) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const std::string s(v);
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || x < min_value)
    throw std::runtime_error(std::string(name) + "=\"" + s + "\": expected an integer >= " +
                             std::to_string(min_value));
  return x;
}

std::shared_ptr<Group>& current_group() {
  static std::shared_ptr<Group> group;
  return group;
}

}  // namespace

LaunchEnv launch_env_from_environment() {
  LaunchEnv e;
  e.world_size = env_int("WORLD_SIZE", 1, 1);
  e.rank = env_int("RANK", 0, 0);
  if (e.rank >= e.world_size)
    throw std::runtime_error("RANK=" + std::to_string(e.rank) + " is not below WORLD_SIZE=" +
                             std::to_string(e.world_size));
  if (e.world_size > 1 && std::getenv("RANK") == nullptr)
    throw std::runtime_error("WORLD_SIZE=" + std::to_string(e.world_size) +
                             " but RANK is not set: start one process per rank with RANK=0.." +
                             std::to_string(e.world_size - 1) + " (scripts/launch.sh does this on one machine)");
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", 1, 1);
  if (const char* a = std::getenv("MASTER_ADDR"); a != nullptr && *a != '\0') e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500, 1);
  if (e.master_port > 65535)
    throw std::runtime_error("MASTER_PORT=" + std::to_string(e.master_port) + ": not a TCP port (1-65535)");
  return e;
}

bool available() {
#ifdef AUTOREP_WITH_DIST
  return true;
#else
  return false;
#endif
}

bool nccl_available() {
#if defined(AUTOREP_WITH_DIST) && defined(AUTOREP_WITH_NCCL)
  return true;
#else
  return false;
#endif
}

Group* current() { return current_group().get(); }
void set_current(std::shared_ptr<Group> group) { current_group() = std::move(group); }
bool is_primary() { return current() == nullptr || current()->rank() == 0; }
void barrier() {
  if (current() != nullptr) current()->barrier();
}

#ifdef AUTOREP_WITH_DIST

namespace {

// One c10d process group. ProcessGroupGloo and ProcessGroupNCCL have the same collective
// calls in LibTorch 1.13 (as ProcessGroups) and 2.x (as Backends), so one template serves both.
template <typename PG>
class C10dGroup : public Group {
 public:
  using WorkPtr = decltype(std::declval<PG&>().allreduce(std::declval<std::vector<at::Tensor>&>()));

  C10dGroup(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<PG> pg, const LaunchEnv& env,
            std::string backend, torch::Device comm_device)
      : store_(std::move(store)), pg_(std::move(pg)), comm_device_(comm_device) {
    rank_ = env.rank;
    size_ = env.world_size;
    local_rank_ = env.local_rank;
    local_size_ = env.local_world_size;
    backend_ = std::move(backend);
  }

  std::unique_ptr<Pending> allreduce_sum_async(torch::Tensor t) override {
    auto work = std::make_unique<Work>();
    work->result = t;
    work->tensors = {on_comm_device(t)};
    work->work = pg_->allreduce(work->tensors);
    return work;
  }

  void allreduce_max(torch::Tensor t) override {
    std::vector<at::Tensor> v{on_comm_device(t)};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::MAX;
    pg_->allreduce(v, o)->wait();
    if (!v[0].is_same(t)) t.copy_(v[0]);
  }

  void broadcast(torch::Tensor t, int64_t root) override {
    std::vector<at::Tensor> v{on_comm_device(t)};
    c10d::BroadcastOptions o;
    o.rootRank = static_cast<int>(root);
    pg_->broadcast(v, o)->wait();
    if (!v[0].is_same(t)) t.copy_(v[0]);
  }

  void barrier() override {
    // An all-reduce rather than c10d's barrier: it behaves the same on every backend. Under NCCL
    // wait() only orders the CUDA stream; reading the sum back to the host blocks this process
    // until every process has reached the barrier (what the callers rely on: rank 0's files are
    // written before the others read them).
    auto one = torch::ones({1}, torch::TensorOptions().dtype(torch::kFloat).device(comm_device_));
    std::vector<at::Tensor> v{one};
    pg_->allreduce(v)->wait();
    const float arrived = v[0].item<float>();
    TORCH_CHECK(static_cast<int64_t>(arrived + 0.5f) == size(), "barrier: ", arrived, " of ", size(),
                " processes arrived");
  }

 private:
  struct Work : Pending {
    torch::Tensor result;
    std::vector<at::Tensor> tensors;
    WorkPtr work;
    void wait() override {
      work->wait();
      if (!tensors[0].is_same(result)) result.copy_(tensors[0]);
    }
  };

  // Gloo reduces CPU tensors (and contiguous ones only); NCCL reduces tensors on this rank's GPU.
  torch::Tensor on_comm_device(const torch::Tensor& t) const {
    if (t.device() == comm_device_ && t.is_contiguous()) return t;
    return t.to(comm_device_).contiguous();
  }

  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<PG> pg_;
  torch::Device comm_device_;
};

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

}  // namespace

std::shared_ptr<Group> join(const LaunchEnv& env, const std::string& backend, std::chrono::seconds timeout) {
  if (backend != "gloo" && backend != "nccl")
    throw std::runtime_error("--dist-backend \"" + backend + "\": expected gloo or nccl");
  if (backend == "nccl" && !nccl_available())
    throw std::runtime_error("--dist-backend nccl: this autorep was built against a LibTorch without NCCL "
                             "(use --dist-backend gloo, or build against a CUDA LibTorch)");
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = static_cast<std::size_t>(env.world_size);
  so.waitWorkers = true;
  so.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (const auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    throw std::runtime_error(
        "rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) + ": rendezvous at " + where +
        (env.rank == 0 ? " (served by this process)" : "") + " failed within " + std::to_string(timeout.count()) +
        " s: " + what +
        " — is every rank started with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, and is the port free "
        "and reachable? (--dist-timeout sets the wait)");
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  if (backend == "gloo") {
    auto opts = c10d::ProcessGroupGloo::Options::create(ms);
    // GLOO_SOCKET_IFNAME picks the network interface, as in PyTorch; a loopback master means
    // every rank runs on this machine.
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0')
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (is_loopback(env.master_addr))
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
    try {
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(env.rank),
                                                       static_cast<int>(env.world_size), opts);
    } catch (const std::exception& e) {
      throw std::runtime_error("rank " + std::to_string(env.rank) + ": Gloo could not connect to its peers via " +
                               where + ": " + e.what());
    }
    return std::make_shared<C10dGroup<c10d::ProcessGroupGloo>>(store, pg, env, backend, torch::kCPU);
  }
#ifdef AUTOREP_WITH_NCCL
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = ms;
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(env.rank),
                                                       static_cast<int>(env.world_size), opts);
  return std::make_shared<C10dGroup<c10d::ProcessGroupNCCL>>(
      store, pg, env, backend, torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank)));
#else
  throw std::runtime_error("--dist-backend nccl: not available in this build");
#endif
}

#else  // !AUTOREP_WITH_DIST

std::shared_ptr<Group> join(const LaunchEnv& env, const std::string&, std::chrono::seconds) {
  throw std::runtime_error("WORLD_SIZE=" + std::to_string(env.world_size) +
                           ": this autorep was built without LibTorch's c10d (install libgloo-dev, "
                           "which the c10d headers need, and rebuild)");
}

#endif

void init_from_environment(const Options& options, const std::string& device) {
  const LaunchEnv env = launch_env_from_environment();
  if (env.world_size <= 1) {
    set_current(nullptr);
    return;
  }
  std::string backend = options.backend;
  if (backend.empty()) {
    const bool cuda = device == "cuda" || (device == "auto" && torch::cuda::is_available());
    backend = cuda ? "nccl" : "gloo";
  }
  if (options.timeout_s <= 0) throw std::runtime_error("--dist-timeout must be > 0 seconds");
  set_current(join(env, backend, std::chrono::seconds(options.timeout_s)));
}

// ---- GradientSync ------------------------------------------------------------------------------

GradientSync::GradientSync(Group& group, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : group_(group), params_(std::move(params)) {
  const size_t n = params_.size();
  bucket_of_.assign(n, 0);
  offset_.assign(n, 0);
  arrived_.assign(n, false);
  // Reverse order: the last layers' gradients are ready first.
  std::vector<std::vector<size_t>> groups;
  int64_t bytes = bucket_bytes;
  std::vector<torch::ScalarType> types;
  for (size_t k = n; k-- > 0;) {
    const auto& p = params_[k];
    const int64_t b = p.numel() * static_cast<int64_t>(p.element_size());
    // A bucket holds one dtype on one device (it is one flat tensor).
    if (groups.empty() || bytes + b > bucket_bytes || p.scalar_type() != types.back() ||
        p.device() != params_[groups.back().front()].device()) {
      groups.emplace_back();
      types.push_back(p.scalar_type());
      bytes = 0;
    }
    groups.back().push_back(k);
    bytes += b;
  }
  buckets_.resize(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    int64_t numel = 0;
    for (size_t k : groups[g]) {
      bucket_of_[k] = g;
      offset_[k] = numel;
      numel += params_[k].numel();
    }
    buckets_[g].members = groups[g];
    buckets_[g].flat = torch::zeros({numel}, params_[groups[g].front()].options().requires_grad(false));
  }
  hooks_.resize(n);
  for (size_t k = 0; k < n; ++k) {
    hooks_[k] = params_[k].register_hook([this, k](torch::Tensor grad) {
      on_gradient(k, grad);
      return torch::Tensor();  // the gradient itself is accumulated unchanged
    });
  }
}

GradientSync::~GradientSync() {
  for (size_t k = 0; k < params_.size(); ++k) params_[k].remove_hook(hooks_[k]);
}

void GradientSync::begin() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::fill(arrived_.begin(), arrived_.end(), false);
  for (auto& b : buckets_) {
    b.pending = static_cast<int64_t>(b.members.size());
    b.work.reset();
  }
  active_ = true;
}

void GradientSync::on_gradient(size_t k, const torch::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!active_) return;
  Bucket& b = buckets_[bucket_of_[k]];
  auto slot = b.flat.slice(0, offset_[k], offset_[k] + params_[k].numel());
  {
    torch::NoGradGuard no_grad;
    if (arrived_[k]) {
      slot.add_(grad.reshape({-1}));  // a second gradient for the same leaf in one backward
      return;
    }
    slot.copy_(grad.reshape({-1}));
  }
  arrived_[k] = true;
  if (--b.pending == 0) launch(b);
}

void GradientSync::launch(Bucket& b) { b.work = group_.allreduce_sum_async(b.flat); }

void GradientSync::finish() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    active_ = false;
    // Parameters without a gradient this step (every process has the same graph, so the same
    // ones are missing everywhere) contribute zeros; the rest of their bucket is still sent.
    for (auto& b : buckets_) {
      if (b.work) continue;
      for (size_t k : b.members)
        if (!arrived_[k]) b.flat.slice(0, offset_[k], offset_[k] + params_[k].numel()).zero_();
      launch(b);
    }
  }
  const double inv = 1.0 / static_cast<double>(group_.size());
  torch::NoGradGuard no_grad;
  for (auto& b : buckets_) {
    b.work->wait();
    b.work.reset();
    b.flat.mul_(inv);
    for (size_t k : b.members) {
      if (!arrived_[k]) continue;
      auto& p = params_[k];
      auto avg = b.flat.slice(0, offset_[k], offset_[k] + p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(avg);
      else
        p.mutable_grad() = avg.clone();
    }
  }
}

}  // namespace autorep::trainer::engine::dist
