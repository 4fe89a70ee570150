#pragma once
// Helpers shared by the trainer tests.
#include <filesystem>
#include <string>
#include <unistd.h>

namespace autorep::test {

/// An empty folder under the temp directory, unique per test process.
inline std::filesystem::path fresh_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("autorep-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p;
}

/// Whether the Debian package dataset-fashion-mnist is installed (real-data tests skip otherwise).
inline bool have_fashion_mnist() {
  return std::filesystem::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
}

}  // namespace autorep::test
