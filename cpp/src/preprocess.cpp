#include "carseg/preprocess.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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

// Source indices and weights of bilinear resampling along one axis, align_corners=False, as
// ATen computes them: src = scale * (dst + 0.5) - 0.5 clamped at 0, scale = in / out.
struct LinearAxis {
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
};

LinearAxis linear_axis(int64_t in, int64_t out) {
  LinearAxis a;
  a.i0.resize(out);
  a.i1.resize(out);
  a.w0.resize(out);
  a.w1.resize(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t d = 0; d < out; ++d) {
    if (in == out) {
      a.i0[d] = a.i1[d] = d;
      a.w0[d] = 1.0f;
      a.w1[d] = 0.0f;
      continue;
    }
    const float src = std::max(scale * (static_cast<float>(d) + 0.5f) - 0.5f, 0.0f);
    const int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);
    const float l = std::clamp(src - static_cast<float>(i0), 0.0f, 1.0f);
    a.i0[d] = i0;
    a.i1[d] = i0 + (i0 < in - 1 ? 1 : 0);
    a.w1[d] = l;
    a.w0[d] = 1.0f - l;
  }
  return a;
}

void check_cpu_u8(const torch::Tensor& image) {
  check_image(image);
  if (!image.device().is_cpu()) throw Error("image", "the fused kernels take CPU images");
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
  const torch::Tensor mean = torch::tensor({spec_.mean[0], spec_.mean[1], spec_.mean[2]}, opts) *
                             spec_.max_pixel_value;
  const torch::Tensor sd = torch::tensor({spec_.std[0], spec_.std[1], spec_.std[2]}, opts) *
                           spec_.max_pixel_value;
  // The fused kernels read the very same float32 values.
  for (int c = 0; c < 3; ++c) {
    mean_px_[c] = mean[c].item<float>();
    std_px_[c] = sd[c].item<float>();
  }
  mean_ = mean.view({1, 3, 1, 1}).to(device_);
  std_ = sd.view({1, 3, 1, 1}).to(device_);
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

void Preprocessor::preprocess_fused(const torch::Tensor& image_in, float* out) const {
  check_cpu_u8(image_in);
  const torch::Tensor image = image_in.contiguous();
  const int64_t h = image.size(0), w = image.size(1), s = spec_.size;
  const auto [nh, nw] = spec_.resized_shape(static_cast<int>(h), static_cast<int>(w));
  const LinearAxis ay = linear_axis(h, nh), ax = linear_axis(w, nw);
  const std::uint8_t* src = image.data_ptr<std::uint8_t>();
  float pad[3];
  for (int c = 0; c < 3; ++c) {
    pad[c] = (static_cast<float>(spec_.pad_value) - mean_px_[c]) / std_px_[c];
  }
  const int64_t plane = s * s;
  at::parallel_for(0, s, 16, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y) {
      float* row[3] = {out + y * s, out + plane + y * s, out + 2 * plane + y * s};
      if (y >= nh) {
        for (int c = 0; c < 3; ++c) std::fill(row[c], row[c] + s, pad[c]);
        continue;
      }
      const std::uint8_t* r0 = src + ay.i0[y] * w * 3;
      const std::uint8_t* r1 = src + ay.i1[y] * w * 3;
      const float wy0 = ay.w0[y], wy1 = ay.w1[y];
      for (int64_t x = 0; x < nw; ++x) {
        const int64_t a = ax.i0[x] * 3, b = ax.i1[x] * 3;
        const float wx0 = ax.w0[x], wx1 = ax.w1[x];
        for (int c = 0; c < 3; ++c) {
          const float t0 = static_cast<float>(r0[a + c]) * wx0 + static_cast<float>(r0[b + c]) * wx1;
          const float t1 = static_cast<float>(r1[a + c]) * wx0 + static_cast<float>(r1[b + c]) * wx1;
          row[c][x] = (t0 * wy0 + t1 * wy1 - mean_px_[c]) / std_px_[c];
        }
      }
      for (int c = 0; c < 3; ++c) std::fill(row[c] + nw, row[c] + s, pad[c]);
    }
  });
}

torch::Tensor Preprocessor::preprocess_batch_fused(const std::vector<torch::Tensor>& images) const {
  if (images.empty()) throw Error("images", "expected at least one image, got an empty list");
  const int64_t s = spec_.size;
  torch::Tensor out = torch::empty({static_cast<int64_t>(images.size()), 3, s, s}, torch::kFloat32);
  float* p = out.data_ptr<float>();
  for (std::size_t i = 0; i < images.size(); ++i) preprocess_fused(images[i], p + i * 3 * s * s);
  return out;
}

torch::Tensor Preprocessor::mask_fused(const torch::Tensor& logits_in, int height, int width,
                                       double threshold) const {
  if (!(threshold > 0.0 && threshold < 1.0))
    throw Error("threshold", "expected a value in (0, 1), got " + std::to_string(threshold));
  torch::Tensor logits = logits_in;
  if (logits.dim() == 3 && logits.size(0) == 1) logits = logits[0];
  const int64_t s = spec_.size;
  if (logits.dim() != 2 || logits.size(0) != s || logits.size(1) != s || !logits.device().is_cpu()) {
    throw Error("logits", "expected CPU logits [" + std::to_string(s) + ", " + std::to_string(s) +
                              "], got " + shape_of(logits));
  }
  logits = logits.to(torch::kFloat32).contiguous();
  const auto [nh, nw] = spec_.resized_shape(height, width);
  const LinearAxis ay = linear_axis(nh, height), ax = linear_axis(nw, width);
  const float cut = static_cast<float>(std::log(threshold / (1.0 - threshold)));
  const float* src = logits.data_ptr<float>();
  torch::Tensor mask = torch::empty({height, width}, torch::kUInt8);
  std::uint8_t* dst = mask.data_ptr<std::uint8_t>();
  // Output columns that blend the same two source columns, as runs [begin, end).
  std::vector<int64_t> runs = {0};
  for (int64_t x = 1; x < width; ++x) {
    if (ax.i0[x] != ax.i0[x - 1] || ax.i1[x] != ax.i1[x - 1]) runs.push_back(x);
  }
  runs.push_back(width);
  at::parallel_for(0, height, 64, [&](int64_t y0, int64_t y1) {
    // Upsampling: many output rows share a pair of source rows. Blend the pair once (nw
    // values), then each output pixel is one blend along x.
    std::vector<float> blended(static_cast<std::size_t>(nw));
    for (int64_t y = y0; y < y1; ++y) {
      const float* r0 = src + ay.i0[y] * s;
      const float* r1 = src + ay.i1[y] * s;
      const float wy0 = ay.w0[y], wy1 = ay.w1[y];
      for (int64_t j = 0; j < nw; ++j) blended[j] = r0[j] * wy0 + r1[j] * wy1;
      std::uint8_t* out = dst + y * width;
      for (std::size_t k = 0; k + 1 < runs.size(); ++k) {
        const int64_t xb = runs[k], xe = runs[k + 1];
        const float b0 = blended[ax.i0[xb]], b1 = blended[ax.i1[xb]];
        // Every blend of b0 and b1 lies between them: where both are clearly on one side of
        // the cut (by far more than rounding), the whole run is that side.
        const float margin = 1e-5f * (1.0f + std::max(std::abs(b0), std::abs(b1)));
        if (std::min(b0, b1) > cut + margin) {
          std::memset(out + xb, 1, static_cast<std::size_t>(xe - xb));
        } else if (std::max(b0, b1) < cut - margin) {
          std::memset(out + xb, 0, static_cast<std::size_t>(xe - xb));
        } else {
          for (int64_t x = xb; x < xe; ++x) out[x] = b0 * ax.w0[x] + b1 * ax.w1[x] > cut ? 1 : 0;
        }
      }
    }
  });
  return mask;
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
