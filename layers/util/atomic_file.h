#pragma once
/// Files that must never be half-written (configs, results, exports, sweep tables, checkpoints):
/// written under a temporary name in the same folder, then renamed into place.

#include <functional>
#include <string>

namespace autorep::util {

/// The temporary name `path` is written under before the rename (unique per process).
std::string temp_path_for(const std::string& path);

/// Moves a finished temporary file into place; on failure removes it and throws naming `path`.
void rename_into_place(const std::string& tmp, const std::string& path);

/// Writes `bytes` to `path` atomically, creating the parent folders; a write error (full disk,
/// file-size limit, no permission) throws "<path>: cannot write (<reason>)" and leaves the old
/// file under `path` as it was, with no temporary file.
void write_file_atomic(const std::string& path, const std::string& bytes);

/// Appends `line` and a newline to `path` (log and metrics files, which only grow); a write
/// error throws "<path>: cannot write (<reason>)".
void append_line(const std::string& path, const std::string& line);

/// Calls `write(tmp)` to produce the file under its temporary name, then renames it into place
/// (the temporary file is removed when `write` throws).
void write_atomically(const std::string& path, const std::function<void(const std::string& tmp)>& write);

}  // namespace autorep::util
