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

// Images are untrusted bytes. These limits bound what one costs to read and decode.

/// Default pixel limit for decoding: guards against decompression bombs (a tiny file with a
/// header claiming 100000x100000 pixels).
inline constexpr std::int64_t kDefaultMaxPixels = 80'000'000;
/// Largest photo file read: an 80 MP photo is far smaller.
inline constexpr std::int64_t kMaxFileBytes = 256LL << 20;
/// Most scans a JPEG may have: a progressive one has about 10, and a crafted one can hold
/// thousands, each a pass over the whole image (seconds of decoding for a small file).
inline constexpr int kMaxJpegScans = 100;
/// JPEG's own limit on a side (libjpeg's JPEG_MAX_DIMENSION): a larger photo has no JPEG
/// cutout.
inline constexpr int kMaxJpegSide = 65500;

/// What a file says it is, from its header alone (nothing decoded).
struct ImageInfo {
  int width = 0;
  int height = 0;
  std::string format;  // "jpeg", "png", "gif" or "bmp"
  bool cmyk = false;   // a CMYK or YCCK JPEG
};
/// The header of an encoded image; throws carseg::Error for one it cannot read, that is over
/// `max_pixels`, or a JPEG of more than kMaxJpegScans scans (what decode_image refuses before
/// decoding, whichever decoder is to decode it).
[[nodiscard]] ImageInfo peek_image(std::span<const std::uint8_t> bytes, const std::string& name,
                                   std::int64_t max_pixels = kDefaultMaxPixels);

/// Decodes JPEG (TurboJPEG), PNG, GIF (first frame) and BMP (stb) to RGB. Grayscale, palette,
/// CMYK (as Pillow converts it) and 16-bit images are converted; alpha is composited on white.
/// Throws carseg::Error naming the file for a missing, empty, truncated, corrupt, non-image or
/// oversized file, a JPEG of more than kMaxJpegScans scans, or one that is not a regular file.
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
/// decode_image into `storage`'s memory (see read_image).
[[nodiscard]] Image decode_image(std::span<const std::uint8_t> bytes, const std::string& name,
                                 std::int64_t max_pixels, std::vector<std::uint8_t> storage);

/// Whole file as bytes: a regular file (a pipe or a device would block or never end; it is
/// opened without blocking and checked on the open descriptor) of at most `max_bytes`. Throws
/// carseg::Error when it cannot be read.
[[nodiscard]] std::vector<std::uint8_t> read_file(const std::filesystem::path& path,
                                                  std::int64_t max_bytes = kMaxFileBytes);
/// Writes `bytes` to a temporary file in the same folder, created exclusively under an
/// unpredictable name (never through a planted link), flushed to disk, then renamed to `path`:
/// never a half-written file. With `overwrite` false, an existing `path` is left alone and the
/// call throws carseg::Error: a run never replaces a file it did not write.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::uint8_t> bytes,
                       bool overwrite = true);

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
