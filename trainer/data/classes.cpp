// Class names, class groups (data.groups) and per-class subsampling (data.class_fraction).
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/util/json_check.h"
#include "layers/util/text.h"
#include "trainer/data/dataset.h"

namespace autorep::trainer::data {

std::vector<std::string> builtin_class_names(const std::string& dataset) {
  if (dataset == "fashion-mnist")
    return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
  if (dataset == "mnist") return {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  if (dataset == "cifar10")
    return {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  if (dataset == "cifar100")
    return {"apple",      "aquarium_fish", "baby",         "bear",       "beaver",      "bed",       "bee",
            "beetle",     "bicycle",       "bottle",       "bowl",       "boy",         "bridge",    "bus",
            "butterfly",  "camel",         "can",          "castle",     "caterpillar", "cattle",    "chair",
            "chimpanzee", "clock",         "cloud",        "cockroach",  "couch",       "crab",      "crocodile",
            "cup",        "dinosaur",      "dolphin",      "elephant",   "flatfish",    "forest",    "fox",
            "girl",       "hamster",       "house",        "kangaroo",   "keyboard",    "lamp",      "lawn_mower",
            "leopard",    "lion",          "lizard",       "lobster",    "man",         "maple_tree", "motorcycle",
            "mountain",   "mouse",         "mushroom",     "oak_tree",   "orange",      "orchid",    "otter",
            "palm_tree",  "pear",          "pickup_truck", "pine_tree",  "plain",       "plate",     "poppy",
            "porcupine",  "possum",        "rabbit",       "raccoon",    "ray",         "road",      "rocket",
            "rose",       "sea",           "seal",         "shark",      "shrew",       "skunk",     "skyscraper",
            "snail",      "snake",         "spider",       "squirrel",   "streetcar",   "sunflower", "sweet_pepper",
            "table",      "tank",          "telephone",    "television", "tiger",       "tractor",   "train",
            "trout",      "tulip",         "turtle",       "wardrobe",   "whale",       "willow_tree", "wolf",
            "woman",      "worm"};
  return {};
}

int64_t resolve_class(const std::string& key, const std::vector<std::string>& names, const std::string& what) {
  const auto it = std::find(names.begin(), names.end(), key);
  if (it != names.end()) return it - names.begin();
  // Not a name: a label index (names of digits are their indices, so both agree there).
  char* end = nullptr;
  const long long v = key.empty() ? -1 : std::strtoll(key.c_str(), &end, 10);
  if (end != nullptr && *end == '\0' && v >= 0 && v < static_cast<long long>(names.size())) return v;
  std::vector<std::string> shown(names.begin(), names.begin() + std::min<size_t>(names.size(), 12));
  throw std::runtime_error(what + ": \"" + key + "\" is neither a class name nor a label 0.." +
                           std::to_string(static_cast<int64_t>(names.size()) - 1) + " (classes: " + util::join(shown) +
                           (names.size() > shown.size() ? ", ..." : "") + ")");
}

ClassGroups resolve_groups(const std::map<std::string, std::vector<std::string>>& groups,
                           const std::vector<std::string>& class_names) {
  ClassGroups g;
  const int64_t n = static_cast<int64_t>(class_names.size());
  if (groups.empty()) {
    g.names = class_names;
    for (int64_t c = 0; c < n; ++c) g.of_class.push_back(c);
    return g;
  }
  g.by_class = false;
  g.of_class.assign(n, -1);
  for (const auto& [name, members] : groups) {
    if (name.empty()) throw std::runtime_error("data.groups: a group needs a name");
    if (name == "other") throw std::runtime_error("data.groups: \"other\" is the group of the classes no group names");
    if (members.empty()) throw std::runtime_error("data.groups." + name + ": an empty group");
    const int64_t index = static_cast<int64_t>(g.names.size());
    g.names.push_back(name);
    for (const auto& m : members) {
      const int64_t c = resolve_class(m, class_names, "data.groups." + name);
      if (g.of_class[c] >= 0)
        throw std::runtime_error("data.groups." + name + ": class \"" + class_names[c] + "\" is already in group \"" +
                                 g.names[g.of_class[c]] + "\"");
      g.of_class[c] = index;
    }
  }
  if (std::find(g.of_class.begin(), g.of_class.end(), -1) != g.of_class.end()) {
    const int64_t other = static_cast<int64_t>(g.names.size());
    g.names.push_back("other");
    for (auto& v : g.of_class)
      if (v < 0) v = other;
  }
  return g;
}

int64_t subsample_classes(Dataset& train, const std::map<std::string, double>& fractions,
                          const std::vector<std::string>& class_names, uint64_t seed) {
  if (fractions.empty()) return 0;
  const int64_t classes = static_cast<int64_t>(class_names.size());
  std::vector<double> keep(classes, 1.0);
  for (const auto& [key, f] : fractions) {
    if (!(f > 0.0 && f <= 1.0))
      throw std::runtime_error("data.class_fraction." + key + ": expected a fraction in (0, 1], got " +
                               util::short_number(f));
    keep[resolve_class(key, class_names, "data.class_fraction")] = f;
  }
  // Each class's images in a seeded order (its own stream per class, so one class's fraction
  // does not move another's choice); the first round(f * n) of them stay, at least one.
  const auto labels = train.labels.contiguous();
  const int64_t* y = labels.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> members(classes);
  for (int64_t i = 0; i < train.size(); ++i)
    if (y[i] >= 0 && y[i] < classes) members[y[i]].push_back(i);
  std::vector<int64_t> kept;
  kept.reserve(train.size());
  for (int64_t c = 0; c < classes; ++c) {
    auto& m = members[c];
    if (keep[c] >= 1.0 || m.empty()) {
      kept.insert(kept.end(), m.begin(), m.end());
      continue;
    }
    const int64_t count = std::max<int64_t>(1, std::llround(keep[c] * static_cast<double>(m.size())));
    // Epochs -2, -3, ...: permutations neither a training epoch nor the validation split draws.
    const auto order = epoch_order(static_cast<int64_t>(m.size()), seed, -2 - c);
    const int64_t* o = order.data_ptr<int64_t>();
    for (int64_t i = 0; i < count; ++i) kept.push_back(m[o[i]]);
  }
  std::sort(kept.begin(), kept.end());  // the original order of the images
  const int64_t removed = train.size() - static_cast<int64_t>(kept.size());
  const auto idx = torch::tensor(kept, torch::kLong);
  train.images = train.images.index_select(0, idx);
  train.labels = train.labels.index_select(0, idx);
  return removed;
}

}  // namespace autorep::trainer::data
