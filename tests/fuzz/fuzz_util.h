#pragma once
// Shared by the libFuzzer targets: every reader of a user file must answer any input with a
// value or a std::exception (its one-line error), never a crash, a hang or a sanitizer report.

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace autorep::fuzz {

/// The input as text.
inline std::string text(const uint8_t* data, size_t size) { return std::string(reinterpret_cast<const char*>(data), size); }

/// The input written to a file of this process (for readers that take a path); removed on exit.
class TempFile {
 public:
  TempFile(const uint8_t* data, size_t size, const std::string& suffix = "") {
    path_ = "/tmp/autorep-fuzz-" + std::to_string(::getpid()) + suffix;
    if (std::FILE* f = std::fopen(path_.c_str(), "wb")) {
      if (size > 0) std::fwrite(data, 1, size, f);
      std::fclose(f);
    }
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace autorep::fuzz
