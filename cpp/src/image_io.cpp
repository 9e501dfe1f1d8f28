#include "carseg/image_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

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
  // w > max / h, not w * h > max: a header's sides (up to 2^32 each) would overflow the product
  // (found by carseg_fuzz).
  if (w > max_pixels / h) {
    throw Error(name, "image is " + std::to_string(w) + "x" + std::to_string(h) +
                          ", over the limit of " + std::to_string(max_pixels) + " pixels");
  }
}

// Start-of-scan segments of a JPEG (counting stops past `stop_after`), by walking its segments:
// entropy-coded data is skipped to the next marker; a 0xFF byte inside it is always followed by
// 0x00 or a restart marker, so no marker hides there. carseg.io.images.jpeg_scans is the same.
int count_jpeg_scans(std::span<const std::uint8_t> d, int stop_after) {
  int scans = 0;
  std::size_t i = 2;
  const std::size_t n = d.size();
  auto next_ff = [&](std::size_t from) {
    const auto* p = static_cast<const std::uint8_t*>(std::memchr(d.data() + from, 0xFF, n - from));
    return p ? static_cast<std::size_t>(p - d.data()) : n;
  };
  while (i + 4 <= n && scans <= stop_after) {
    if (d[i] != 0xFF) {  // not at a marker: resynchronize at the next 0xFF
      i = next_ff(i);
      continue;
    }
    const std::uint8_t marker = d[i + 1];
    if (marker == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0xD9) break;  // end of image
    if (marker == 0x01 || marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7)) {
      i += 2;  // no length field
      continue;
    }
    i += 2 + ((static_cast<std::size_t>(d[i + 2]) << 8) | d[i + 3]);
    if (marker != 0xDA) continue;
    ++scans;
    while (i < n - 1) {  // the scan's entropy-coded data, to the next marker
      i = next_ff(i);
      if (i >= n - 1) break;
      const std::uint8_t m = d[i + 1];
      if (m != 0 && !(m >= 0xD0 && m <= 0xD7)) break;
      i += 2;
    }
  }
  return scans;
}

// A JPEG of more scans than kMaxJpegScans is refused before any decoding (each scan is a pass
// over the whole image: a small file of thousands of scans costs minutes).
void check_jpeg_scans(std::span<const std::uint8_t> bytes, const std::string& name) {
  if (const int scans = count_jpeg_scans(bytes, kMaxJpegScans); scans > kMaxJpegScans) {
    throw Error(name, "JPEG with over " + std::to_string(kMaxJpegScans) + " scans (found " +
                          std::to_string(scans) + "); refused as too costly to decode");
  }
}

bool is_cmyk(int colorspace) { return colorspace == TJCS_CMYK || colorspace == TJCS_YCCK; }

// MULDIV255 of Pillow's Convert.c: a * b / 255, rounded as Pillow rounds it.
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

// A 4-channel JPEG as Pillow reads it: the stored values taken as Adobe's inverted CMYK
// ("CMYK;I", which Pillow always assumes), then Pillow's CMYK -> RGB. The same photo gives the
// same pixels from carseg.io.images.
void cmyk_to_rgb(const std::uint8_t* stored, std::uint8_t* rgb, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i, stored += 4, rgb += 3) {
    const int nk = stored[3];  // 255 - k, k = 255 - stored
    for (int c = 0; c < 3; ++c) {
      const int v = nk - muldiv255(255 - stored[c], nk);
      rgb[c] = static_cast<std::uint8_t>(std::clamp(v, 0, 255));
    }
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
  check_jpeg_scans(bytes, name);
  Image img;
  img.width = w;
  img.height = h;
  img.pixels = std::move(storage);
  const std::size_t n = static_cast<std::size_t>(w) * h;
  img.pixels.resize(n * 3);
  // STOPONWARNING: a truncated file ("Premature end of JPEG file") is an error, not a grey tail.
  const int flags = TJFLAG_STOPONWARNING | TJFLAG_ACCURATEDCT;
  if (is_cmyk(colorspace)) {  // TurboJPEG has no CMYK -> RGB
    std::vector<std::uint8_t> cmyk(n * 4);
    if (tjDecompress2(tj.get(), data, size, cmyk.data(), w, 0, h, TJPF_CMYK, flags) != 0) {
      throw Error(name, std::string("corrupt or truncated JPEG: ") + tjGetErrorStr2(tj.get()));
    }
    cmyk_to_rgb(cmyk.data(), img.pixels.data(), n);
    return img;
  }
  if (tjDecompress2(tj.get(), data, size, img.pixels.data(), w, 0, h, TJPF_RGB, flags) != 0) {
    throw Error(name, std::string("corrupt or truncated JPEG: ") + tjGetErrorStr2(tj.get()));
  }
  return img;
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

// The checksums of a PNG's chunks before its image data, as Pillow checks them: a PNG whose
// header is damaged is corrupt in C++ as in Python (stb reads past a bad checksum).
void check_png_checksums(std::span<const std::uint8_t> b, const std::string& name) {
  std::size_t at = 8;  // after the signature
  while (at + 12 <= b.size()) {
    const std::uint32_t length = be32(&b[at]);
    if (length > b.size() - at - 12) return;  // truncated: stb says so
    const std::uint8_t* type = &b[at + 4];
    if (std::memcmp(type, "IDAT", 4) == 0) return;
    const auto crc = static_cast<std::uint32_t>(crc32_z(0, type, std::size_t{length} + 4));
    if (crc != be32(&b[at + 8 + length])) {
      const bool named = std::all_of(type, type + 4, [](std::uint8_t c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
      });
      throw Error(name, "corrupt PNG: bad checksum in its " +
                            (named ? std::string(type, type + 4) + " chunk" : std::string("header")));
    }
    at += 12 + std::size_t{length};
  }
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
  if (f == Format::kPng) check_png_checksums(b, name);  // first, as Pillow: corrupt, not large
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

std::vector<std::uint8_t> read_file(const std::filesystem::path& path, std::int64_t max_bytes) {
  const std::string name = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) throw Error(name, "no such file");
    if (err == EISDIR) throw Error(name, "is a folder, not an image file");
    throw Error(name, std::string("cannot open: ") + std::strerror(err));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw Error(name, std::string("cannot stat: ") + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw Error(name, "is a folder, not an image file");
  if (!S_ISREG(st.st_mode)) throw Error(name, "not a regular file (a pipe, device or socket)");
  if (st.st_size > max_bytes) {
    throw Error(name, "file of " + std::to_string(st.st_size) + " bytes is over the limit of " +
                          std::to_string(max_bytes));
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw Error(name, std::string("read error: ") + std::strerror(errno));
    if (r == 0) break;  // the file shrank while it was read: what is there is what it holds
    got += static_cast<std::size_t>(r);
  }
  bytes.resize(got);
  return bytes;
}

ImageInfo peek_image(std::span<const std::uint8_t> bytes, const std::string& name,
                     std::int64_t max_pixels) {
  if (bytes.empty()) throw Error(name, "empty file (0 bytes)");
  const Format format = sniff(bytes);
  check_header_size(bytes, format, name, max_pixels);
  ImageInfo info;
  if (format == Format::kJpeg) {
    TjHandle tj(tjInitDecompress());
    int subsamp = 0, colorspace = 0;
    if (!tj || tjDecompressHeader3(tj.get(), const_cast<unsigned char*>(bytes.data()),
                                   static_cast<unsigned long>(bytes.size()), &info.width,
                                   &info.height, &subsamp, &colorspace) != 0) {
      throw Error(name, std::string("corrupt or truncated JPEG (header): ") +
                            tjGetErrorStr2(tj.get()));
    }
    info.format = "jpeg";
    info.cmyk = is_cmyk(colorspace);
    check_jpeg_scans(bytes, name);
  } else if (format != Format::kUnknown) {
    int comp = 0;
    if (!stbi_info_from_memory(bytes.data(), static_cast<int>(std::min<std::size_t>(bytes.size(), INT32_MAX)),
                               &info.width, &info.height, &comp)) {
      throw Error(name, std::string("corrupt image header: ") + stbi_failure_reason());
    }
    info.format = format == Format::kPng ? "png" : format == Format::kGif ? "gif" : "bmp";
  } else {
    throw Error(name, "not an image: its first bytes are not a JPEG, PNG, GIF or BMP signature");
  }
  check_pixels(name, info.width, info.height, max_pixels);
  return info;
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
                 std::int64_t max_pixels) {  // NOLINT(performance-unnecessary-value-param)
  const std::vector<std::uint8_t> bytes = read_file(path);
  return decode_image(bytes, path.string(), max_pixels, std::move(storage));
}

Image read_image(const std::filesystem::path& path, std::int64_t max_pixels) {
  const std::vector<std::uint8_t> bytes = read_file(path);
  return decode_image(bytes, path.string(), max_pixels);
}

void write_file_atomic(const std::filesystem::path& path, std::span<const std::uint8_t> bytes,
                       bool overwrite) {
  const std::string name = path.string();
  thread_local std::mt19937_64 rng{std::random_device{}() ^
                                   std::hash<std::thread::id>{}(std::this_thread::get_id())};
  std::filesystem::path tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    char suffix[24];
    std::snprintf(suffix, sizeof suffix, ".tmp%016llx", static_cast<unsigned long long>(rng()));
    std::string tmp_name = ".";  // appended piecewise: GCC 12 warns (falsely) on "." + name
    tmp_name += path.filename().string();
    tmp_name += suffix;
    tmp = path.parent_path() / tmp_name;
    // O_EXCL: created here and now, never an existing file or a planted link
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0 && (errno != EEXIST || attempt > 16)) {
      throw Error(name, std::string("cannot write: ") + std::strerror(errno));
    }
  }
  auto fail = [&](const std::string& reason) {
    ::unlink(tmp.c_str());
    throw Error(name, reason);
  };
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      const std::string reason = std::string("write failed: ") + std::strerror(errno);
      ::close(fd);
      fail(reason);
    }
    done += static_cast<std::size_t>(w);
  }
  // On disk before it takes the final name: a crash leaves the old file or the whole new one.
  if (::fsync(fd) != 0 || ::close(fd) != 0) fail(std::string("write failed: ") + std::strerror(errno));
  if (overwrite) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      fail(std::string("cannot rename the temporary file into place: ") + std::strerror(errno));
    }
    return;
  }
  if (::link(tmp.c_str(), path.c_str()) != 0) {  // atomic: fails on an existing name
    const int err = errno;
    fail(err == EEXIST ? "exists, and this run did not write it; not replaced (remove it, write "
                         "elsewhere, or overwrite)"
                       : std::string("cannot link the temporary file into place: ") +
                             std::strerror(err));
  }
  ::unlink(tmp.c_str());
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
