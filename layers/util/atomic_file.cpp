#include "layers/util/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace autorep::util {

namespace fs = std::filesystem;

std::string temp_path_for(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

namespace {

// fsync of a file or folder by path; false with errno set on failure.
bool sync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return ok;
}

}  // namespace

void rename_into_place(const std::string& tmp, const std::string& path) {
  // The data reaches the disk before the name does: after a power loss the final name holds
  // either the old file or the whole new one, never an empty or partial one.
  if (!sync_path(tmp, O_RDONLY)) {
    const std::string why = std::strerror(errno);
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw std::runtime_error(path + ": cannot write (" + why + ")");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw std::runtime_error(path + ": cannot write (" + ec.message() + ")");
  }
  // The rename itself is durable once the folder is synced (best effort: some file systems
  // refuse to fsync a folder, which loses nothing but the guarantee).
  const fs::path parent = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  sync_path(parent.string(), O_RDONLY | O_DIRECTORY);
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

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_atomically(path, [&](const std::string& tmp) {
    // write(2) rather than a stream, so a full disk or a file-size limit is reported by its
    // errno (ENOSPC, EFBIG, EDQUOT) and not as a stream's failbit.
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error(path + ": cannot write (" + std::strerror(errno) + ")");
    const char* p = bytes.data();
    size_t left = bytes.size();
    while (left > 0) {
      const ssize_t n = ::write(fd, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const std::string why = n < 0 ? std::strerror(errno) : "no progress";
        ::close(fd);
        throw std::runtime_error(path + ": cannot write (" + why + ")");
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
    if (::close(fd) != 0) throw std::runtime_error(path + ": cannot write (" + std::strerror(errno) + ")");
  });
}

void append_line(const std::string& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  out << line << "\n";
  out.flush();
  if (!out) throw std::runtime_error(path + ": cannot write (" + std::strerror(errno) + ")");
}

}  // namespace autorep::util
