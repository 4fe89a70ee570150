#include "trainer/data/image_decode.h"

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include <jpeglib.h>
// jpeglib.h needs <cstdio> before it; jerror.h gives the message codes.
#include <jerror.h>

namespace autorep::trainer::data {
namespace {

// libjpeg's default error handler calls exit(); ours jumps back to the caller instead. Only
// trivially destructible objects live between setjmp and longjmp.
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;
};

void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings go nowhere, except that a premature end of data is remembered: libjpeg fills the
// missing rows with grey, which would be silent garbage.
void on_message(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) err->truncated = true;
}

// Returns an empty string on success, else libjpeg's message. Kept free of C++ objects with
// destructors because of the longjmp.
const char* decode_into(const uint8_t* data, size_t size, DecodedImage* out, JpegError* err,
                        jpeg_decompress_struct* cinfo) {
  cinfo->err = jpeg_std_error(&err->mgr);
  err->mgr.error_exit = on_error;
  err->mgr.emit_message = on_message;
  err->truncated = false;
  err->message[0] = '\0';
  if (setjmp(err->jump)) {
    jpeg_destroy_decompress(cinfo);
    return err->message;
  }
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(cinfo, TRUE);
  const bool cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
  cinfo->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(cinfo);
  const int64_t h = cinfo->output_height, w = cinfo->output_width;
  const int comps = cinfo->output_components;
  out->height = h;
  out->width = w;
  out->pixels.resize(static_cast<size_t>(h * w * comps));
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = out->pixels.data() + static_cast<size_t>(cinfo->output_scanline) * w * comps;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  jpeg_destroy_decompress(cinfo);
  if (cmyk) {
    // Adobe CMYK JPEGs store inverted values, so RGB = C * K / 255 on the stored bytes.
    const size_t n = static_cast<size_t>(h * w);
    for (size_t i = 0; i < n; ++i) {
      const int k = out->pixels[4 * i + 3];
      for (int c = 0; c < 3; ++c) out->pixels[3 * i + c] = static_cast<uint8_t>(out->pixels[4 * i + c] * k / 255);
    }
    out->pixels.resize(n * 3);
  }
  return err->truncated ? "premature end of JPEG data (the file is truncated)" : "";
}

}  // namespace

DecodedImage decode_jpeg(const uint8_t* data, size_t size, const std::string& name) {
  if (size < 4 || data[0] != 0xFF || data[1] != 0xD8) {
    throw std::runtime_error(name + ": cannot decode JPEG (not a JPEG file: it does not start with the FF D8 marker)");
  }
  DecodedImage image;
  JpegError err;
  jpeg_decompress_struct cinfo;
  const std::string message = decode_into(data, size, &image, &err, &cinfo);
  if (!message.empty()) throw std::runtime_error(name + ": cannot decode JPEG (" + message + ")");
  if (image.height <= 0 || image.width <= 0) throw std::runtime_error(name + ": cannot decode JPEG (empty image)");
  return image;
}

DecodedImage decode_jpeg_file(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(file + ": cannot open image file");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error(file + ": read error");
  return decode_jpeg(bytes.data(), bytes.size(), file);
}

DecodedImage resize_bilinear(const DecodedImage& image, int64_t height, int64_t width) {
  if (height <= 0 || width <= 0) throw std::runtime_error("resize_bilinear: target size must be positive");
  if (image.height == height && image.width == width) return image;
  DecodedImage out;
  out.height = height;
  out.width = width;
  out.pixels.resize(static_cast<size_t>(height * width * 3));
  const double sy = static_cast<double>(image.height) / height, sx = static_cast<double>(image.width) / width;
  for (int64_t y = 0; y < height; ++y) {
    const double fy = std::clamp((y + 0.5) * sy - 0.5, 0.0, static_cast<double>(image.height - 1));
    const int64_t y0 = static_cast<int64_t>(fy), y1 = std::min(y0 + 1, image.height - 1);
    const double wy = fy - y0;
    for (int64_t x = 0; x < width; ++x) {
      const double fx = std::clamp((x + 0.5) * sx - 0.5, 0.0, static_cast<double>(image.width - 1));
      const int64_t x0 = static_cast<int64_t>(fx), x1 = std::min(x0 + 1, image.width - 1);
      const double wx = fx - x0;
      for (int c = 0; c < 3; ++c) {
        auto at = [&](int64_t yy, int64_t xx) { return static_cast<double>(image.pixels[(yy * image.width + xx) * 3 + c]); };
        const double v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
        out.pixels[(y * width + x) * 3 + c] = static_cast<uint8_t>(std::lround(std::clamp(v, 0.0, 255.0)));
      }
    }
  }
  return out;
}

void write_jpeg_file(const std::string& file, const uint8_t* pixels, int64_t height, int64_t width,
                     int channels, int quality) {
  if (channels != 1 && channels != 3) throw std::runtime_error(file + ": JPEG needs 1 or 3 channels");
  std::FILE* f = std::fopen(file.c_str(), "wb");
  if (!f) throw std::runtime_error(file + ": cannot open for writing");
  jpeg_compress_struct cinfo;
  jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, f);
  cinfo.image_width = static_cast<JDIMENSION>(width);
  cinfo.image_height = static_cast<JDIMENSION>(height);
  cinfo.input_components = channels;
  cinfo.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(pixels + static_cast<size_t>(cinfo.next_scanline) * width * channels);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  const bool ok = std::fclose(f) == 0;
  if (!ok) throw std::runtime_error(file + ": write error");
}

}  // namespace autorep::trainer::data
