#pragma once

#include <torch/types.h>

#include <array>
#include <vector>

#include "carseg/manifest.h"

namespace carseg {

/// docs/manifest.md's preprocessing and post-processing with torch ops, op for op as
/// python/carseg/preprocess.py, so that CPU results are bit-identical to the Python reference.
class Preprocessor {
 public:
  explicit Preprocessor(PreprocessSpec spec, torch::Device device = torch::kCPU);

  /// uint8 [H, W, 3] (any device) -> float32 [3, size, size] on this preprocessor's device.
  [[nodiscard]] torch::Tensor preprocess(const torch::Tensor& image_hwc_u8) const;
  /// Images of any sizes -> float32 [N, 3, size, size].
  [[nodiscard]] torch::Tensor preprocess_batch(const std::vector<torch::Tensor>& images) const;
  /// Logits [1, size, size] or [size, size] -> float32 logits [H, W] at the photo's own size.
  [[nodiscard]] torch::Tensor postprocess_logits(const torch::Tensor& logits, int height,
                                                 int width) const;
  /// float logits [H, W] -> uint8 mask [H, W] in {0, 1}: sigmoid(logits) > threshold.
  [[nodiscard]] static torch::Tensor mask_from_logits(const torch::Tensor& logits_hw,
                                                      double threshold);

  // Fused CPU kernels: the same geometry and arithmetic in one pass over the pixels, without
  // the full-resolution float images the op-for-op path allocates. Not bit-identical to it:
  // the float operations run in another order (measured: up to 3e-5 on normalized inputs, under
  // 0.002 of a grey level), so a mask pixel whose logit is that close to the threshold can flip.

  /// uint8 [H, W, 3] on the CPU -> writes float32 [3, size, size] at `out` (contiguous).
  void preprocess_fused(const torch::Tensor& image_hwc_u8, float* out) const;
  /// CPU images -> float32 [N, 3, size, size] on the CPU, through preprocess_fused.
  [[nodiscard]] torch::Tensor preprocess_batch_fused(const std::vector<torch::Tensor>& images) const;
  /// float logits [size, size] (or [1, size, size]) on the CPU -> uint8 mask [height, width]
  /// in {0, 1}: the padding cropped, resized and thresholded in one pass. The threshold is
  /// applied to the logit (sigmoid(x) > t  <=>  x > log(t / (1 - t))): no sigmoid per pixel.
  [[nodiscard]] torch::Tensor mask_fused(const torch::Tensor& logits, int height, int width,
                                         double threshold) const;

  [[nodiscard]] const PreprocessSpec& spec() const { return spec_; }
  [[nodiscard]] const torch::Device& device() const { return device_; }

 private:
  PreprocessSpec spec_;
  torch::Device device_;
  std::array<float, 3> mean_px_{};  // float32(mean) * max_pixel_value, rounded to float32
  std::array<float, 3> std_px_{};   // float32(std) * max_pixel_value, rounded to float32
  torch::Tensor mean_;  // [1, 3, 1, 1] float32 on device_: mean_px_
  torch::Tensor std_;   // [1, 3, 1, 1] float32 on device_: std_px_
};

/// Throws carseg::Error("image", "expected ..., got ...") unless uint8 [H, W, 3] with H, W >= 1.
void check_image(const torch::Tensor& image_hwc_u8);

}  // namespace carseg
