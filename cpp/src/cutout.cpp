#include "carseg/cutout.h"

#include <c10/core/InferenceMode.h>

#include <cstring>
#include <sstream>

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

Background parse_background(const std::string& s) {
  if (s == "white") return Background::kWhite;
  if (s == "transparent") return Background::kTransparent;
  throw OptionError("background", "expected white or transparent, got \"" + s + "\"");
}

std::string to_string(Background background) {
  return background == Background::kWhite ? "white" : "transparent";
}

int cutout_channels(Background background) { return background == Background::kWhite ? 3 : 4; }

std::string cutout_suffix(Background background) {
  return background == Background::kWhite ? ".jpg" : ".png";
}

void composite(const std::uint8_t* rgb, const std::uint8_t* mask, std::size_t n,
               Background background, std::uint8_t* dst) {
  if (background == Background::kTransparent) {
    for (std::size_t i = 0; i < n; ++i) {
      dst[4 * i] = rgb[3 * i];
      dst[4 * i + 1] = rgb[3 * i + 1];
      dst[4 * i + 2] = rgb[3 * i + 2];
      dst[4 * i + 3] = mask[i] ? 255 : 0;
    }
    return;
  }
  // Car and background come in long runs: whole runs are copied or filled.
  for (std::size_t i = 0; i < n;) {
    const bool car = mask[i] != 0;
    std::size_t j = i + 1;
    while (j < n && (mask[j] != 0) == car) ++j;
    if (car) {
      if (dst != rgb) std::memcpy(dst + 3 * i, rgb + 3 * i, 3 * (j - i));
    } else {
      std::memset(dst + 3 * i, 255, 3 * (j - i));
    }
    i = j;
  }
}

torch::Tensor composite_cutout(const torch::Tensor& image, const torch::Tensor& mask,
                               Background background) {
  check_image(image);
  if (mask.dim() != 2 || mask.size(0) != image.size(0) || mask.size(1) != image.size(1)) {
    std::ostringstream got;
    got << mask.sizes();
    throw Error("mask", "expected shape [" + std::to_string(image.size(0)) + ", " +
                            std::to_string(image.size(1)) + "] (the image's), got " + got.str());
  }
  c10::InferenceMode guard;
  const torch::Tensor rgb = image.to(torch::kCPU).contiguous();
  const torch::Tensor car = mask.to(torch::kCPU).to(torch::kUInt8).contiguous();
  torch::Tensor out = torch::empty({image.size(0), image.size(1), cutout_channels(background)},
                                   torch::TensorOptions().dtype(torch::kUInt8));
  composite(rgb.data_ptr<std::uint8_t>(), car.data_ptr<std::uint8_t>(),
            static_cast<std::size_t>(car.numel()), background, out.data_ptr<std::uint8_t>());
  return out;
}

std::vector<std::uint8_t> encode_cutout(const Image& image, const std::uint8_t* mask,
                                        Background background, int jpeg_quality) {
  const std::size_t w = static_cast<std::size_t>(image.width);
  const std::size_t n = checked_pixel_count(image);
  if (background == Background::kTransparent) {
    return encode_png_rows(image.width, image.height, 4, [&](int y, std::uint8_t* dst) {
      const std::size_t row = w * static_cast<std::size_t>(y);
      composite(image.pixels.data() + 3 * row, mask + row, w, background, dst);
    });
  }
  Image white;
  white.width = image.width;
  white.height = image.height;
  white.pixels.resize(3 * n);
  composite(image.pixels.data(), mask, n, background, white.pixels.data());
  return encode_jpeg(white, jpeg_quality);
}

std::vector<std::uint8_t> encode_cutout_in_place(Image& image, const std::uint8_t* mask,
                                                 Background background, int jpeg_quality) {
  if (background != Background::kWhite) return encode_cutout(image, mask, background, jpeg_quality);
  composite(image.pixels.data(), mask, checked_pixel_count(image), background, image.pixels.data());
  return encode_jpeg(image, jpeg_quality);
}

}  // namespace carseg
