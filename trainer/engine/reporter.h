#pragma once
/// Console and log output of a run: a redrawn bar on a terminal, plain periodic lines otherwise.

#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <string>

namespace autorep::trainer::engine {

class Reporter {
 public:
  /// An empty `log_path` writes no log file (the processes of a multi-process run other than rank 0).
  Reporter(const std::string& log_path, bool quiet);

  /// One line on the console and in the log.
  void line(const std::string& text);

  /// Shows progress inside an epoch. On a terminal the bar is redrawn at most ~10 times a
  /// second; otherwise one line is written every `every` steps (and to the log). `extra` (the
  /// method's progress text) is called only when something is shown: it may read the device.
  void step(int64_t epoch, int64_t epochs, int64_t step, int64_t steps, double loss, double samples_per_s,
            double eta_s, const std::function<std::string()>& extra, int64_t every);

  /// 1h02m03s, 4m05s, 6s ("?" when not finite).
  static std::string format_seconds(double s);

 private:
  std::ofstream log_;
  bool quiet_;
  bool tty_;
  bool bar_shown_ = false;
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace autorep::trainer::engine
