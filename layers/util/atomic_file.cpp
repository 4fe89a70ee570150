#include "layers/util/atomic_file.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace autorep::util {

namespace fs = std::filesystem;

std::string temp_path_for(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

void rename_into_place(const std::string& tmp, const std::string& path) {
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw std::runtime_error(path + ": cannot write (" + ec.message() + ")");
  }
}

void write_atomically(const std::string& path, const std::function<void(const std::string& tmp)>& write) {
  const fs::path p(path);
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  const std::string tmp = temp_path_for(path);
  try {
    write(tmp);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  rename_into_place(tmp, path);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  write_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(path + ": cannot open for writing");
    out << text;
    out.flush();
    if (!out) throw std::runtime_error(path + ": write failed");
  });
}

}  // namespace autorep::util
