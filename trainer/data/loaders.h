#pragma once
// The file readers behind the data-set registry (trainer/data/registry.cpp), one file per format.

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/data/dataset.h"

namespace autorep::trainer::data {

/// IDX: the "<prefix>-images-idx3-ubyte" and "-labels-idx1-ubyte" files of a split in `dir`
/// (each .gz or plain), first `limit` samples (0 = all).
Dataset read_idx_split(const std::string& dir, const std::string& prefix, int64_t classes, int64_t limit);

/// CIFAR: records of `label_bytes` label bytes (the last one is the class) then 3x32x32 pixels.
Dataset read_cifar_files(const std::vector<std::string>& files, const std::string& set_name, int64_t label_bytes,
                         int64_t classes, int64_t coarse_classes, int64_t limit);
/// The folder holding the batch files: `path` itself or the archive's sub-folder inside it.
std::string find_cifar_dir(const std::string& path, const std::string& probe, const std::string& subdir,
                           const std::string& set_name, const std::string& expected);
/// `dir`/`name` for each name, each of which must exist.
std::vector<std::string> existing_files(const std::string& dir, const std::vector<std::string>& names);

/// Image folders in the Tiny-ImageNet layout: train/<class>/**.JPEG and val/ (see dataset.h).
void load_image_folder(const DataOptions& options, const std::string& path, DataSplits& out);

}  // namespace autorep::trainer::data
