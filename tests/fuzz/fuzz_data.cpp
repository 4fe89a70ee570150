// libFuzzer target: the data-set file readers. The first byte picks the reader (IDX images, IDX
// labels (each plain or gzip-compressed), a CIFAR-10 or CIFAR-100 batch file, a JPEG of an image folder); the rest is the file.
#include <torch/torch.h>

#include <exception>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/dataset.h"
#include "trainer/data/image_decode.h"
#include "trainer/data/loaders.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace autorep::trainer::data;
  if (size == 0) return 0;
  const uint8_t kind = data[0] % 5;
  const autorep::fuzz::TempFile file(data + 1, size - 1);
  try {
    switch (kind) {
      case 0: (void)read_idx_images(file.path()); break;
      case 1: (void)read_idx_labels(file.path(), 10); break;
      case 2: (void)read_cifar_files({file.path()}, "train", 1, 10, 0, 0); break;
      case 3: (void)read_cifar_files({file.path()}, "train", 2, 100, 20, 0); break;
      default: (void)resize_bilinear(decode_jpeg(data + 1, size - 1, "fuzz.jpg"), 8, 8); break;
    }
  } catch (const std::exception&) {
  }
  return 0;
}
