#include "trainer/engine/reporter.h"

#include <unistd.h>

#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>

namespace autorep::trainer::engine {

using Clock = std::chrono::steady_clock;

Reporter::Reporter(const std::string& log_path, bool quiet) : quiet_(quiet), tty_(!quiet && ::isatty(STDERR_FILENO)) {
  if (!log_path.empty()) log_.open(log_path, std::ios::app);
}

void Reporter::line(const std::string& text) {
  if (!quiet_) {
    if (bar_shown_) std::cerr << "\r\033[K";
    std::cerr << text << std::endl;
    bar_shown_ = false;
  }
  if (log_.is_open()) log_ << text << std::endl;
}

void Reporter::step(int64_t epoch, int64_t epochs, int64_t step, int64_t steps, double loss, double samples_per_s,
          double eta_s, const std::function<std::string()>& extra, int64_t every) {
  const bool shown = tty_ ? (step == steps || Clock::now() - last_draw_ >= std::chrono::milliseconds(100))
                          : every > 0 && (step % every == 0 || step == steps) && (!quiet_ || log_.is_open());
  if (!shown) return;
  std::ostringstream s;
  s << "epoch " << epoch + 1 << "/" << epochs << " step " << step << "/" << steps << " loss " << std::fixed
    << std::setprecision(4) << loss << " " << std::setprecision(0) << samples_per_s << " img/s eta "
    << format_seconds(eta_s);
  const std::string more = extra ? extra() : std::string();
  if (!more.empty()) s << " " << more;
  if (tty_) {
    last_draw_ = Clock::now();
    const int width = 24;
    const int filled = steps > 0 ? static_cast<int>(width * step / steps) : 0;
    std::cerr << "\r\033[K[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << s.str()
              << std::flush;
    bar_shown_ = true;
  } else {
    line(s.str());
  }
}

std::string Reporter::format_seconds(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  std::ostringstream o;
  if (t >= 3600) o << t / 3600 << "h";
  if (t >= 60) o << std::setw(t >= 3600 ? 2 : 1) << std::setfill('0') << (t % 3600) / 60 << "m";
  o << std::setw(t >= 60 ? 2 : 1) << std::setfill('0') << t % 60 << "s";
  return o.str();
}

}  // namespace autorep::trainer::engine
