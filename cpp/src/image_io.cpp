#include "carseg/image_io.h"

#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>

#include "carseg/error.h"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_GIF
#define STBI_ONLY_BMP
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb/stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace carseg {
namespace {

struct TjDeleter {
  void operator()(void* handle) const { tjDestroy(static_cast<tjhandle>(handle)); }
};
using TjHandle = std::unique_ptr<void, TjDeleter>;

struct TjBufferDeleter {
  void operator()(unsigned char* p) const { tjFree(p); }
};
struct StbDeleter {
  void operator()(void* p) const { stbi_image_free(p); }
};

enum class Format { kUnknown, kJpeg, kPng, kGif, kBmp };

Format sniff(std::span<const std::uint8_t> b) {
  auto starts = [&](std::initializer_list<std::uint8_t> sig) {
    return b.size() >= sig.size() && std::equal(sig.begin(), sig.end(), b.begin());
  };
  if (starts({0xFF, 0xD8, 0xFF})) return Format::kJpeg;
  if (starts({0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A})) return Format::kPng;
  if (starts({'G', 'I', 'F', '8'})) return Format::kGif;
  if (starts({'B', 'M'})) return Format::kBmp;
  return Format::kUnknown;
}

void check_pixels(const std::string& name, long long w, long long h, std::int64_t max_pixels) {
  if (w < 1 || h < 1) {
    throw Error(name, "image has no pixels (" + std::to_string(w) + "x" + std::to_string(h) + ")");
  }
  if (w * h > max_pixels) {
    throw Error(name, "image is " + std::to_string(w) + "x" + std::to_string(h) + " = " +
                          std::to_string(w * h) + " pixels, over the limit of " +
                          std::to_string(max_pixels));
  }
}

Image decode_jpeg(std::span<const std::uint8_t> bytes, const std::string& name,
                  std::int64_t max_pixels, std::vector<std::uint8_t>& storage) {
  TjHandle tj(tjInitDecompress());
  if (!tj) throw Error(name, std::string("cannot start the JPEG decoder: ") + tjGetErrorStr2(nullptr));
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  auto* data = const_cast<unsigned char*>(bytes.data());
  const auto size = static_cast<unsigned long>(bytes.size());
  if (tjDecompressHeader3(tj.get(), data, size, &w, &h, &subsamp, &colorspace) != 0) {
    throw Error(name, std::string("corrupt or truncated JPEG (header): ") + tjGetErrorStr2(tj.get()));
  }
  if (w < 1 || h < 1) throw Error(name, "corrupt or truncated JPEG: no frame size in the header");
  check_pixels(name, w, h, max_pixels);
  Image img;
  img.width = w;
  img.height = h;
  img.pixels = std::move(storage);
  img.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  // STOPONWARNING: a truncated file ("Premature end of JPEG file") is an error, not a grey tail.
  if (tjDecompress2(tj.get(), data, size, img.pixels.data(), w, 0, h, TJPF_RGB,
                    TJFLAG_STOPONWARNING | TJFLAG_ACCURATEDCT) != 0) {
    throw Error(name, std::string("corrupt or truncated JPEG: ") + tjGetErrorStr2(tj.get()));
  }
  return img;
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

// Width and height from the header, read before stb so that the pixel limit is checked first
// (stb refuses large headers with only "unknown image type").
void check_header_size(std::span<const std::uint8_t> b, Format f, const std::string& name,
                       std::int64_t max_pixels) {
  long long w = -1, h = -1;
  if (f == Format::kPng && b.size() >= 24) {
    w = be32(&b[16]);
    h = be32(&b[20]);
  } else if (f == Format::kGif && b.size() >= 10) {
    w = b[6] | (b[7] << 8);
    h = b[8] | (b[9] << 8);
  } else if (f == Format::kBmp && b.size() >= 26) {
    auto le32 = [&](std::size_t o) {
      return static_cast<std::int32_t>(b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) |
                                       (static_cast<std::uint32_t>(b[o + 3]) << 24));
    };
    w = le32(18);
    h = std::llabs(static_cast<long long>(le32(22)));  // negative: top-down rows
  }
  if (w > 0 && h > 0) check_pixels(name, w, h, max_pixels);
}

Image decode_stb(std::span<const std::uint8_t> bytes, const std::string& name, const char* kind,
                 std::int64_t max_pixels, std::vector<std::uint8_t>& storage) {
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int len = static_cast<int>(std::min<std::size_t>(bytes.size(), INT32_MAX));
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &comp)) {
    throw Error(name, std::string("corrupt ") + kind + " header: " + stbi_failure_reason());
  }
  check_pixels(name, w, h, max_pixels);
  // 4 channels always: grayscale, palette and RGB get alpha 255; 16-bit is reduced to 8 by stb.
  std::unique_ptr<stbi_uc, StbDeleter> rgba(stbi_load_from_memory(data, len, &w, &h, &comp, 4));
  if (!rgba) {
    throw Error(name, std::string("corrupt or truncated ") + kind + ": " + stbi_failure_reason());
  }
  Image img;
  img.width = w;
  img.height = h;
  const std::size_t n = static_cast<std::size_t>(w) * h;
  img.pixels = std::move(storage);
  img.pixels.resize(n * 3);
  const stbi_uc* src = rgba.get();
  std::uint8_t* dst = img.pixels.data();
  for (std::size_t i = 0; i < n; ++i, src += 4, dst += 3) {
    const unsigned a = src[3];
    if (a == 255) {
      dst[0] = src[0];
      dst[1] = src[1];
      dst[2] = src[2];
    } else {  // composite on white, as a browser shows it (and as carseg.imageio does)
      for (int c = 0; c < 3; ++c) {
        dst[c] = static_cast<std::uint8_t>((src[c] * a + 255u * (255u - a) + 127u) / 255u);
      }
    }
  }
  return img;
}

}  // namespace

std::vector<std::uint8_t> read_file(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw Error(name, "no such file");
  if (std::filesystem::is_directory(path, ec)) throw Error(name, "is a folder, not an image file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(name, std::string("cannot open: ") + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  in.seekg(0, std::ios::beg);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(std::max<std::streamoff>(size, 0)));
  if (!bytes.empty() && !in.read(reinterpret_cast<char*>(bytes.data()), size)) {
    throw Error(name, "read error");
  }
  return bytes;
}

Image decode_image(std::span<const std::uint8_t> bytes, const std::string& name,
                   std::int64_t max_pixels, std::vector<std::uint8_t> storage) {
  if (bytes.empty()) throw Error(name, "empty file (0 bytes)");
  const Format format = sniff(bytes);
  check_header_size(bytes, format, name, max_pixels);
  switch (format) {
    case Format::kJpeg:
      return decode_jpeg(bytes, name, max_pixels, storage);
    case Format::kPng:
      return decode_stb(bytes, name, "PNG", max_pixels, storage);
    case Format::kGif:
      return decode_stb(bytes, name, "GIF", max_pixels, storage);
    case Format::kBmp:
      return decode_stb(bytes, name, "BMP", max_pixels, storage);
    case Format::kUnknown:
      break;
  }
  throw Error(name, "not an image: its first bytes are not a JPEG, PNG, GIF or BMP signature");
}

Image decode_image(std::span<const std::uint8_t> bytes, const std::string& name,
                   std::int64_t max_pixels) {
  return decode_image(bytes, name, max_pixels, {});
}

Image read_image(const std::filesystem::path& path, std::vector<std::uint8_t> storage,
                 std::int64_t max_pixels) {
  const std::vector<std::uint8_t> bytes = read_file(path);
  return decode_image(bytes, path.string(), max_pixels, std::move(storage));
}

Image read_image(const std::filesystem::path& path, std::int64_t max_pixels) {
  const std::vector<std::uint8_t> bytes = read_file(path);
  return decode_image(bytes, path.string(), max_pixels);
}

void write_file_atomic(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  static std::atomic<unsigned> counter{0};
  std::string tmp_name = ".";
  tmp_name += path.filename().string();
  tmp_name += ".tmp";
  tmp_name += std::to_string(::getpid());
  tmp_name += "_";
  tmp_name += std::to_string(counter++);
  const std::filesystem::path tmp = path.parent_path() / tmp_name;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(path.string(), std::string("cannot write: ") + std::strerror(errno));
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      const std::string reason = std::string("write failed: ") + std::strerror(errno);
      out.close();
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw Error(path.string(), reason);
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignore;
    std::filesystem::remove(tmp, ignore);
    throw Error(path.string(), "cannot rename the temporary file into place: " + ec.message());
  }
}

namespace {

void put_u32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}

// Appends one chunk: length, type, data, CRC-32 of type and data.
void append_chunk(std::vector<std::uint8_t>& out, const char* type, const std::uint8_t* data,
                  std::size_t size) {
  const std::size_t at = out.size();
  out.resize(at + 12 + size);
  put_u32(&out[at], static_cast<std::uint32_t>(size));
  std::memcpy(&out[at + 4], type, 4);
  if (size) std::memcpy(&out[at + 8], data, size);
  put_u32(&out[at + 8 + size],
          static_cast<std::uint32_t>(crc32(0, &out[at + 4], static_cast<uInt>(size + 4))));
}

struct DeflateStream {
  z_stream zs{};
  explicit DeflateStream(int level, int strategy) {
    if (deflateInit2(&zs, level, Z_DEFLATED, 15, 8, strategy) != Z_OK)
      throw Error("png", "cannot start zlib");
  }
  ~DeflateStream() { deflateEnd(&zs); }
  DeflateStream(const DeflateStream&) = delete;
  DeflateStream& operator=(const DeflateStream&) = delete;
};

}  // namespace

// One IDAT chunk, filter type 0 on every row. Binary masks use Z_RLE (runs of 0 and 255: as
// small as level 6 at the speed of level 1); photos use level 1.
std::vector<std::uint8_t> encode_png_rows(int width, int height, int channels,
                                          const std::function<void(int, std::uint8_t*)>& row) {
  if (channels != 1 && channels != 3 && channels != 4)
    throw Error("png", "expected 1, 3 or 4 channels, got " + std::to_string(channels));
  if (width < 1 || height < 1 || static_cast<std::int64_t>(width) * height > kDefaultMaxPixels)
    throw Error("png", "cannot encode a " + std::to_string(width) + "x" + std::to_string(height) +
                           " image");
  const std::size_t stride = static_cast<std::size_t>(width) * channels;
  DeflateStream d(/*level=*/1, channels == 1 ? Z_RLE : Z_DEFAULT_STRATEGY);

  static constexpr std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::uint8_t ihdr[13];
  put_u32(ihdr, static_cast<std::uint32_t>(width));
  put_u32(ihdr + 4, static_cast<std::uint32_t>(height));
  ihdr[8] = 8;                                                     // bit depth
  ihdr[9] = channels == 1 ? 0 : channels == 3 ? 2 : 6;             // gray, RGB, RGBA
  ihdr[10] = ihdr[11] = ihdr[12] = 0;  // deflate, adaptive filtering, no interlace
  std::vector<std::uint8_t> out(kSignature, kSignature + 8);
  append_chunk(out, "IHDR", ihdr, sizeof ihdr);

  // The IDAT chunk: header now, length and CRC patched at the end. zlib writes into a small
  // buffer that is appended as it fills, so the output is never sized (and zeroed) for the
  // worst case.
  const std::size_t idat = out.size();
  out.resize(idat + 8);
  std::memcpy(&out[idat + 4], "IDAT", 4);
  std::vector<std::uint8_t> chunk(std::size_t{1} << 16);
  std::vector<std::uint8_t> line(stride + 1, 0);  // filter byte 0, then the row
  auto drain = [&](int flush) {
    int rc;
    do {
      d.zs.next_out = chunk.data();
      d.zs.avail_out = static_cast<uInt>(chunk.size());
      rc = deflate(&d.zs, flush);
      if (rc == Z_STREAM_ERROR) throw Error("png", "zlib failed to compress the image");
      out.insert(out.end(), chunk.data(), chunk.data() + (chunk.size() - d.zs.avail_out));
    } while (d.zs.avail_out == 0 || (flush == Z_FINISH && rc != Z_STREAM_END));
  };
  for (int y = 0; y < height; ++y) {
    row(y, line.data() + 1);
    d.zs.next_in = line.data();
    d.zs.avail_in = static_cast<uInt>(line.size());
    drain(y + 1 == height ? Z_FINISH : Z_NO_FLUSH);
    if (d.zs.avail_in != 0) throw Error("png", "zlib did not take a whole row");
  }
  const std::size_t size = out.size() - idat - 8;
  if (size > 0x7fffffffu) throw Error("png", "image data too large for one PNG chunk");
  put_u32(&out[idat], static_cast<std::uint32_t>(size));
  out.resize(idat + 12 + size);
  put_u32(&out[idat + 8 + size],
          static_cast<std::uint32_t>(crc32(0, &out[idat + 4], static_cast<uInt>(size + 4))));
  append_chunk(out, "IEND", nullptr, 0);
  return out;
}

std::vector<std::uint8_t> encode_png(const std::uint8_t* pixels, int width, int height,
                                     int channels) {
  const std::size_t stride = static_cast<std::size_t>(width) * std::max(channels, 0);
  return encode_png_rows(width, height, channels, [&](int y, std::uint8_t* dst) {
    std::memcpy(dst, pixels + stride * static_cast<std::size_t>(y), stride);
  });
}

std::vector<std::uint8_t> encode_jpeg(const Image& image, int quality) {
  TjHandle tj(tjInitCompress());
  if (!tj) throw Error("jpeg", std::string("cannot start the encoder: ") + tjGetErrorStr2(nullptr));
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  const int rc = tjCompress2(tj.get(), image.pixels.data(), image.width, 0, image.height, TJPF_RGB,
                             &buf, &size, TJSAMP_420, quality, TJFLAG_ACCURATEDCT);
  std::unique_ptr<unsigned char, TjBufferDeleter> owned(buf);
  if (rc != 0) throw Error("jpeg", std::string("encoder failed: ") + tjGetErrorStr2(tj.get()));
  return {owned.get(), owned.get() + size};
}

std::vector<std::uint8_t> encode_mask_png(const std::uint8_t* mask, int width, int height) {
  const std::size_t w = static_cast<std::size_t>(std::max(width, 0));
  return encode_png_rows(width, height, 1, [&](int y, std::uint8_t* dst) {
    const std::uint8_t* m = mask + w * static_cast<std::size_t>(y);
    for (std::size_t x = 0; x < w; ++x) dst[x] = m[x] ? 255 : 0;
  });
}

}  // namespace carseg
