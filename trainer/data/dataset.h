#pragma once
/// Data sets held in memory: Fashion-MNIST / MNIST (IDX, gzip read directly), CIFAR-10/100
/// binary batches, and image folders in the Tiny-ImageNet layout. Batches are drawn in a seeded
/// order with seeded augmentation, so a run (and a resumed run) sees exactly the same batches.

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace autorep::trainer::data {

/// The `data` config section.
struct DataOptions {
  std::string name = "fashion-mnist";  ///< fashion-mnist | mnist | cifar10 | cifar100 | image-folder
  std::string path;                    ///< folder holding the data set's files ("" = the default for `name`)
  int64_t batch_size = 128;
  int64_t eval_batch_size = 500;
  int64_t crop_padding = -1;  ///< random crop with this zero padding; -1 = data set default, 0 = off
  int flip = -1;              ///< horizontal flip: -1 = data set default (off for digits), 0 off, 1 on
  int64_t image_size = 0;     ///< image-folder only: resize side (0 = keep; all images must agree)
  int64_t limit_train = 0;    ///< use only the first N training samples (0 = all)
  int64_t limit_test = 0;     ///< use only the first N test samples (0 = all)
  /// Training images held out as the validation split (after limit_train); checkpoints are
  /// selected on it. -1: the data set's default (5,000 for the idx and CIFAR sets, a tenth of
  /// the images for image folders, never more than a tenth of the training images);
  /// 0: none (best.pt is then selected on test accuracy).
  int64_t val_split = -1;
  /// Seed of the permutation that picks the validation images: its own key, not train.seed, so a
  /// teacher and the students trained from it at any seed hold out the same images.
  int64_t split_seed = 0;
  /// Named groups of classes whose accuracy is reported (and equalised by search.fairness):
  /// group name -> its classes, by name or label index. Classes no group names form "other".
  /// Empty: every class is its own group.
  std::map<std::string, std::vector<std::string>> groups;
  /// Keeps only this fraction (0, 1] of a class's training images (class name or label index ->
  /// fraction), chosen by a permutation seeded from split_seed, after the validation split is
  /// held out: the imbalanced settings of the fairness studies. The test split is never touched.
  std::map<std::string, double> class_fraction;
};

/// The groups of a data set's classes (data.groups resolved against its class names).
struct ClassGroups {
  std::vector<std::string> names;   ///< one per group: the class names without data.groups
  std::vector<int64_t> of_class;    ///< the group index of each class
  bool by_class = true;             ///< no data.groups: group i is class i
};

/// One split of a data set, held in memory.
struct Dataset {
  torch::Tensor images;  ///< uint8, N x C x H x W
  torch::Tensor labels;  ///< int64, N
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

/// Both splits plus what a model and the batch pipeline need to know.
struct DataSplits {
  std::string name;
  Dataset train;
  Dataset val;   ///< held out of the training images (empty without data.val_split)
  Dataset test;
  int64_t classes = 0;
  /// One per class, in label order (Fashion-MNIST's and CIFAR's label names, an image folder's
  /// folder names, the label index where a data set has none).
  std::vector<std::string> class_names;
  ClassGroups groups;
  std::vector<int64_t> input_shape;  ///< C, H, W
  std::vector<float> mean;           ///< per channel, in [0,1] pixel units
  std::vector<float> std;
  int64_t crop_padding = 0;  ///< resolved augmentation
  bool flip = false;
  /// Training images data.class_fraction removed (0 without it).
  int64_t subsampled = 0;
};

/// The options that load only what the test split needs (autorep eval, verify, an export's
/// accuracy): one training image and no validation split, whatever the run held out.
DataOptions test_split_options(DataOptions options);

/// The label names of a built-in data set ("fashion-mnist", "mnist", "cifar10", "cifar100"),
/// empty for others.
std::vector<std::string> builtin_class_names(const std::string& dataset);
/// The label of a class given by name or by label index; throws naming `what` otherwise.
int64_t resolve_class(const std::string& key, const std::vector<std::string>& names, const std::string& what);
/// data.groups resolved against the class names; throws for an unknown class, a class in two
/// groups, an empty group or a group named "other".
ClassGroups resolve_groups(const std::map<std::string, std::vector<std::string>>& groups,
                           const std::vector<std::string>& class_names);
/// Applies data.class_fraction to `train` (keeping the images' order); returns how many images
/// it removed. Throws for a fraction outside (0, 1] or an unknown class.
int64_t subsample_classes(Dataset& train, const std::map<std::string, double>& fractions,
                          const std::vector<std::string>& class_names, uint64_t seed);

/// Default data folder for a data set name (e.g. /usr/share/datasets/fashion-mnist).
std::string default_data_path(const std::string& name);
/// The data set names `load_dataset` knows.
std::vector<std::string> dataset_names();

/// Loads both splits. Throws std::runtime_error naming the file and what is wrong for a
/// missing, truncated, corrupt or wrong-magic file. Image folders are stored class-interleaved
/// (round robin over the sorted class names, files sorted within a class), so `limit_*` keeps
/// every class; their mean/std are computed from the training images loaded.
/// With a validation split of V images (val_split_size), V training images chosen by a
/// permutation seeded from data.split_seed (the same in every process, every resume and every
/// run at any train.seed) become `val`, the rest stay `train`, both in their original order.
DataSplits load_dataset(const DataOptions& options);

/// The number of validation images `options` hold out of `train_images` training images:
/// val_split itself when >= 0, else the data set's default (see DataOptions::val_split).
int64_t val_split_size(const DataOptions& options, int64_t train_images);

/// Reads an IDX image file (magic 2051, unsigned bytes, 3 dimensions), gzip-compressed or plain
/// (zlib reads both): uint8 N x 1 x H x W. Throws naming the file for a missing file, bad magic,
/// implausible dimensions, a corrupt gzip stream, or data shorter or longer than the header says.
torch::Tensor read_idx_images(const std::string& file);
/// Reads an IDX label file (magic 2049, unsigned bytes, 1 dimension): int64 N, each checked to be
/// in [0, classes).
torch::Tensor read_idx_labels(const std::string& file, int64_t classes);

/// Seeded permutation of [0, n) for one epoch: depends only on (seed, epoch).
torch::Tensor epoch_order(int64_t n, uint64_t seed, int64_t epoch);
/// The augmentation seed of one training batch: independent per (seed, epoch, step), so a
/// resumed run draws exactly the batches it would have.
uint64_t batch_seed(uint64_t seed, int64_t epoch, int64_t step);

/// Builds a normalised float batch (B x C x H x W) from the samples at `indices`.
/// When `train` is true, applies the split's random crop / flip, drawn per sample from
/// (`augment_seed`, the sample's position in the whole batch): the same seed gives the same
/// batch, and a process holding positions [first_position, ...) of a batch split across
/// processes gets exactly those samples of the whole batch.
torch::Tensor make_batch(const DataSplits& data, const Dataset& split, const torch::Tensor& indices,
                         bool train, uint64_t augment_seed, int64_t first_position = 0);

}  // namespace autorep::trainer::data
