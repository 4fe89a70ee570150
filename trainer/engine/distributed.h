#pragma once
/// Data-parallel training over LibTorch's c10d process groups (Gloo on CPUs, NCCL on GPUs).
///
/// A run is started as one process per device with the variables every PyTorch launcher sets:
/// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (scripts/launch.sh does it for one
/// machine). The processes meet at a TCPStore on MASTER_ADDR:MASTER_PORT, each trains on its
/// share of every global batch, and gradients are summed by all-reduce before every optimiser
/// step, so all processes hold the same weights, aux values and masks.

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace autorep::trainer::engine::dist {

/// The launch variables of this process.
struct LaunchEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  int64_t local_world_size = 1;  ///< processes on this machine (LOCAL_WORLD_SIZE; for thread counts)
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
};

/// Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. With
/// WORLD_SIZE unset the run is a single process. A malformed or inconsistent value is an error
/// that names the variable.
LaunchEnv launch_env_from_environment();

/// Whether this build includes c10d (it needs the Gloo headers of Debian's libgloo-dev).
bool available();
/// Whether this build can use the NCCL backend (a CUDA LibTorch with NCCL).
bool nccl_available();

/// An asynchronous collective in flight.
class Pending {
 public:
  virtual ~Pending() = default;
  /// Blocks until the collective has finished (its tensor then holds the result).
  virtual void wait() = 0;
};

/// The process group of a data-parallel run.
class Group {
 public:
  virtual ~Group() = default;
  int64_t rank() const { return rank_; }
  int64_t size() const { return size_; }
  int64_t local_rank() const { return local_rank_; }
  /// Processes of this group on this machine (LOCAL_WORLD_SIZE).
  int64_t local_size() const { return local_size_; }
  const std::string& backend() const { return backend_; }

  /// Starts summing `t` in place across all processes.
  virtual std::unique_ptr<Pending> allreduce_sum_async(torch::Tensor t) = 0;
  void allreduce_sum(torch::Tensor t) { allreduce_sum_async(std::move(t))->wait(); }
  /// Element-wise maximum across processes, in place.
  virtual void allreduce_max(torch::Tensor t) = 0;
  /// Copies `t` of process `root` into `t` of every process.
  virtual void broadcast(torch::Tensor t, int64_t root) = 0;
  /// Returns once every process has called it.
  virtual void barrier() = 0;

 protected:
  int64_t rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  std::string backend_;
};

/// Joins the process group of `env` with `backend` ("gloo" or "nccl"): a TCPStore rendezvous at
/// MASTER_ADDR:MASTER_PORT (served by rank 0) that fails with a clear error when not every
/// process has arrived within `timeout`; the same timeout bounds every later collective.
std::shared_ptr<Group> join(const LaunchEnv& env, const std::string& backend, std::chrono::seconds timeout);

/// The group this process trains in; null in a single-process run.
Group* current();
/// Sets (or with null clears) the group of this process.
void set_current(std::shared_ptr<Group> group);
/// Whether this process writes files and prints progress: rank 0, or any single process.
bool is_primary();
/// Waits for every process of the current group (nothing in a single process).
void barrier();

/// Command-line settings of a distributed run.
struct Options {
  std::string backend;  ///< "gloo" | "nccl" | "" (nccl for CUDA devices, else gloo)
  int64_t timeout_s = 300;
};
/// For `autorep train` and `autorep sweep`: joins the group described by the environment when
/// WORLD_SIZE > 1 (and makes it current); otherwise does nothing. `device` is the configured
/// device ("auto" | "cpu" | "cuda"), used to choose the default backend.
void init_from_environment(const Options& options, const std::string& device);

/// Sums gradients across processes and divides by the process count, in buckets of about
/// `bucket_bytes` that are sent while backward is still running: each parameter's gradient
/// hook copies the gradient into its bucket, and a full bucket starts its all-reduce at once.
/// Buckets follow the reverse parameter order, the order backward produces gradients in.
class GradientSync {
 public:
  GradientSync(Group& group, std::vector<torch::Tensor> params, int64_t bucket_bytes = 25 << 20);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  /// Call before backward.
  void begin();
  /// Call after backward: sends what is left, waits for every bucket and writes the averaged
  /// gradients into the parameters' .grad (a parameter no process had a gradient for keeps none).
  void finish();
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  struct Bucket {
    std::vector<size_t> members;  ///< indices into params_
    torch::Tensor flat;
    int64_t pending = 0;          ///< members whose gradient has not arrived this step
    std::unique_ptr<Pending> work;
  };
  void on_gradient(size_t param, const torch::Tensor& grad);
  void launch(Bucket& b);

  Group& group_;
  std::vector<torch::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<int64_t> offset_;
  std::vector<bool> arrived_;
  std::vector<unsigned> hooks_;
  std::vector<Bucket> buckets_;
  std::mutex mutex_;
  bool active_ = false;
};

}  // namespace autorep::trainer::engine::dist
