#pragma once

#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "carseg/image_io.h"

namespace carseg {

/// What replaces the background of a cutout. White cutouts are written as JPEG (a photo on
/// white), transparent ones as PNG with the mask as alpha.
enum class Background { kWhite, kTransparent };

/// "white" or "transparent"; throws OptionError("background", ...) on anything else.
[[nodiscard]] Background parse_background(const std::string& s);
[[nodiscard]] std::string to_string(Background background);
/// Channels of a composited pixel: 3 (white) or 4 (RGBA).
[[nodiscard]] int cutout_channels(Background background);
/// The file suffix of a cutout: ".jpg" (white) or ".png" (transparent).
[[nodiscard]] std::string cutout_suffix(Background background);

/// The one compositing rule, for every caller: `n` RGB pixels at `rgb` and their mask
/// (nonzero = car) -> `dst`. White: the photo's RGB on the car, 255 elsewhere (3 bytes a
/// pixel; `dst` may be `rgb`, for in place). Transparent: the photo's RGB everywhere and
/// alpha 255 on the car, 0 elsewhere (4 bytes a pixel; `dst` must not overlap `rgb`).
void composite(const std::uint8_t* rgb, const std::uint8_t* mask, std::size_t n,
               Background background, std::uint8_t* dst);

/// composite() over tensors: `image` uint8 [H, W, 3] and `mask` uint8 [H, W] (any device) ->
/// uint8 [H, W, 3] (white) or [H, W, 4] (RGBA) on the CPU. Throws carseg::Error when the
/// shapes do not match.
[[nodiscard]] torch::Tensor composite_cutout(const torch::Tensor& image_hwc_u8,
                                             const torch::Tensor& mask_hw, Background background);

/// The cutout encoded: a JPEG of `jpeg_quality` on white, or an RGBA PNG.
[[nodiscard]] std::vector<std::uint8_t> encode_cutout(const Image& image, const std::uint8_t* mask,
                                                      Background background,
                                                      int jpeg_quality = 95);
/// encode_cutout for a caller done with the photo: a white background is painted into
/// `image`'s own pixels (no copy), which hold the cutout afterwards. The bytes are the same.
[[nodiscard]] std::vector<std::uint8_t> encode_cutout_in_place(Image& image,
                                                               const std::uint8_t* mask,
                                                               Background background,
                                                               int jpeg_quality = 95);

}  // namespace carseg
