#pragma once

#include <torch/types.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "carseg/image_io.h"
#include "carseg/refine.h"

namespace carseg {

/// What replaces the background of a cutout. White cutouts are written as JPEG (a photo on
/// white), transparent ones as PNG with the mask as alpha.
enum class Background { kWhite, kTransparent };

[[nodiscard]] std::string to_string(Background background);
/// The file suffix of a cutout: ".jpg" (white) or ".png" (transparent).
[[nodiscard]] std::string cutout_suffix(Background background);

// ---- cutouts from a matte: soft edges, any backdrop, decontaminated colour -------------------

/// What is put behind the car: a colour, an image, or nothing (transparent PNG).
class Backdrop {
 public:
  enum class Kind { kColour, kTransparent, kImage };

  /// White, the default.
  Backdrop() = default;
  /// "white", "transparent", "#RRGGBB", or the path of an image file (read and decoded now).
  /// Throws OptionError("background", ...) naming what is wrong.
  [[nodiscard]] static Backdrop parse(const std::string& s);
  /// White or transparent (implicit: where a Background was taken, a Backdrop is).
  Backdrop(Background background)  // NOLINT(google-explicit-constructor)
      : kind_(background == Background::kTransparent ? Kind::kTransparent : Kind::kColour) {}

  [[nodiscard]] Kind kind() const { return kind_; }
  [[nodiscard]] bool transparent() const { return kind_ == Kind::kTransparent; }
  [[nodiscard]] const std::array<std::uint8_t, 3>& colour() const { return colour_; }
  /// ".png" (transparent) or ".jpg".
  [[nodiscard]] std::string suffix() const { return transparent() ? ".png" : ".jpg"; }
  /// Bytes a composited pixel: 4 (RGBA) or 3.
  [[nodiscard]] int channels() const { return transparent() ? 4 : 3; }
  /// "white", "transparent", "#RRGGBB" or "image PATH (WxH)".
  [[nodiscard]] std::string describe() const;
  /// An image backdrop resized (bilinear) to width x height, RGB; the last few sizes are kept.
  /// Null for a colour or transparent backdrop.
  [[nodiscard]] std::shared_ptr<const std::vector<std::uint8_t>> pixels(int width, int height) const;

 private:
  struct Cache {
    std::mutex mu;
    std::vector<std::pair<std::pair<int, int>, std::shared_ptr<const std::vector<std::uint8_t>>>> sized;
  };
  Kind kind_ = Kind::kColour;
  std::array<std::uint8_t, 3> colour_{255, 255, 255};
  std::string path_;
  std::shared_ptr<const Image> image_;
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();
};

/// A rectangle of a photo: columns [x0, x1), rows [y0, y1).
struct Rect {
  int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  [[nodiscard]] int width() const { return x1 - x0; }
  [[nodiscard]] int height() const { return y1 - y0; }
};

/// The car's bounding box in an alpha matte (alpha > 0), grown by `margin` pixels a side and
/// clipped to the photo; the whole photo where the matte is empty.
[[nodiscard]] Rect crop_box(const std::uint8_t* alpha, int width, int height, int margin);

/// The cutout of `photo` over `rect` from its alpha matte (0..255): where alpha is 255 the
/// photo's pixel, where 0 the backdrop's (transparent: the photo's RGB with alpha 0), between
/// them alpha * F + (1 - alpha) * backdrop, with F the decontaminated car colour
/// (Decontaminator, refine.h) when `fit` is given, else the photo's. A hard matte (mask * 255,
/// no fit) gives the photo on the car and the backdrop elsewhere: the unrefined cutout. `dst`
/// holds rect.width() * rect.height() * backdrop.channels() bytes; it may be photo.pixels
/// itself when rect is the whole photo and the backdrop is not transparent.
void composite_matte(const Image& photo, const std::uint8_t* alpha, const RefineFit* fit,
                     const Backdrop& backdrop, const Rect& rect, std::uint8_t* dst);

/// composite_matte over tensors: uint8 [H, W, 3] photo and uint8 [H, W] alpha (CPU) -> uint8
/// [h, w, 3] or [h, w, 4] of `rect` (the whole photo when empty).
[[nodiscard]] torch::Tensor composite_matte(const torch::Tensor& image_hwc_u8, const Matte& matte,
                                            const Backdrop& backdrop, Rect rect = {});

/// The cutout encoded: JPEG of `jpeg_quality` or RGBA PNG. `in_place`: the photo's pixels may
/// be overwritten (a caller done with them saves a copy).
[[nodiscard]] std::vector<std::uint8_t> encode_matte_cutout(Image& photo, const std::uint8_t* alpha,
                                                            const RefineFit* fit, const Backdrop& backdrop,
                                                            const Rect& rect, int jpeg_quality,
                                                            bool in_place);

}  // namespace carseg
