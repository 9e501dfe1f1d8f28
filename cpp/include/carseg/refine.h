#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "carseg/manifest.h"  // RefineSpec

namespace carseg {

/// One photo's refinement, fitted on a grid coarser than the photo (docs/manifest.md, output.refine;
/// python/carseg/runtime/refine.py Fit): the guided filter's mean coefficients, with the
/// filtered probability q = a . rgb + b for rgb in [0, 1], and the local mean colours of the car
/// (fg) and of the background (bg) for colour decontamination. All float32 on the fit's device.
struct RefineFit {
  torch::Tensor a;   // [3, h, w]
  torch::Tensor b;   // [h, w]
  torch::Tensor fg;  // [3, h, w] in [0, 1]
  torch::Tensor bg;  // [3, h, w] in [0, 1]
  /// Per coefficient cell, the least and greatest colour of the photo's pixels it averages
  /// ([3, h, w], CPU fits only): what lets apply_refinement skip the pixels whose value the
  /// coefficients settle whatever their colour.
  torch::Tensor lo, hi;
  float threshold = 0.5F;
  float softness = 0.5F;
};

/// The photo (uint8 [H, W, 3]) and the model's logits resized to the fitting grid
/// (spec.grid(H, W, size): what Preprocessor::postprocess_logits gives for that size) -> the
/// fit, on the photo's device. `size` is the model's input size.
[[nodiscard]] RefineFit fit_refinement(const torch::Tensor& image_hwc_u8,
                                       const torch::Tensor& logits_small, const RefineSpec& spec,
                                       double threshold, int size);

/// A photo's mask and soft alpha matte at its own size, and what made them.
struct Matte {
  torch::Tensor mask;   // uint8 [H, W] in {0, 1}: q > threshold
  torch::Tensor alpha;  // uint8 [H, W]: clamp((q - threshold) / softness + 0.5, 0, 1) * 255, rounded,
                        // above 127 exactly where the mask is set
  std::shared_ptr<const RefineFit> fit;  // null when the mask was not refined (alpha = mask * 255)
};

/// The fit applied at the photo's size. On the CPU only the pixels whose coefficients and
/// colour range leave q undecided are computed (the rest are 0 or 1 by the bound, exactly);
/// elsewhere torch ops over every pixel, as the Python reference. Both give the reference's
/// values up to float rounding. `undecided`, when given, receives the share of pixels computed.
[[nodiscard]] Matte apply_refinement(const torch::Tensor& image_hwc_u8,
                                     std::shared_ptr<const RefineFit> fit,
                                     double* undecided = nullptr);

namespace detail {
/// torch's bilinear source taps (align_corners=false) for output index `i` of `out` from `in`.
struct Tap {
  int i0 = 0, i1 = 0;
  float l0 = 1, l1 = 0;
};
[[nodiscard]] Tap tap(int i, int in, int out);
}  // namespace detail

/// The decontaminated colour of the car in a `width` x `height` photo, as refine.foreground in
/// Python: at a pixel of colour I and alpha a (1..254), with the local means F', B' of the fit,
/// F = F' + a (I - a F' - (1 - a) B'), clamped to [0, 1]. CPU fits only. The column taps are
/// made once a photo, and the local means interpolated along y once a row (on the row's first
/// soft pixel), not at every pixel of the edge.
class Decontaminator {
 public:
  Decontaminator(const RefineFit& fit, int width, int height);
  void set_row(int y);
  void pixel(int x, const std::uint8_t* rgb, std::uint8_t alpha, float* out);

 private:
  const float* fg_;
  const float* bg_;
  int w_, h_, height_;
  std::size_t plane_;
  std::vector<detail::Tap> xs_;
  detail::Tap ty_;
  std::vector<float> row_;  // fg's three planes and bg's along the current row: [6, w]
  bool row_ready_ = false;
};

}  // namespace carseg
