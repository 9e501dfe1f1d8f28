#include "carseg/cutout.h"

#include <ATen/ops/upsample_bilinear2d.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <optional>

#include "carseg/error.h"
#include "carseg/preprocess.h"

namespace carseg {
namespace {

// Pixels of an Image, after checking that its buffer holds width x height RGB pixels.
std::size_t checked_pixel_count(const Image& image) {
  const std::size_t n = static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height);
  if (image.pixels.size() != 3 * n) throw Error("cutout", "image buffer does not match its size");
  return n;
}

}  // namespace

std::string to_string(Background background) {
  return background == Background::kWhite ? "white" : "transparent";
}

std::string cutout_suffix(Background background) {
  return background == Background::kWhite ? ".jpg" : ".png";
}

// ---- Backdrop ------------------------------------------------------------------------------

Backdrop Backdrop::parse(const std::string& s) {
  Backdrop b;
  if (s == "white") return b;
  if (s == "transparent") {
    b.kind_ = Kind::kTransparent;
    return b;
  }
  if (!s.empty() && s[0] == '#') {
    const bool hex = s.size() == 7 && std::all_of(s.begin() + 1, s.end(), [](unsigned char c) {
      return std::isxdigit(c) != 0;
    });
    if (!hex) {
      throw OptionError("background", "expected a colour as #RRGGBB (six hex digits), got \"" +
                                          s.substr(0, 40) + "\"");
    }
    for (int c = 0; c < 3; ++c) {
      b.colour_[static_cast<std::size_t>(c)] =
          static_cast<std::uint8_t>(std::stoi(s.substr(1 + 2 * static_cast<std::size_t>(c), 2), nullptr, 16));
    }
    return b;
  }
  std::error_code ec;
  if (s.empty() || !std::filesystem::exists(s, ec)) {
    throw OptionError("background", "expected white, transparent, #RRGGBB or an image file, got \"" +
                                        s.substr(0, 200) + "\" (no such file)");
  }
  try {
    b.image_ = std::make_shared<const Image>(read_image(s));
  } catch (const Error& e) {
    throw OptionError("background", "cannot use it as a backdrop image: " + std::string(e.what()));
  }
  b.kind_ = Kind::kImage;
  b.path_ = s;
  return b;
}

std::string Backdrop::describe() const {
  if (kind_ == Kind::kTransparent) return "transparent";
  if (kind_ == Kind::kImage) {
    return "image " + path_ + " (" + std::to_string(image_->width) + "x" + std::to_string(image_->height) + ")";
  }
  if (colour_ == std::array<std::uint8_t, 3>{255, 255, 255}) return "white";
  char hex[8];
  std::snprintf(hex, sizeof hex, "#%02x%02x%02x", colour_[0], colour_[1], colour_[2]);
  return hex;
}

std::shared_ptr<const std::vector<std::uint8_t>> Backdrop::pixels(int width, int height) const {
  if (kind_ != Kind::kImage) return nullptr;
  std::lock_guard lock(cache_->mu);
  for (const auto& [size, px] : cache_->sized) {
    if (size == std::make_pair(width, height)) return px;
  }
  c10::InferenceMode guard;
  // As carseg.io.encode.backdrop_pixels: bilinear (align_corners false, no antialias), rounded half up.
  const torch::Tensor src =
      torch::from_blob(const_cast<std::uint8_t*>(image_->pixels.data()), {1, image_->height, image_->width, 3},
                       torch::kUInt8)
          .permute({0, 3, 1, 2})
          .to(torch::kFloat32);
  const torch::Tensor out =
      at::upsample_bilinear2d(src, {height, width}, /*align_corners=*/false)
          .add_(0.5)
          .clamp_(0, 255)
          .to(torch::kUInt8)
          .squeeze(0)
          .permute({1, 2, 0})
          .contiguous();
  auto px = std::make_shared<std::vector<std::uint8_t>>(out.data_ptr<std::uint8_t>(),
                                                        out.data_ptr<std::uint8_t>() + out.numel());
  if (cache_->sized.size() >= 4) cache_->sized.erase(cache_->sized.begin());
  cache_->sized.emplace_back(std::make_pair(width, height), px);
  return px;
}

// ---- soft composites ---------------------------------------------------------------------------

Rect crop_box(const std::uint8_t* alpha, int width, int height, int margin) {
  int x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* row = alpha + static_cast<std::size_t>(y) * width;
    int first = -1, last = -1;
    for (int x = 0; x < width; ++x) {
      if (row[x]) {
        if (first < 0) first = x;
        last = x;
      }
    }
    if (first < 0) continue;
    x0 = std::min(x0, first);
    x1 = std::max(x1, last);
    y0 = std::min(y0, y);
    y1 = y;
  }
  if (x1 < 0) return {0, 0, width, height};
  margin = std::max(0, margin);
  return {std::max(0, x0 - margin), std::max(0, y0 - margin), std::min(width, x1 + 1 + margin),
          std::min(height, y1 + 1 + margin)};
}

void composite_matte(const Image& photo, const std::uint8_t* alpha, const RefineFit* fit,
                     const Backdrop& backdrop, const Rect& rect, std::uint8_t* dst) {
  (void)checked_pixel_count(photo);
  if (rect.x0 < 0 || rect.y0 < 0 || rect.x1 > photo.width || rect.y1 > photo.height || rect.width() < 1 ||
      rect.height() < 1) {
    throw Error("cutout", "crop rectangle outside the photo");
  }
  const int ch = backdrop.channels();
  const auto back = backdrop.pixels(photo.width, photo.height);
  const std::uint8_t* colour = backdrop.colour().data();
  const bool grey = colour[0] == colour[1] && colour[1] == colour[2];
  auto u8 = [](float v) {
    const float s = v * 255.0F + 0.5F;
    return s <= 0 ? std::uint8_t{0} : s >= 255 ? std::uint8_t{255} : static_cast<std::uint8_t>(s);
  };
  std::optional<Decontaminator> clean;
  if (fit) clean.emplace(*fit, photo.width, photo.height);
  std::uint8_t* out = dst;
  for (int y = rect.y0; y < rect.y1; ++y) {
    const std::size_t row = static_cast<std::size_t>(y) * photo.width;
    const std::uint8_t* a_row = alpha + row;
    if (clean) clean->set_row(y);
    // Runs of car (255) and of background (0) are copied or filled whole; only the soft edge
    // between them is blended pixel by pixel.
    for (int x = rect.x0; x < rect.x1;) {
      const std::uint8_t a = a_row[x];
      const std::uint8_t* px = photo.pixels.data() + 3 * (row + x);
      if (a == 255 || a == 0) {
        int end = x + 1;
        while (end < rect.x1 && a_row[end] == a) ++end;
        const std::size_t n = static_cast<std::size_t>(end - x);
        if (ch == 4) {
          for (std::size_t k = 0; k < n; ++k) {
            out[4 * k] = px[3 * k], out[4 * k + 1] = px[3 * k + 1], out[4 * k + 2] = px[3 * k + 2];
            out[4 * k + 3] = a;
          }
        } else if (a == 255) {
          if (out != px) std::memmove(out, px, 3 * n);
        } else if (back) {
          std::memcpy(out, back->data() + 3 * (row + x), 3 * n);
        } else if (grey) {  // white, black, any grey: one byte value
          std::memset(out, colour[0], 3 * n);
        } else {
          for (std::size_t k = 0; k < n; ++k) {
            out[3 * k] = colour[0], out[3 * k + 1] = colour[1], out[3 * k + 2] = colour[2];
          }
        }
        out += n * ch;
        x = end;
        continue;
      }
      float f[3];
      if (clean) {
        clean->pixel(x, px, a, f);
      } else {
        for (int c = 0; c < 3; ++c) f[c] = static_cast<float>(px[c]) / 255.0F;
      }
      if (ch == 4) {
        out[0] = u8(f[0]), out[1] = u8(f[1]), out[2] = u8(f[2]), out[3] = a;
      } else {
        const std::uint8_t* bk = back ? back->data() + 3 * (row + x) : colour;
        const float al = static_cast<float>(a) / 255.0F;
        for (int c = 0; c < 3; ++c) out[c] = u8(al * f[c] + (1 - al) * (static_cast<float>(bk[c]) / 255.0F));
      }
      out += ch;
      ++x;
    }
  }
}

torch::Tensor composite_matte(const torch::Tensor& image, const Matte& matte, const Backdrop& backdrop,
                              Rect rect) {
  check_image(image);
  if (!matte.alpha.defined() || matte.alpha.dim() != 2 || matte.alpha.size(0) != image.size(0) ||
      matte.alpha.size(1) != image.size(1)) {
    throw Error("matte", "expected an alpha of the image's size");
  }
  c10::InferenceMode guard;
  Image photo;
  photo.height = static_cast<int>(image.size(0));
  photo.width = static_cast<int>(image.size(1));
  const torch::Tensor rgb = image.to(torch::kCPU).contiguous();
  photo.pixels.assign(rgb.data_ptr<std::uint8_t>(), rgb.data_ptr<std::uint8_t>() + rgb.numel());
  const torch::Tensor alpha = matte.alpha.to(torch::kCPU).contiguous();
  if (rect.width() <= 0 || rect.height() <= 0) rect = {0, 0, photo.width, photo.height};
  torch::Tensor out = torch::empty({rect.height(), rect.width(), backdrop.channels()}, torch::kUInt8);
  const bool cpu_fit = matte.fit && matte.fit->fg.device().is_cpu();
  composite_matte(photo, alpha.data_ptr<std::uint8_t>(), cpu_fit ? matte.fit.get() : nullptr, backdrop, rect,
                  out.data_ptr<std::uint8_t>());
  return out;
}

std::vector<std::uint8_t> encode_matte_cutout(Image& photo, const std::uint8_t* alpha, const RefineFit* fit,
                                              const Backdrop& backdrop, const Rect& rect, int jpeg_quality,
                                              bool in_place) {
  if (backdrop.transparent()) {
    return encode_png_rows(rect.width(), rect.height(), 4, [&](int y, std::uint8_t* dst) {
      composite_matte(photo, alpha, fit, backdrop, Rect{rect.x0, rect.y0 + y, rect.x1, rect.y0 + y + 1}, dst);
    });
  }
  const bool whole = rect.x0 == 0 && rect.y0 == 0 && rect.x1 == photo.width && rect.y1 == photo.height;
  if (whole && in_place) {
    composite_matte(photo, alpha, fit, backdrop, rect, photo.pixels.data());
    return encode_jpeg(photo, jpeg_quality);
  }
  Image out;
  out.width = rect.width();
  out.height = rect.height();
  out.pixels.resize(static_cast<std::size_t>(out.width) * out.height * 3);
  composite_matte(photo, alpha, fit, backdrop, rect, out.pixels.data());
  return encode_jpeg(out, jpeg_quality);
}

}  // namespace carseg
