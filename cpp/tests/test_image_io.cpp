#include <gtest/gtest.h>

#include <random>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "test_util.h"

namespace {

using carseg::Image;
using carseg::test::expect_error;
using carseg::test::gradient;
using carseg::test::TempDir;
using carseg::test::write_bytes;
using Bytes = std::vector<std::uint8_t>;

// ---- a minimal PNG writer (stored deflate blocks) to make inputs stb cannot write itself:
// 16-bit, palette, and a header that claims enormous dimensions.
std::uint32_t crc32(const std::uint8_t* p, std::size_t n, std::uint32_t crc = 0) {
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void put32(Bytes& out, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

void chunk(Bytes& png, const char* type, const Bytes& data) {
  put32(png, static_cast<std::uint32_t>(data.size()));
  Bytes body(type, type + 4);
  body.insert(body.end(), data.begin(), data.end());
  png.insert(png.end(), body.begin(), body.end());
  put32(png, crc32(body.data(), body.size()));
}

Bytes zlib_stored(const Bytes& raw) {
  Bytes z = {0x78, 0x01};
  std::size_t pos = 0;
  do {
    const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
    z.push_back(pos + n == raw.size() ? 1 : 0);
    z.push_back(static_cast<std::uint8_t>(n & 0xFF));
    z.push_back(static_cast<std::uint8_t>(n >> 8));
    z.push_back(static_cast<std::uint8_t>(~n & 0xFF));
    z.push_back(static_cast<std::uint8_t>((~n >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + static_cast<long>(pos), raw.begin() + static_cast<long>(pos + n));
    pos += n;
  } while (pos < raw.size());
  std::uint32_t a = 1, b = 0;
  for (const std::uint8_t c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  put32(z, (b << 16) | a);
  return z;
}

// `rows`: filter byte 0 + pixel bytes per row, already laid out.
Bytes make_png(std::uint32_t w, std::uint32_t h, int depth, int color_type, const Bytes& rows,
               const Bytes& plte = {}) {
  Bytes png = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  Bytes ihdr;
  put32(ihdr, w);
  put32(ihdr, h);
  ihdr.push_back(static_cast<std::uint8_t>(depth));
  ihdr.push_back(static_cast<std::uint8_t>(color_type));
  ihdr.push_back(0);
  ihdr.push_back(0);
  ihdr.push_back(0);
  chunk(png, "IHDR", ihdr);
  if (!plte.empty()) chunk(png, "PLTE", plte);
  chunk(png, "IDAT", zlib_stored(rows));
  chunk(png, "IEND", {});
  return png;
}

void write_file(const std::filesystem::path& p, const Bytes& b) {
  write_bytes(p, std::string(b.begin(), b.end()));
}


// ---- round trips

TEST(ImageIo, PngRoundTripIsExact) {
  TempDir dir;
  const Image img = gradient(37, 21);
  carseg::write_file_atomic(dir / "a.png", carseg::encode_png(img.pixels.data(), 37, 21, 3));
  const Image back = carseg::read_image(dir / "a.png");
  EXPECT_EQ(back.width, 37);
  EXPECT_EQ(back.height, 21);
  EXPECT_EQ(back.pixels, img.pixels);
}

// Noise does not compress: over 64 KiB of deflate output, so the encoder drains its output
// buffer many times; every channel count, read back bit for bit (stb checks the zlib stream).
TEST(ImageIo, LargeNoisyPngRoundTripsForEveryChannelCount) {
  TempDir dir;
  std::mt19937 rng(5);
  for (const int channels : {1, 3, 4}) {
    const int w = 301, h = 203;
    std::vector<std::uint8_t> px(static_cast<std::size_t>(w) * h * channels);
    for (auto& v : px) v = static_cast<std::uint8_t>(rng());
    const std::vector<std::uint8_t> png = carseg::encode_png(px.data(), w, h, channels);
    EXPECT_GT(png.size(), px.size());  // incompressible: stored blocks plus headers
    carseg::write_file_atomic(dir / "n.png", png);
    const Image back = carseg::read_image(dir / "n.png");
    ASSERT_EQ(back.width, w);
    ASSERT_EQ(back.height, h);
    for (std::size_t i = 0; i < static_cast<std::size_t>(w) * h; ++i) {
      for (int c = 0; c < 3; ++c) {
        // gray -> RGB; RGBA composited on white by the reader
        const int src = channels == 1 ? px[i] : px[i * channels + c];
        const int a = channels == 4 ? px[i * 4 + 3] : 255;
        const int want = (src * a + 255 * (255 - a) + 127) / 255;
        ASSERT_EQ(back.pixels[3 * i + c], want) << channels << " channels, pixel " << i;
      }
    }
  }
  EXPECT_THROW((void)carseg::encode_png(nullptr, 10, 10, 2), carseg::Error);
  EXPECT_THROW((void)carseg::encode_png(nullptr, 0, 10, 3), carseg::Error);
}

// Decoding into a recycled buffer gives the same image whatever the buffer held, and larger,
// smaller or equal buffers all work.
TEST(ImageIo, ReadImageIntoRecycledStorage) {
  TempDir dir;
  const Image img = gradient(40, 30);
  carseg::write_file_atomic(dir / "a.png", carseg::encode_png(img.pixels.data(), 40, 30, 3));
  carseg::write_file_atomic(dir / "a.jpg", carseg::encode_jpeg(img, 95));
  for (const char* name : {"a.png", "a.jpg"}) {
    const Image fresh = carseg::read_image(dir / name);
    for (const std::size_t size : {std::size_t{0}, std::size_t{100}, fresh.pixels.size(),
                                   fresh.pixels.size() * 3}) {
      const Image again = carseg::read_image(dir / name, std::vector<std::uint8_t>(size, 77));
      EXPECT_EQ(again.width, 40);
      EXPECT_EQ(again.pixels, fresh.pixels) << name << " into a buffer of " << size;
    }
  }
  EXPECT_THROW((void)carseg::read_image(dir / "missing.png", std::vector<std::uint8_t>(10)),
               carseg::Error);
}

TEST(ImageIo, JpegRoundTripIsClose) {
  TempDir dir;
  const Image img = gradient(64, 48);
  carseg::write_file_atomic(dir / "a.jpg", carseg::encode_jpeg(img, 95));
  const Image back = carseg::read_image(dir / "a.jpg");
  ASSERT_EQ(back.width, 64);
  ASSERT_EQ(back.height, 48);
  double diff = 0;
  for (std::size_t i = 0; i < img.pixels.size(); ++i) diff += std::abs(img.pixels[i] - back.pixels[i]);
  EXPECT_LT(diff / static_cast<double>(img.pixels.size()), 3.0);
}

TEST(ImageIo, GrayscaleBecomesRgb) {
  TempDir dir;
  const std::vector<std::uint8_t> gray = {0, 50, 100, 150, 200, 250};
  carseg::write_file_atomic(dir / "g.png", carseg::encode_png(gray.data(), 3, 2, 1));
  const Image img = carseg::read_image(dir / "g.png");
  ASSERT_EQ(img.pixels.size(), 18u);
  for (std::size_t i = 0; i < gray.size(); ++i) {
    for (int c = 0; c < 3; ++c) EXPECT_EQ(img.pixels[3 * i + c], gray[i]);
  }
}

TEST(ImageIo, RgbaIsCompositedOnWhite) {
  TempDir dir;
  const std::vector<std::uint8_t> rgba = {10, 20, 30, 255,  10, 20, 30, 0,  0, 0, 0, 128};
  carseg::write_file_atomic(dir / "a.png", carseg::encode_png(rgba.data(), 3, 1, 4));
  const Image img = carseg::read_image(dir / "a.png");
  const std::vector<std::uint8_t> want = {10, 20, 30, 255, 255, 255, 127, 127, 127};
  EXPECT_EQ(img.pixels, want);
}

TEST(ImageIo, PaletteAndSixteenBitPngBecomeEightBitRgb) {
  TempDir dir;
  // 2x1 palette image: indices 1, 0.
  write_file(dir / "p.png", make_png(2, 1, 8, 3, {0, 1, 0}, {255, 0, 0, 0, 128, 255}));
  const Image p = carseg::read_image(dir / "p.png");
  EXPECT_EQ(p.pixels, (std::vector<std::uint8_t>{0, 128, 255, 255, 0, 0}));
  // 1x1 16-bit RGB: 0xFFFF, 0x8000, 0x0101.
  write_file(dir / "d.png", make_png(1, 1, 16, 2, {0, 0xFF, 0xFF, 0x80, 0x00, 0x01, 0x01}));
  const Image d = carseg::read_image(dir / "d.png");
  EXPECT_EQ(d.pixels, (std::vector<std::uint8_t>{255, 128, 1}));
}

TEST(ImageIo, BmpDecodes) {
  TempDir dir;
  // 2x1 24-bit BMP, bottom-up BGR rows padded to 4 bytes.
  Bytes bmp = {'B', 'M', 62, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0,
               1, 0, 24, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0x13, 0x0B, 0, 0, 0x13, 0x0B, 0, 0, 0, 0, 0, 0,
               0, 0, 0, 0};
  const Bytes px = {30, 20, 10, 60, 50, 40, 0, 0};
  bmp.insert(bmp.end(), px.begin(), px.end());
  write_file(dir / "a.bmp", bmp);
  EXPECT_EQ(carseg::read_image(dir / "a.bmp").pixels,
            (std::vector<std::uint8_t>{10, 20, 30, 40, 50, 60}));
}

TEST(ImageIo, MaskPngIsZeroOr255) {
  TempDir dir;
  const std::vector<std::uint8_t> mask = {1, 0, 1, 0, 0, 7, 1, 0};
  carseg::write_file_atomic(dir / "m.png", carseg::encode_mask_png(mask.data(), 4, 2));
  const Image m = carseg::read_image(dir / "m.png");
  for (std::size_t i = 0; i < mask.size(); ++i) EXPECT_EQ(m.pixels[3 * i], mask[i] ? 255 : 0);
  // Only the output: no temporary file left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator()), 1);
}

TEST(ImageIo, WriteIntoMissingFolderNamesTheFile) {
  TempDir dir;
  const std::vector<std::uint8_t> mask = {1};
  expect_error([&] { carseg::write_file_atomic(dir / "nope" / "m.png", carseg::encode_mask_png(mask.data(), 1, 1)); },
               {"m.png", "cannot write"});
}

// ---- bad inputs: one fixture per defect, each error names the file and the reason

TEST(ImageIoBadInput, MissingFile) {
  TempDir dir;
  expect_error([&] { (void)carseg::read_image(dir / "missing.jpg"); }, {"missing.jpg", "no such file"});
}

TEST(ImageIoBadInput, EmptyFile) {
  TempDir dir;
  write_bytes(dir / "empty.png", "");
  expect_error([&] { (void)carseg::read_image(dir / "empty.png"); }, {"empty.png", "empty file"});
}

TEST(ImageIoBadInput, TextFileNamedPng) {
  TempDir dir;
  write_bytes(dir / "text.png", "this is not an image\n");
  expect_error([&] { (void)carseg::read_image(dir / "text.png"); }, {"text.png", "not an image"});
}

TEST(ImageIoBadInput, TruncatedJpeg) {
  TempDir dir;
  Image noisy = gradient(256, 256);
  for (std::size_t i = 0; i < noisy.pixels.size(); ++i) noisy.pixels[i] ^= static_cast<std::uint8_t>(i * 2654435761u >> 24);
  const Bytes full = carseg::encode_jpeg(noisy, 90);
  write_file(dir / "truncated.jpg", Bytes(full.begin(), full.begin() + static_cast<long>(full.size() / 2)));
  expect_error([&] { (void)carseg::read_image(dir / "truncated.jpg"); },
               {"truncated.jpg", "truncated JPEG"});
}

TEST(ImageIoBadInput, JpegHeaderOnly) {
  TempDir dir;
  write_file(dir / "header.jpg", {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10});
  expect_error([&] { (void)carseg::read_image(dir / "header.jpg"); }, {"header.jpg", "JPEG"});
}

TEST(ImageIoBadInput, CorruptPng) {
  TempDir dir;
  Bytes png = carseg::encode_png(gradient(16, 16).pixels.data(), 16, 16, 3);
  for (std::size_t i = 40; i < png.size(); ++i) png[i] = static_cast<std::uint8_t>(i * 7);
  write_file(dir / "corrupt.png", png);
  expect_error([&] { (void)carseg::read_image(dir / "corrupt.png"); }, {"corrupt.png", "PNG"});
}

TEST(ImageIoBadInput, TruncatedPng) {
  TempDir dir;
  const Bytes png = carseg::encode_png(gradient(64, 64).pixels.data(), 64, 64, 3);
  write_file(dir / "truncated.png", Bytes(png.begin(), png.begin() + static_cast<long>(png.size() / 2)));
  expect_error([&] { (void)carseg::read_image(dir / "truncated.png"); }, {"truncated.png", "PNG"});
}

TEST(ImageIoBadInput, HugeDimensionsHeader) {
  TempDir dir;
  // A few hundred bytes that claim 100000 x 100000 pixels: refused before any allocation.
  write_file(dir / "huge.png", make_png(100000, 100000, 8, 0, {0, 0, 0, 0}));
  expect_error([&] { (void)carseg::read_image(dir / "huge.png"); },
               {"huge.png", "100000x100000", "over the limit"});
}

TEST(ImageIoBadInput, PixelLimitIsConfigurable) {
  TempDir dir;
  carseg::write_file_atomic(dir / "a.jpg", carseg::encode_jpeg(gradient(20, 10)));
  expect_error([&] { (void)carseg::read_image(dir / "a.jpg", 100); }, {"a.jpg", "20x10", "limit of 100"});
}

TEST(ImageIoBadInput, FolderInsteadOfFile) {
  TempDir dir;
  expect_error([&] { (void)carseg::read_image(dir.path()); }, {"is a folder"});
}

}  // namespace

namespace {

// The test folders are removed whole, links and nested folders included (without
// std::filesystem::remove_all, which crashes beside torch 2.11's libtorch; see remove_tree).
TEST(TestUtil, TempDirRemovesItsWholeTree) {
  std::filesystem::path kept;
  {
    TempDir dir;
    kept = dir.path();
    std::filesystem::create_directories(dir / "a" / "b");
    write_bytes(dir / "a" / "b" / "f.txt", "x");
    write_bytes(dir / "g.txt", "y");
    std::filesystem::create_directory_symlink(dir / "a", dir / "link");
    ASSERT_TRUE(std::filesystem::exists(dir / "link" / "b" / "f.txt"));
  }
  EXPECT_FALSE(std::filesystem::exists(kept));
}

}  // namespace
