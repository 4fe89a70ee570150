#include "tests/torch_catch.h"
#include <zlib.h>

#include "trainer/data/dataset.h"
#include "trainer/data/image_decode.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace autorep::trainer;
using namespace autorep::trainer::data;
namespace fs = std::filesystem;

namespace {

const char* kFashionDir = "/usr/share/datasets/fashion-mnist";

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("autorep_test_data_" + std::to_string(rd()) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

using Bytes = std::vector<uint8_t>;

void write_file(const std::string& file, const Bytes& bytes) {
  fs::create_directories(fs::path(file).parent_path());
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Bytes read_file(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_gz(const std::string& file, const Bytes& bytes) {
  gzFile f = gzopen(file.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  gzclose(f);
}

void put_u32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

// Image i has pixel (y, x) = (i * 7 + y * 3 + x) % 256.
Bytes idx_images(int n, int h, int w, uint32_t magic = 2051) {
  Bytes b;
  put_u32(b, magic);
  put_u32(b, n);
  put_u32(b, h);
  put_u32(b, w);
  for (int i = 0; i < n; ++i)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) b.push_back(static_cast<uint8_t>((i * 7 + y * 3 + x) % 256));
  return b;
}

Bytes idx_labels(int n, uint32_t magic = 2049) {
  Bytes b;
  put_u32(b, magic);
  put_u32(b, n);
  for (int i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(i % 10));
  return b;
}

// A complete (tiny) MNIST-style folder.
void write_idx_set(const TempDir& dir, bool gz, int n_train = 20, int n_test = 6) {
  auto put = [&](const std::string& name, const Bytes& b) {
    if (gz) write_gz(dir / (name + ".gz"), b);
    else write_file(dir / name, b);
  };
  put("train-images-idx3-ubyte", idx_images(n_train, 28, 28));
  put("train-labels-idx1-ubyte", idx_labels(n_train));
  put("t10k-images-idx3-ubyte", idx_images(n_test, 28, 28));
  put("t10k-labels-idx1-ubyte", idx_labels(n_test));
}

// The readers' tests look at every training image: no validation split.
DataOptions options_for(const std::string& name, const std::string& path) {
  DataOptions o;
  o.name = name;
  o.path = path;
  o.val_split = 0;
  return o;
}

DataOptions no_split() {
  DataOptions o;
  o.val_split = 0;
  return o;
}

// CIFAR record: label bytes then R, G, B planes; pixel value = (i + c * 50 + y + x) % 256.
Bytes cifar_records(const std::vector<std::vector<uint8_t>>& labels, int first = 0) {
  Bytes b;
  for (size_t r = 0; r < labels.size(); ++r) {
    for (uint8_t l : labels[r]) b.push_back(l);
    const int i = first + static_cast<int>(r);
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x) b.push_back(static_cast<uint8_t>((i + c * 50 + y + x) % 256));
  }
  return b;
}

void write_solid_jpeg(const std::string& file, int h, int w, uint8_t r, uint8_t g, uint8_t b) {
  fs::create_directories(fs::path(file).parent_path());
  Bytes px;
  for (int i = 0; i < h * w; ++i) {
    px.push_back(r);
    px.push_back(g);
    px.push_back(b);
  }
  write_jpeg_file(file, px.data(), h, w, 3, 100);
}

DataSplits synthetic_splits(int64_t n, int64_t c, int64_t h, int64_t w, int64_t pad, bool flip) {
  DataSplits d;
  d.name = "synthetic";
  d.train.images = torch::randint(0, 256, {n, c, h, w}, torch::kUInt8);
  d.train.labels = torch::zeros({n}, torch::kLong);
  d.test = d.train;
  d.classes = 1;
  d.input_shape = {c, h, w};
  for (int64_t k = 0; k < c; ++k) {
    d.mean.push_back(0.25f + 0.1f * k);
    d.std.push_back(0.5f - 0.1f * k);
  }
  d.crop_padding = pad;
  d.flip = flip;
  return d;
}

}  // namespace

TEST_CASE("load_dataset reads the real Fashion-MNIST from .gz", "[data][idx]") {
  if (!fs::exists(fs::path(kFashionDir) / "train-images-idx3-ubyte.gz")) {
    WARN("skipped: " << kFashionDir << " is missing (apt-get install dataset-fashion-mnist)");
    return;
  }
  const DataSplits d = load_dataset(no_split());
  CHECK(d.name == "fashion-mnist");
  CHECK(d.classes == 10);
  CHECK(d.train.size() == 60000);
  CHECK(d.test.size() == 10000);
  CHECK(d.train.images.sizes() == torch::IntArrayRef({60000, 1, 28, 28}));
  CHECK(d.test.images.sizes() == torch::IntArrayRef({10000, 1, 28, 28}));
  CHECK(d.train.images.scalar_type() == torch::kUInt8);
  CHECK(d.train.labels.scalar_type() == torch::kLong);
  CHECK((d.input_shape == std::vector<int64_t>{1, 28, 28}));
  CHECK(d.train.labels.min().item<int64_t>() == 0);
  CHECK(d.train.labels.max().item<int64_t>() == 9);
  CHECK(d.test.labels.min().item<int64_t>() == 0);
  CHECK(d.test.labels.max().item<int64_t>() == 9);
  // Fashion-MNIST is balanced: 6000 / 1000 per class.
  CHECK(torch::equal(torch::bincount(d.train.labels), torch::full({10}, 6000, torch::kLong)));
  CHECK(torch::equal(torch::bincount(d.test.labels), torch::full({10}, 1000, torch::kLong)));
  CHECK(d.train.labels[0].item<int64_t>() == 9);  // the first training item is an ankle boot
  // The published normalisation constants are the statistics of these pixels.
  const auto pixels = d.train.images.to(torch::kFloat) / 255.0;
  CHECK(pixels.mean().item<float>() == Approx(0.2860).margin(5e-4));
  CHECK(pixels.std().item<float>() == Approx(0.3530).margin(5e-4));
  CHECK(d.mean == std::vector<float>{0.2860f});
  CHECK(d.std == std::vector<float>{0.3530f});
  CHECK(d.crop_padding == 2);
  CHECK(d.flip);

  DataOptions limited = no_split();
  limited.limit_train = 1000;
  limited.limit_test = 100;
  limited.flip = 0;
  limited.crop_padding = 0;
  const DataSplits l = load_dataset(limited);
  CHECK(l.train.size() == 1000);
  CHECK(l.test.size() == 100);
  CHECK(torch::equal(l.train.images, d.train.images.narrow(0, 0, 1000)));
  CHECK(!l.flip);
  CHECK(l.crop_padding == 0);
}

TEST_CASE("a truncated copy of the real training images names the file", "[data][idx]") {
  if (!fs::exists(fs::path(kFashionDir) / "train-images-idx3-ubyte.gz")) {
    WARN("skipped: " << kFashionDir << " is missing");
    return;
  }
  TempDir dir;
  for (const char* name : {"train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}) {
    fs::copy_file(fs::path(kFashionDir) / name, dir.path / name);
  }
  Bytes head = read_file((fs::path(kFashionDir) / "train-images-idx3-ubyte.gz").string());
  head.resize(3000);
  write_file(dir / "train-images-idx3-ubyte.gz", head);
  try {
    load_dataset(options_for("fashion-mnist", dir.path.string()));
    FAIL("no error for a truncated file");
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    CHECK_THAT(m, Catch::Contains("train-images-idx3-ubyte.gz"));
    CHECK_THAT(m, Catch::Contains("truncated: expected 47040016 bytes of image data"));
  }
}

TEST_CASE("IDX files round-trip gzip-compressed and plain", "[data][idx]") {
  for (bool gz : {true, false}) {
    TempDir dir;
    write_idx_set(dir, gz);
    DataOptions o = options_for("mnist", dir.path.string());
    const DataSplits d = load_dataset(o);
    CHECK(d.train.size() == 20);
    CHECK(d.test.size() == 6);
    CHECK((d.input_shape == std::vector<int64_t>{1, 28, 28}));
    CHECK(d.train.images[3][0][2][5].item<int>() == (3 * 7 + 2 * 3 + 5) % 256);
    CHECK(d.train.labels[13].item<int64_t>() == 3);
    CHECK(d.mean == std::vector<float>{0.1307f});
    CHECK(!d.flip);  // digits are not mirror-symmetric
    CHECK(d.crop_padding == 2);
    o.limit_train = 5;
    CHECK(load_dataset(o).train.size() == 5);
  }
}

TEST_CASE("truncated IDX data is an error naming the file", "[data][idx]") {
  for (bool gz : {true, false}) {
    TempDir dir;
    Bytes images = idx_images(100, 28, 28);
    images.resize(images.size() - 10);
    const std::string file = dir / (gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte");
    if (gz) write_gz(file, images);
    else write_file(file, images);
    CHECK_THROWS_WITH(read_idx_images(file), Catch::Contains(file) && Catch::Contains("truncated") &&
                                                 Catch::Contains("expected 78416 bytes"));
  }
  TempDir dir;
  // A gzip stream cut off in the middle (incompressible pixels keep the stream long).
  Bytes images = idx_images(100, 28, 28);
  std::mt19937 rng(1);
  for (size_t i = 16; i < images.size(); ++i) images[i] = static_cast<uint8_t>(rng());
  write_gz(dir / "full.gz", images);
  Bytes gz = read_file(dir / "full.gz");
  gz.resize(3000);
  write_file(dir / "train-images-idx3-ubyte.gz", gz);
  CHECK_THROWS_WITH(read_idx_images(dir / "train-images-idx3-ubyte.gz"),
                    Catch::Contains("train-images-idx3-ubyte.gz") && Catch::Contains("truncated"));
  // A header that promises far more than the file holds is refused before anything is allocated
  // (found by tests/fuzz/fuzz_data: 838,860,802 images of 3x3 in a 36-byte file).
  Bytes huge{0, 0, 8, 3, 0x32, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3, 1, 2, 3};
  write_file(dir / "huge", huge);
  CHECK_THROWS_WITH(read_idx_images(dir / "huge"), Catch::Contains("huge") && Catch::Contains("truncated") &&
                                                       Catch::Contains("more than the file can hold"));
  write_gz(dir / "huge.gz", huge);
  CHECK_THROWS_WITH(read_idx_images(dir / "huge.gz"), Catch::Contains("more than the file can hold"));
  // Header cut short.
  write_file(dir / "short", Bytes{0, 0, 8, 3, 0, 0});
  CHECK_THROWS_WITH(read_idx_images(dir / "short"), Catch::Contains("short") && Catch::Contains("truncated"));
}

TEST_CASE("wrong IDX magic is an error naming the file and the magic", "[data][idx]") {
  for (bool gz : {true, false}) {
    TempDir dir;
    const std::string file = dir / "train-images-idx3-ubyte";
    const Bytes bad = idx_images(2, 4, 4, 0x12345678);
    if (gz) write_gz(file + ".gz", bad);
    else write_file(file, bad);
    CHECK_THROWS_WITH(read_idx_images(gz ? file + ".gz" : file),
                      Catch::Contains("train-images-idx3-ubyte") && Catch::Contains("magic"));
  }
  TempDir dir;
  write_file(dir / "labels", idx_labels(5));
  CHECK_THROWS_WITH(read_idx_images(dir / "labels"), Catch::Contains("magic") && Catch::Contains("label file"));
  write_file(dir / "images", idx_images(5, 4, 4));
  CHECK_THROWS_WITH(read_idx_labels(dir / "images", 10), Catch::Contains("magic") && Catch::Contains("image file"));
}

TEST_CASE("a corrupt gzip stream is an error naming the file", "[data][idx]") {
  TempDir dir;
  write_gz(dir / "good.gz", idx_images(50, 28, 28));
  const Bytes good = read_file(dir / "good.gz");

  Bytes bad_crc = good;
  bad_crc[bad_crc.size() - 8] ^= 0xFF;  // the CRC-32 in the gzip trailer
  write_file(dir / "train-images-idx3-ubyte.gz", bad_crc);
  CHECK_THROWS_WITH(read_idx_images(dir / "train-images-idx3-ubyte.gz"),
                    Catch::Contains("train-images-idx3-ubyte.gz") && Catch::Contains("corrupt gzip"));

  Bytes garbage = good;
  for (size_t i = 20; i < 60 && i < garbage.size(); ++i) garbage[i] = 0xFF;
  write_file(dir / "t10k-images-idx3-ubyte.gz", garbage);
  CHECK_THROWS_WITH(read_idx_images(dir / "t10k-images-idx3-ubyte.gz"), Catch::Contains("t10k-images-idx3-ubyte.gz"));
}

TEST_CASE("IDX label and count checks", "[data][idx]") {
  TempDir dir;
  Bytes labels = idx_labels(10);
  labels[8 + 7] = 12;
  write_gz(dir / "train-labels-idx1-ubyte.gz", labels);
  CHECK_THROWS_WITH(read_idx_labels(dir / "train-labels-idx1-ubyte.gz", 10),
                    Catch::Contains("train-labels-idx1-ubyte.gz") && Catch::Contains("label 12 at index 7") &&
                        Catch::Contains("0..9"));

  TempDir set;
  write_idx_set(set, true);
  write_gz(set / "t10k-labels-idx1-ubyte.gz", idx_labels(5));  // 6 images, 5 labels
  CHECK_THROWS_WITH(load_dataset(options_for("fashion-mnist", set.path.string())),
                    Catch::Contains("t10k-images-idx3-ubyte.gz holds 6 images") &&
                        Catch::Contains("t10k-labels-idx1-ubyte.gz holds 5 labels"));

  Bytes extra = idx_labels(6);
  extra.push_back(1);
  write_gz(set / "t10k-labels-idx1-ubyte.gz", extra);
  CHECK_THROWS_WITH(load_dataset(options_for("fashion-mnist", set.path.string())),
                    Catch::Contains("t10k-labels-idx1-ubyte.gz") && Catch::Contains("more data"));

  fs::remove(set.path / "t10k-labels-idx1-ubyte.gz");
  CHECK_THROWS_WITH(load_dataset(options_for("fashion-mnist", set.path.string())),
                    Catch::Contains("t10k-labels-idx1-ubyte.gz: no such file"));
}

TEST_CASE("CIFAR-10 binary batches", "[data][cifar]") {
  TempDir dir;
  const fs::path batches = dir.path / "cifar-10-batches-bin";
  for (int b = 1; b <= 5; ++b) {
    write_file((batches / ("data_batch_" + std::to_string(b) + ".bin")).string(),
               cifar_records({{uint8_t(b)}, {uint8_t(b + 1)}, {uint8_t(b + 2)}}, (b - 1) * 3));
  }
  write_file((batches / "test_batch.bin").string(), cifar_records({{9}, {0}}));
  DataOptions o = options_for("cifar10", dir.path.string());
  const DataSplits d = load_dataset(o);
  CHECK(d.classes == 10);
  CHECK(d.train.size() == 15);
  CHECK(d.test.size() == 2);
  CHECK((d.input_shape == std::vector<int64_t>{3, 32, 32}));
  CHECK(d.train.labels[4].item<int64_t>() == 3);   // batch 2, second record
  CHECK(d.train.labels[14].item<int64_t>() == 7);  // batch 5, third record
  CHECK(d.train.images[7][2][3][4].item<int>() == (7 + 100 + 3 + 4) % 256);
  CHECK(d.test.labels[0].item<int64_t>() == 9);
  CHECK(d.crop_padding == 4);
  CHECK(d.flip);
  CHECK(d.mean.size() == 3);
  o.limit_train = 4;
  const DataSplits l = load_dataset(o);
  CHECK(l.train.size() == 4);
  CHECK(torch::equal(l.train.images, d.train.images.narrow(0, 0, 4)));
  // The batch folder itself works as the path too.
  CHECK(load_dataset(options_for("cifar10", batches.string())).train.size() == 15);

  Bytes truncated = cifar_records({{1}, {2}});
  truncated.pop_back();
  write_file((batches / "data_batch_3.bin").string(), truncated);
  CHECK_THROWS_WITH(load_dataset(options_for("cifar10", dir.path.string())),
                    Catch::Contains("data_batch_3.bin") && Catch::Contains("3073-byte records") &&
                        Catch::Contains("truncated"));

  write_file((batches / "data_batch_3.bin").string(), cifar_records({{1}, {10}}));
  CHECK_THROWS_WITH(load_dataset(options_for("cifar10", dir.path.string())),
                    Catch::Contains("data_batch_3.bin") && Catch::Contains("record 1 has label 10"));

  fs::remove(batches / "test_batch.bin");
  CHECK_THROWS_WITH(load_dataset(options_for("cifar10", dir.path.string())), Catch::Contains("test_batch.bin"));

  TempDir empty;
  CHECK_THROWS_WITH(load_dataset(options_for("cifar10", empty.path.string())),
                    Catch::Contains("no CIFAR-10 binary batches"));
}

TEST_CASE("CIFAR-100 binary files use the fine label", "[data][cifar]") {
  TempDir dir;
  const fs::path sub = dir.path / "cifar-100-binary";
  write_file((sub / "train.bin").string(), cifar_records({{3, 77}, {19, 99}, {0, 0}}));
  write_file((sub / "test.bin").string(), cifar_records({{5, 42}}));
  const DataSplits d = load_dataset(options_for("cifar100", dir.path.string()));
  CHECK(d.classes == 100);
  CHECK(d.train.size() == 3);
  CHECK(d.test.size() == 1);
  CHECK(d.train.labels[0].item<int64_t>() == 77);
  CHECK(d.train.labels[1].item<int64_t>() == 99);
  CHECK(d.test.labels[0].item<int64_t>() == 42);
  CHECK(d.train.images[1][1][0][0].item<int>() == (1 + 50) % 256);

  write_file((sub / "test.bin").string(), cifar_records({{5, 100}}));
  CHECK_THROWS_WITH(load_dataset(options_for("cifar100", dir.path.string())),
                    Catch::Contains("test.bin") && Catch::Contains("label 100"));
  write_file((sub / "test.bin").string(), cifar_records({{20, 1}}));
  CHECK_THROWS_WITH(load_dataset(options_for("cifar100", dir.path.string())),
                    Catch::Contains("test.bin") && Catch::Contains("coarse label 20"));
  // A CIFAR-10 batch (3073-byte records) is not a whole number of CIFAR-100 records.
  write_file((sub / "test.bin").string(), cifar_records({{1}, {2}}));
  CHECK_THROWS_WITH(load_dataset(options_for("cifar100", dir.path.string())),
                    Catch::Contains("test.bin") && Catch::Contains("3074-byte records"));
}

TEST_CASE("JPEG decode: colour, grayscale to RGB, bad files", "[data][jpeg]") {
  TempDir dir;
  write_solid_jpeg(dir / "red.jpg", 6, 10, 200, 30, 90);
  const DecodedImage red = decode_jpeg_file(dir / "red.jpg");
  CHECK(red.height == 6);
  CHECK(red.width == 10);
  REQUIRE(red.pixels.size() == 6 * 10 * 3);
  CHECK(std::abs(int(red.pixels[0]) - 200) <= 3);
  CHECK(std::abs(int(red.pixels[1]) - 30) <= 3);
  CHECK(std::abs(int(red.pixels[2]) - 90) <= 3);

  Bytes gray(8 * 8, 140);
  write_jpeg_file(dir / "gray.jpg", gray.data(), 8, 8, 1, 100);
  const DecodedImage g = decode_jpeg_file(dir / "gray.jpg");
  REQUIRE(g.pixels.size() == 8 * 8 * 3);
  CHECK(std::abs(int(g.pixels[5 * 3]) - 140) <= 2);
  CHECK(g.pixels[5 * 3] == g.pixels[5 * 3 + 1]);
  CHECK(g.pixels[5 * 3] == g.pixels[5 * 3 + 2]);

  write_file(dir / "text.JPEG", Bytes{'n', 'o', 't', ' ', 'a', ' ', 'j', 'p', 'e', 'g'});
  CHECK_THROWS_WITH(decode_jpeg_file(dir / "text.JPEG"), Catch::Contains("text.JPEG") && Catch::Contains("cannot decode"));
  Bytes cut = read_file(dir / "red.jpg");
  cut.resize(cut.size() / 2);
  write_file(dir / "cut.JPEG", cut);
  CHECK_THROWS_WITH(decode_jpeg_file(dir / "cut.JPEG"), Catch::Contains("cut.JPEG") && Catch::Contains("cannot decode"));

  const DecodedImage big = resize_bilinear(red, 12, 20);
  CHECK(big.height == 12);
  CHECK(big.width == 20);
  CHECK(std::abs(int(big.pixels[(7 * 20 + 13) * 3]) - 200) <= 3);
}

TEST_CASE("image folder in the Tiny-ImageNet layout", "[data][folder]") {
  TempDir dir;
  // Classes sort as ant < bee < cat; "bee" uses the real Tiny-ImageNet train/<class>/images/ form.
  write_solid_jpeg(dir / "train/cat/c0.JPEG", 8, 8, 250, 10, 10);
  write_solid_jpeg(dir / "train/cat/c1.JPEG", 8, 8, 250, 10, 10);
  write_solid_jpeg(dir / "train/ant/a0.JPEG", 8, 8, 10, 250, 10);
  write_solid_jpeg(dir / "train/bee/images/b0.JPEG", 8, 8, 10, 10, 250);
  write_file(dir / "train/bee/bee_boxes.txt", Bytes{'x'});
  Bytes gray(8 * 8, 128);
  fs::create_directories(dir.path / "train/ant");
  write_jpeg_file(dir / "train/ant/a1.jpg", gray.data(), 8, 8, 1, 100);
  write_solid_jpeg(dir / "val/cat/v0.JPEG", 8, 8, 250, 10, 10);
  write_solid_jpeg(dir / "val/bee/v1.JPEG", 8, 8, 10, 10, 250);

  DataOptions o = options_for("image-folder", dir.path.string());
  const DataSplits d = load_dataset(o);
  CHECK(d.classes == 3);
  CHECK(d.train.size() == 5);
  CHECK(d.test.size() == 2);
  CHECK((d.input_shape == std::vector<int64_t>{3, 8, 8}));
  // Class-interleaved order: ant a0, bee b0, cat c0, ant a1, cat c1.
  CHECK(torch::equal(d.train.labels, torch::tensor({0, 1, 2, 0, 2}, torch::kLong)));
  CHECK(std::abs(d.train.images[0][1][4][4].item<int>() - 250) <= 3);  // ant is green
  CHECK(std::abs(d.train.images[2][0][4][4].item<int>() - 250) <= 3);  // cat is red
  CHECK(std::abs(d.train.images[3][2][4][4].item<int>() - 128) <= 2);  // grayscale -> RGB
  CHECK(torch::equal(d.test.labels, torch::tensor({1, 2}, torch::kLong)));
  REQUIRE(d.mean.size() == 3);
  const auto pixels = d.train.images.to(torch::kDouble) / 255.0;
  for (int c = 0; c < 3; ++c) {
    CHECK(d.mean[c] == Approx(pixels.select(1, c).mean().item<double>()).margin(1e-5));
    CHECK(d.std[c] == Approx(pixels.select(1, c).std(false).item<double>()).margin(1e-4));
  }
  CHECK(d.flip);
  o.limit_train = 3;
  CHECK(torch::equal(load_dataset(o).train.labels, torch::tensor({0, 1, 2}, torch::kLong)));
  o.limit_train = 0;

  // Tiny-ImageNet's val/images + val_annotations.txt.
  TempDir tiny;
  write_solid_jpeg(tiny / "train/n01/images/n01_0.JPEG", 8, 8, 200, 0, 0);
  write_solid_jpeg(tiny / "train/n02/images/n02_0.JPEG", 8, 8, 0, 200, 0);
  write_solid_jpeg(tiny / "val/images/val_0.JPEG", 8, 8, 0, 200, 0);
  write_solid_jpeg(tiny / "val/images/val_1.JPEG", 8, 8, 200, 0, 0);
  {
    std::ofstream ann(tiny / "val/val_annotations.txt");
    ann << "val_0.JPEG\tn02\t0\t0\t7\t7\nval_1.JPEG\tn01\t1\t1\t6\t6\n";
  }
  const DataSplits t = load_dataset(options_for("image-folder", tiny.path.string()));
  CHECK(t.test.size() == 2);
  CHECK(torch::equal(t.test.labels, torch::tensor({0, 1}, torch::kLong)));
  CHECK(std::abs(t.test.images[1][1][0][0].item<int>() - 200) <= 3);

  // Mixed sizes: an error unless image_size resizes them.
  write_solid_jpeg(dir / "train/cat/c2.JPEG", 12, 10, 250, 10, 10);
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("c2.JPEG") && Catch::Contains("image_size"));
  o.image_size = 16;
  const DataSplits r = load_dataset(o);
  CHECK((r.input_shape == std::vector<int64_t>{3, 16, 16}));
  CHECK(r.test.images.size(2) == 16);
  o.image_size = 0;
  fs::remove(dir.path / "train/cat/c2.JPEG");

  write_file(dir / "train/bee/images/broken.JPEG", Bytes{0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3});
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("broken.JPEG") && Catch::Contains("cannot decode JPEG"));
  fs::remove(dir.path / "train/bee/images/broken.JPEG");

  write_solid_jpeg(dir / "val/dog/x.JPEG", 8, 8, 1, 2, 3);
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("dog") && Catch::Contains("no folder"));

  CHECK_THROWS_WITH(load_dataset(options_for("image-folder", "")), Catch::Contains("data.path"));
  CHECK(default_data_path("image-folder").empty());
}

TEST_CASE("data options and names", "[data]") {
  CHECK(default_data_path("fashion-mnist") == kFashionDir);
  CHECK(default_data_path("mnist") == "/usr/share/datasets/mnist");
  const auto names = dataset_names();
  CHECK(std::find(names.begin(), names.end(), "cifar100") != names.end());
  CHECK_THROWS_WITH(load_dataset(options_for("imagenet", "")),
                    Catch::Contains("imagenet") && Catch::Contains("fashion-mnist"));
  TempDir dir;
  write_idx_set(dir, true);
  DataOptions o = options_for("mnist", dir.path.string());
  o.flip = 2;
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("data.flip"));
  o.flip = 1;
  o.crop_padding = 0;
  const DataSplits d = load_dataset(o);
  CHECK(d.flip);
  CHECK(d.crop_padding == 0);
  o.image_size = 32;
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("data.image_size"));
  CHECK_THROWS_WITH(load_dataset(options_for("mnist", dir / "nowhere")), Catch::Contains("nowhere"));
}

TEST_CASE("epoch_order is a seeded permutation per epoch", "[data][order]") {
  const auto a = epoch_order(1000, 7, 0);
  CHECK(a.scalar_type() == torch::kLong);
  CHECK(torch::equal(std::get<0>(a.sort()), torch::arange(1000, torch::kLong)));
  CHECK(torch::equal(a, epoch_order(1000, 7, 0)));
  CHECK(!torch::equal(a, epoch_order(1000, 7, 1)));
  CHECK(!torch::equal(a, epoch_order(1000, 8, 0)));
  CHECK(!torch::equal(a, torch::arange(1000, torch::kLong)));
  // Torch's global generator plays no part.
  torch::manual_seed(123);
  const auto b = epoch_order(1000, 7, 0);
  torch::manual_seed(456);
  CHECK(torch::equal(b, epoch_order(1000, 7, 0)));
  CHECK(epoch_order(0, 1, 1).numel() == 0);
  CHECK(epoch_order(1, 1, 1).item<int64_t>() == 0);
}

TEST_CASE("make_batch normalises, and augments reproducibly", "[data][batch]") {
  DataSplits d = synthetic_splits(16, 3, 6, 5, 0, false);
  d.train.images[2].fill_(255);
  d.train.images[3].fill_(0);
  d.train.images[4][1][2][3] = 51;
  const auto idx = torch::tensor({2, 3, 4}, torch::kLong);
  const auto b = make_batch(d, d.train, idx, true, 1);
  CHECK(b.sizes() == torch::IntArrayRef({3, 3, 6, 5}));
  CHECK(b.scalar_type() == torch::kFloat);
  for (int c = 0; c < 3; ++c) {
    CHECK(b[0][c][1][1].item<float>() == Approx((1.0f - d.mean[c]) / d.std[c]));
    CHECK(b[1][c][4][0].item<float>() == Approx(-d.mean[c] / d.std[c]));
  }
  CHECK(b[2][1][2][3].item<float>() == Approx((0.2f - d.mean[1]) / d.std[1]));
  // Without augmentation the whole batch is the normalised images.
  const auto mean = torch::tensor(d.mean).view({1, 3, 1, 1}), std = torch::tensor(d.std).view({1, 3, 1, 1});
  const auto expected = (d.train.images.index_select(0, idx).to(torch::kFloat) / 255.0 - mean) / std;
  CHECK(torch::allclose(b, expected, 1e-5, 1e-6));
  d.crop_padding = 2;
  d.flip = true;
  CHECK(torch::allclose(make_batch(d, d.train, idx, false, 9), expected, 1e-5, 1e-6));
}

TEST_CASE("make_batch flip mirrors and crop shifts with zero padding", "[data][batch]") {
  const int64_t n = 64;
  DataSplits d = synthetic_splits(n, 2, 7, 9, 0, true);
  const auto idx = torch::arange(n, torch::kLong);
  const auto plain = make_batch(d, d.train, idx, false, 0);
  const auto flipped = plain.flip({3});
  const auto aug = make_batch(d, d.train, idx, true, 42);
  CHECK(torch::equal(aug, make_batch(d, d.train, idx, true, 42)));
  CHECK(!torch::equal(aug, make_batch(d, d.train, idx, true, 43)));
  int mirrored = 0, kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (torch::equal(aug[i], flipped[i])) ++mirrored;
    else if (torch::equal(aug[i], plain[i])) ++kept;
  }
  CHECK(mirrored + kept == n);
  CHECK(mirrored > 10);
  CHECK(kept > 10);

  // Crop only: each sample is the image shifted by (dy, dx) in [-2, 2], padded with black.
  d.flip = false;
  d.crop_padding = 2;
  const auto cropped = make_batch(d, d.train, idx, true, 5);
  const auto padded = torch::constant_pad_nd(d.train.images, {2, 2, 2, 2}, 0);
  const auto mean = torch::tensor(d.mean).view({2, 1, 1}), std = torch::tensor(d.std).view({2, 1, 1});
  int shifted = 0;
  for (int64_t i = 0; i < n; ++i) {
    bool found = false;
    for (int64_t oy = 0; oy <= 4 && !found; ++oy) {
      for (int64_t ox = 0; ox <= 4 && !found; ++ox) {
        const auto window = padded[i].narrow(1, oy, 7).narrow(2, ox, 9).to(torch::kFloat) / 255.0;
        if (torch::allclose(cropped[i], (window - mean) / std, 1e-5, 1e-6)) {
          found = true;
          if (oy != 2 || ox != 2) ++shifted;
        }
      }
    }
    CHECK(found);
  }
  CHECK(shifted > n / 2);
  CHECK_THROWS(make_batch(d, d.train, torch::tensor({n}, torch::kLong), true, 0));
}

TEST_CASE("the validation split is seeded, disjoint from the training images, and covers them with it",
          "[data][val]") {
  if (!std::filesystem::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
    WARN("Fashion-MNIST not installed; skipped");
    return;
  }
  DataOptions o;
  o.limit_train = 600;
  o.limit_test = 10;
  // The default holds out 5,000 images, never more than a tenth of the training images.
  CHECK(load_dataset(o).val.size() == 60);
  CHECK(val_split_size(o, 60000) == 5000);
  CHECK(val_split_size(o, 30000) == 3000);
  o.name = "image-folder";
  CHECK(val_split_size(o, 1234) == 123);
  o.name = "fashion-mnist";
  o.val_split = 0;
  const DataSplits all = load_dataset(o);
  CHECK(all.val.size() == 0);
  o.val_split = 100;
  o.split_seed = 7;
  const DataSplits a = load_dataset(o), again = load_dataset(o);
  o.split_seed = 8;
  const DataSplits other = load_dataset(o);
  o.split_seed = 7;
  REQUIRE(a.val.size() == 100);
  REQUIRE(a.train.size() == 500);
  // What eval, verify and an export load of a run with an explicit split: its test split only.
  const DataSplits test_only = load_dataset(test_split_options(o));
  CHECK(test_only.train.size() == 1);
  CHECK(test_only.val.size() == 0);
  CHECK(torch::equal(test_only.test.images, a.test.images));
  CHECK(torch::equal(a.val.images, again.val.images));
  CHECK(torch::equal(a.train.labels, again.train.labels));
  CHECK_FALSE(torch::equal(a.val.images, other.val.images));
  // Every image is in exactly one of the two splits, with its own label.
  auto rows = [](const Dataset& d) {
    std::multiset<std::string> out;
    const auto flat = d.images.reshape({d.size(), -1}).contiguous();
    for (int64_t i = 0; i < d.size(); ++i)
      out.insert(std::string(reinterpret_cast<const char*>(flat[i].data_ptr<uint8_t>()), flat.size(1)) +
                 std::to_string(d.labels[i].item<int64_t>()));
    return out;
  };
  auto both = rows(a.train);
  const auto val = rows(a.val);
  both.insert(val.begin(), val.end());
  CHECK(both == rows(all.train));
  const auto train = rows(a.train);
  for (const auto& r : val) CHECK(train.count(r) == 0);
  o.val_split = 600;
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("data.val_split") && Catch::Contains("none to train on"));
  o.val_split = -2;
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("data.val_split"));
}

TEST_CASE("class names, groups and per-class subsampling", "[data][classes]") {
  TempDir dir;
  write_idx_set(dir, true, 200, 20);
  DataOptions o = options_for("fashion-mnist", dir.path.string());
  const DataSplits d = load_dataset(o);
  REQUIRE(d.class_names.size() == 10);
  CHECK(d.class_names[0] == "T-shirt/top");
  CHECK(d.class_names[9] == "Ankle boot");
  CHECK(d.groups.by_class);
  CHECK(d.groups.names == d.class_names);
  CHECK(builtin_class_names("cifar100").size() == 100);
  CHECK(builtin_class_names("cifar10")[9] == "truck");

  // Groups by name or label; the classes no group names form "other".
  o.groups = {{"tops", {"T-shirt/top", "Shirt", "2"}}, {"shoes", {"5", "Sneaker", "Ankle boot"}}};
  const DataSplits g = load_dataset(o);
  CHECK_FALSE(g.groups.by_class);
  CHECK(g.groups.names == std::vector<std::string>{"shoes", "tops", "other"});
  CHECK(g.groups.of_class == std::vector<int64_t>{1, 2, 1, 2, 2, 0, 1, 0, 2, 0});
  o.groups = {{"a", {"Shirt"}}, {"b", {"6"}}};
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("data.groups.b") && Catch::Contains("already in group \"a\""));
  o.groups = {{"a", {"Hat"}}};
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("data.groups.a") && Catch::Contains("\"Hat\""));
  o.groups.clear();

  // Classes 5-9 at a tenth of their images (20 each here): deterministic, the rest untouched.
  o.class_fraction = {{"5", 0.1}, {"6", 0.1}, {"Sneaker", 0.1}, {"8", 0.1}, {"9", 0.1}};
  const DataSplits s = load_dataset(o), again = load_dataset(o);
  const auto counts = torch::bincount(s.train.labels, {}, 10);
  for (int c = 0; c < 5; ++c) CHECK(counts[c].item<int64_t>() == 20);
  for (int c = 5; c < 10; ++c) CHECK(counts[c].item<int64_t>() == 2);
  CHECK(torch::equal(s.train.images, again.train.images));
  CHECK(torch::equal(s.test.labels, d.test.labels));  // the test split is never subsampled
  o.split_seed = 3;
  const DataSplits other = load_dataset(o);
  CHECK_FALSE(torch::equal(other.train.images, s.train.images));
  CHECK(torch::equal(torch::bincount(other.train.labels, {}, 10), counts));
  o.class_fraction = {{"5", 0.0}};
  CHECK_THROWS_WITH(load_dataset(o), Catch::Contains("data.class_fraction.5") && Catch::Contains("(0, 1]"));
}
