#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "carseg/error.h"  // what every function here throws

namespace carseg {

/// 8-bit RGB pixels, row-major HxWx3 (no padding between rows).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;

  [[nodiscard]] bool empty() const { return width == 0 || height == 0; }
};

/// Default pixel limit for decoding: guards against decompression bombs (a tiny file with a
/// header claiming 100000x100000 pixels).
inline constexpr std::int64_t kDefaultMaxPixels = 80'000'000;

/// Decodes JPEG (TurboJPEG), PNG, GIF (first frame) and BMP (stb) to RGB. Grayscale, palette and
/// 16-bit images are converted; alpha is composited on white. Throws carseg::Error naming the
/// file for a missing, empty, truncated, corrupt, non-image or oversized file.
[[nodiscard]] Image read_image(const std::filesystem::path& path,
                               std::int64_t max_pixels = kDefaultMaxPixels);
/// read_image decoding into `storage`'s memory (pixels of an Image the caller is done with):
/// a folder of same-sized photos then decodes without fresh pages or zero-filling.
[[nodiscard]] Image read_image(const std::filesystem::path& path,
                               std::vector<std::uint8_t> storage,
                               std::int64_t max_pixels = kDefaultMaxPixels);
/// Same from bytes in memory; `name` is used in messages.
[[nodiscard]] Image decode_image(std::span<const std::uint8_t> bytes, const std::string& name,
                                 std::int64_t max_pixels = kDefaultMaxPixels);

/// Whole file as bytes; throws carseg::Error when it cannot be read.
[[nodiscard]] std::vector<std::uint8_t> read_file(const std::filesystem::path& path);
/// Writes to a temporary name in the same folder, then renames: never a half-written file.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::uint8_t> bytes);

/// Encoders; channels is 1 (gray), 3 (RGB) or 4 (RGBA) for PNG and 3 for JPEG.
[[nodiscard]] std::vector<std::uint8_t> encode_png(const std::uint8_t* pixels, int width, int height,
                                                   int channels);
/// An 8-bit PNG whose rows are produced on the fly: `row(y, dst)` writes row y's
/// width * channels bytes at dst. Rows are compressed as they come, so no whole image is held.
[[nodiscard]] std::vector<std::uint8_t> encode_png_rows(
    int width, int height, int channels, const std::function<void(int, std::uint8_t*)>& row);
[[nodiscard]] std::vector<std::uint8_t> encode_jpeg(const Image& image, int quality = 95);

/// A mask (HxW, nonzero = car) as a PNG of 0/255.
[[nodiscard]] std::vector<std::uint8_t> encode_mask_png(const std::uint8_t* mask, int width,
                                                        int height);

}  // namespace carseg
