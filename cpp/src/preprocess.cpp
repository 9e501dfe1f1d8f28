#include "carseg/preprocess.h"

#include <sstream>

#include "carseg/error.h"

namespace carseg {
namespace {

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream ss;
  ss << t.sizes();
  return ss.str();
}

torch::Tensor bilinear(const torch::Tensor& x, int height, int width) {
  // F.interpolate(mode="bilinear", align_corners=False, antialias=False) with an explicit size.
  return at::upsample_bilinear2d(x, {height, width}, /*align_corners=*/false);
}

}  // namespace

void check_image(const torch::Tensor& image) {
  if (!image.defined()) throw Error("image", "expected a tensor, got an undefined one");
  if (image.scalar_type() != torch::kUInt8) {
    throw Error("image", std::string("expected dtype uint8, got ") +
                             std::string(c10::toString(image.scalar_type())));
  }
  if (image.dim() != 3 || image.size(2) != 3)
    throw Error("image", "expected shape [H, W, 3], got " + shape_of(image));
  if (image.size(0) < 1 || image.size(1) < 1)
    throw Error("image", "expected a non-empty image, got " + shape_of(image));
}

Preprocessor::Preprocessor(PreprocessSpec spec, torch::Device device)
    : spec_(std::move(spec)), device_(device) {
  spec_.validate();
  // Same construction as Python: float32 tensor of the constants, times max_pixel_value.
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  mean_ = (torch::tensor({spec_.mean[0], spec_.mean[1], spec_.mean[2]}, opts) *
           spec_.max_pixel_value).view({1, 3, 1, 1}).to(device_);
  std_ = (torch::tensor({spec_.std[0], spec_.std[1], spec_.std[2]}, opts) *
          spec_.max_pixel_value).view({1, 3, 1, 1}).to(device_);
}

torch::Tensor Preprocessor::preprocess(const torch::Tensor& image) const {
  check_image(image);
  const int h = static_cast<int>(image.size(0));
  const int w = static_cast<int>(image.size(1));
  const auto [nh, nw] = spec_.resized_shape(h, w);
  torch::Tensor x = image.to(device_, /*non_blocking=*/true).permute({2, 0, 1}).unsqueeze(0)
                        .to(torch::kFloat32);
  if (nh != h || nw != w) x = bilinear(x, nh, nw);
  x = at::constant_pad_nd(x, {0, spec_.size - nw, 0, spec_.size - nh}, spec_.pad_value);
  return ((x - mean_) / std_)[0];
}

torch::Tensor Preprocessor::preprocess_batch(const std::vector<torch::Tensor>& images) const {
  if (images.empty()) throw Error("images", "expected at least one image, got an empty list");
  std::vector<torch::Tensor> out;
  out.reserve(images.size());
  for (const auto& im : images) out.push_back(preprocess(im));
  return torch::stack(out);
}

torch::Tensor Preprocessor::postprocess_logits(const torch::Tensor& logits_in, int height,
                                               int width) const {
  torch::Tensor logits = logits_in;
  if (logits.dim() == 3) {
    if (logits.size(0) != 1)
      throw Error("logits", "expected one channel, got shape " + shape_of(logits));
    logits = logits[0];
  }
  if (logits.dim() != 2 || logits.size(0) != spec_.size || logits.size(1) != spec_.size) {
    throw Error("logits", "expected [" + std::to_string(spec_.size) + ", " +
                              std::to_string(spec_.size) + "], got " + shape_of(logits));
  }
  const auto [nh, nw] = spec_.resized_shape(height, width);
  using torch::indexing::Slice;
  torch::Tensor crop = logits.index({Slice(0, nh), Slice(0, nw)}).to(torch::kFloat32)
                           .unsqueeze(0).unsqueeze(0);
  if (nh != height || nw != width) crop = bilinear(crop, height, width);
  return crop[0][0];
}

torch::Tensor Preprocessor::mask_from_logits(const torch::Tensor& logits_hw, double threshold) {
  if (!(threshold > 0.0 && threshold < 1.0))
    throw Error("threshold", "expected a value in (0, 1), got " + std::to_string(threshold));
  return torch::sigmoid(logits_hw).gt(threshold).to(torch::kUInt8);
}

}  // namespace carseg
