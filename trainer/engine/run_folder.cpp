#include "trainer/engine/run_folder.h"

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <sstream>
#include <stdexcept>

#include "layers/util/atomic_file.h"
#include "layers/util/text.h"
#include "trainer/engine/checkpoint.h"
#include "trainer/engine/distributed.h"

namespace autorep::trainer::engine {

namespace fs = std::filesystem;

nlohmann::json open_run_folder(const Config& config, const RunOptions& options, const std::string& last_path,
                               bool primary, int64_t world) {
  nlohmann::json state;
  if (options.resume) {
    if (!fs::exists(last_path))
      throw std::runtime_error(last_path + ": nothing to resume (no checkpoint in " + options.out_dir + ")");
    state = read_checkpoint_meta(last_path).state;
  } else if (fs::exists(last_path)) {
    throw std::runtime_error(options.out_dir +
                             " already holds a run (checkpoints/last.pt); pass --resume to continue it "
                             "or choose another --out");
  }
  if (primary) {
    fs::create_directories(fs::path(options.out_dir) / "checkpoints");
    util::write_file_atomic((fs::path(options.out_dir) / "config.json").string(), to_json(config).dump(2) + "\n");
  }
  if (world > 1 && config.data.batch_size % world != 0)
    throw std::runtime_error("data.batch_size " + std::to_string(config.data.batch_size) +
                             " is the global batch and must be divisible by WORLD_SIZE " + std::to_string(world));
  dist::barrier();  // every process has seen the folder as it was before this run
  return state;
}

nlohmann::json put_back(const std::string& rollback_path, const std::string& last_path, bool primary) {
  dist::barrier();
  if (primary) {
    util::write_atomically(last_path, [&](const std::string& tmp) {
      fs::copy_file(rollback_path, tmp, fs::copy_options::overwrite_existing);
    });
  }
  dist::barrier();  // every process reads the same last.pt
  return read_checkpoint_meta(last_path).state;
}

std::string done_line(const RunResult& r, const std::string& checkpoints_dir) {
  std::ostringstream done;
  done << "done: best test accuracy " << std::fixed << std::setprecision(2) << 100.0 * r.best_accuracy << "%";
  if (r.best_val_accuracy >= 0) done << " (checkpoint selected on validation accuracy " << 100.0 * r.best_val_accuracy << "%)";
  done << ", ReLUs " << r.kept_relus << "/" << r.total_relus << ", " << std::setprecision(0) << r.seconds
       << " s; checkpoints in " << checkpoints_dir;
  return done.str();
}

std::string stopped_at(int64_t epoch, int64_t step, int64_t steps, const std::string& last_path,
                       const std::string& out_dir) {
  return " after epoch " + std::to_string(epoch + 1) + " step " + std::to_string(step) + " of " +
         std::to_string(steps) + ": " + last_path + " written; continue with: autorep train --out " + out_dir +
         " --resume";
}

nlohmann::json epoch_means(const nlohmann::json& sums, int64_t seen) {
  nlohmann::json means = nlohmann::json::object();
  for (const auto& [name, sum] : sums.items())
    means[name] = sum.get<double>() / static_cast<double>(std::max<int64_t>(1, seen));
  return means;
}

nlohmann::json rollback_record(int64_t rollback, double lr_scale, int64_t from_epoch, int64_t from_step,
                               int64_t back_to_epoch) {
  return {{"type", "rollback"},
          {"rollback", rollback},
          {"diverged_at", {{"epoch", from_epoch + 1}, {"step", from_step + 1}}},
          {"back_to_epoch", back_to_epoch + 1},
          {"lr_scale", lr_scale}};
}

std::string rollback_line(const nlohmann::json& r, int64_t allowed, const std::string& what) {
  return "rollback " + std::to_string(r.at("rollback").get<int64_t>()) + "/" + std::to_string(allowed) + ": " +
         what + "; back to the start of epoch " + std::to_string(r.at("back_to_epoch").get<int64_t>()) +
         " (the end of the last epoch whose validation logits were all finite) with the learning rate x" +
         util::short_number(r.at("lr_scale").get<double>()) + " from here on";
}

}  // namespace autorep::trainer::engine
