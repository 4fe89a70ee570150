#pragma once
/// JPEG decoding (libjpeg-turbo) and a small resize, for image-folder data sets.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace autorep::trainer::data {

/// A decoded image: 8-bit RGB, row-major height x width x 3 (interleaved).
struct DecodedImage {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<uint8_t> pixels;  ///< height * width * 3 bytes
};

/// Decodes a JPEG held in memory; grayscale and CMYK images come back as RGB. `name` is used in
/// error messages. Throws std::runtime_error "<name>: cannot decode JPEG (...)" for data that is
/// not a JPEG, is truncated or is corrupt.
DecodedImage decode_jpeg(const uint8_t* data, size_t size, const std::string& name);

/// Reads and decodes a JPEG file; errors name the file.
DecodedImage decode_jpeg_file(const std::string& file);

/// Bilinear resize of an interleaved RGB image to height x width (half-pixel centres, as
/// torchvision's `Resize` without antialiasing).
DecodedImage resize_bilinear(const DecodedImage& image, int64_t height, int64_t width);

/// Writes a JPEG file from interleaved pixels (`channels` 1 = grayscale, 3 = RGB) at the given
/// quality (1..100). Used by tests and tools to produce image folders.
void write_jpeg_file(const std::string& file, const uint8_t* pixels, int64_t height, int64_t width,
                     int channels, int quality = 95);

}  // namespace autorep::trainer::data
