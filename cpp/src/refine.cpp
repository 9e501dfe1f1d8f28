#include "carseg/refine.h"

#include <ATen/ops/linalg_solve.h>
#include <ATen/ops/upsample_bilinear2d.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "carseg/error.h"
#include "carseg/preprocess.h"

// x86-64: an AVX2 clone and a baseline one of a hot loop, the CPU's pick made once at load time
// (GCC and Clang function multiversioning); elsewhere the one baseline version.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CARSEG_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CARSEG_AVX2_CLONES
#endif

namespace carseg {

detail::Tap detail::tap(int i, int in, int out) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  float src = scale * (static_cast<float>(i) + 0.5F) - 0.5F;
  if (src < 0) src = 0;
  Tap t;
  t.i0 = static_cast<int>(src);
  t.i1 = t.i0 + (t.i0 < in - 1 ? 1 : 0);
  t.l1 = src - static_cast<float>(t.i0);
  t.l0 = 1.0F - t.l1;
  return t;
}

namespace {

// Mean over the (2r+1)^2 window of [..., H, W], clipped at the border, by running sums in float64
// (refine.box in Python): along the rows, then down the columns, each as prefix sums
// (c[hi] - c[lo]) / count. On the CPU by plain loops (torch's ops cost more in dispatch than
// in arithmetic at these grid sizes), elsewhere by torch ops; both as the reference.
// box_planes: the CPU loops, over `planes` float32 planes of H x W from `src` into `dst`.
void box_planes(const float* src, int64_t planes, int64_t H, int64_t W, int r, float* dst) {
  std::vector<double> rows(static_cast<std::size_t>(H * W)), c(static_cast<std::size_t>(W + 1)),
      down(static_cast<std::size_t>((H + 1) * W));
  for (int64_t k = 0; k < planes; ++k) {
    const float* p = src + k * H * W;
    for (int64_t y = 0; y < H; ++y) {
      c[0] = 0;
      for (int64_t i = 0; i < W; ++i) c[static_cast<std::size_t>(i + 1)] = c[static_cast<std::size_t>(i)] + p[y * W + i];
      for (int64_t i = 0; i < W; ++i) {
        const int64_t hi = std::min(i + r + 1, W), lo = std::max<int64_t>(i - r, 0);
        rows[static_cast<std::size_t>(y * W + i)] =
            (c[static_cast<std::size_t>(hi)] - c[static_cast<std::size_t>(lo)]) / static_cast<double>(hi - lo);
      }
    }
    // Down the columns: the prefix sums of every column at once, a row of them at a time
    // (the same additions in the same order as one column at a time, but contiguous).
    float* q = dst + k * H * W;
    for (int64_t xcol = 0; xcol < W; ++xcol) down[static_cast<std::size_t>(xcol)] = 0;
    for (int64_t i = 0; i < H; ++i) {
      const double* above = down.data() + i * W;
      const double* in_row = rows.data() + i * W;
      double* next = down.data() + (i + 1) * W;
      for (int64_t xcol = 0; xcol < W; ++xcol) next[xcol] = above[xcol] + in_row[xcol];
    }
    for (int64_t i = 0; i < H; ++i) {
      const int64_t hi = std::min(i + r + 1, H), lo = std::max<int64_t>(i - r, 0);
      const double count = static_cast<double>(hi - lo);
      const double* top = down.data() + lo * W;
      const double* bottom = down.data() + hi * W;
      for (int64_t xcol = 0; xcol < W; ++xcol) {
        q[i * W + xcol] = static_cast<float>((bottom[xcol] - top[xcol]) / count);
      }
    }
  }
}

torch::Tensor box(const torch::Tensor& x, int r) {
  const int64_t H = x.size(-2), W = x.size(-1);
  if (x.device().is_cpu() && x.scalar_type() == torch::kFloat32) {
    const torch::Tensor in = x.contiguous();
    torch::Tensor out = torch::empty_like(in);
    box_planes(in.data_ptr<float>(), in.numel() / std::max<int64_t>(1, H * W), H, W, r, out.data_ptr<float>());
    return out;
  }
  auto along = [&](const torch::Tensor& t, int64_t dim) {
    const int64_t n = t.size(dim);
    torch::Tensor c = torch::cumsum(t, dim, torch::kFloat64);
    c = torch::cat({torch::zeros_like(c.narrow(dim, 0, 1)), c}, dim);
    const torch::Tensor idx = torch::arange(n, torch::TensorOptions().device(t.device()));
    const torch::Tensor hi = (idx + r + 1).clamp_max(n), lo = (idx - r).clamp_min(0);
    std::vector<int64_t> shape(static_cast<std::size_t>(t.dim()), 1);
    shape[static_cast<std::size_t>(dim)] = n;
    const torch::Tensor count = (hi - lo).to(torch::kFloat64).view(shape);
    return (c.index_select(dim, hi) - c.index_select(dim, lo)) / count;
  };
  return along(along(x, x.dim() - 1), x.dim() - 2).to(x.scalar_type());
}

// The guided filter's mean coefficients (refine.guided_coefficients, op for op: the window
// means in two box() calls over stacked channels): a [3, h, w], b [h, w].
std::pair<torch::Tensor, torch::Tensor> guided_coefficients(const torch::Tensor& guide,
                                                            const torch::Tensor& p, int r, double eps) {
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(guide.device());
  const torch::Tensor i = torch::tensor({0, 0, 0, 1, 1, 2}, opts), j = torch::tensor({0, 1, 2, 1, 2, 2}, opts);
  const torch::Tensor stats =
      box(torch::cat({guide, p.unsqueeze(0), guide * p, guide.index_select(0, i) * guide.index_select(0, j)}), r);
  const torch::Tensor mi = stats.narrow(0, 0, 3), mp = stats.select(0, 3), mip = stats.narrow(0, 4, 3),
                      mii = stats.narrow(0, 7, 6);
  const torch::Tensor cov = mip - mi * mp;
  const torch::Tensor var = mii - mi.index_select(0, i) * mi.index_select(0, j);
  const torch::Tensor order = torch::tensor({0, 1, 2, 1, 3, 4, 2, 4, 5}, opts);
  torch::Tensor sigma = var.index_select(0, order).reshape({3, 3, p.size(0), p.size(1)});
  sigma = sigma + eps * torch::eye(3, guide.options()).unsqueeze(-1).unsqueeze(-1);
  torch::Tensor a = at::linalg_solve(sigma.permute({2, 3, 0, 1}), cov.permute({1, 2, 0}).unsqueeze(-1))
                        .select(-1, 0)
                        .permute({2, 0, 1});
  const torch::Tensor b = mp - (a * mi).sum(0);
  const torch::Tensor ab = box(torch::cat({a, b.unsqueeze(0)}), r);
  return {ab.narrow(0, 0, 3), ab.select(0, 3)};
}

// The fit on the CPU from the pooled guide ([3, h, w]) and the grid's probabilities ([h, w]):
// guided_coefficients, soft_alpha and the local colour means of fit_refinement, in plain loops
// over the grid (about 40 torch ops, each a pass over a 10,000-cell grid plus dispatch, and a
// batched LAPACK solve cost more than the arithmetic). Each 3x3 system sigma a = cov is solved
// in float64 by its adjugate (sigma is symmetric positive definite: a covariance plus eps I);
// the reference solves it in float32 by LU, so a differs from the reference's by float rounding.
void fit_cpu(const float* guide, const float* prob, int h, int w, int r, double eps, float threshold,
             float softness, RefineFit& f) {
  const std::size_t n = static_cast<std::size_t>(h) * static_cast<std::size_t>(w);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  static constexpr int kI[6] = {0, 0, 0, 1, 1, 2}, kJ[6] = {0, 1, 2, 1, 2, 2};
  // The 13 planes box() averages: guide, p, guide * p, guide_i * guide_j (as the reference).
  std::vector<float> in(13 * n), stats(13 * n);
  std::memcpy(in.data(), guide, 3 * n * sizeof(float));
  std::memcpy(in.data() + 3 * n, prob, n * sizeof(float));
  for (std::size_t k = 0; k < n; ++k) {
    for (int c = 0; c < 3; ++c) in[(4 + c) * n + k] = guide[c * n + k] * prob[k];
    for (int e = 0; e < 6; ++e) in[(7 + e) * n + k] = guide[kI[e] * n + k] * guide[kJ[e] * n + k];
  }
  box_planes(in.data(), 13, h, w, r, stats.data());
  // a (3 planes) and b, then their window means.
  std::vector<float> ab(4 * n);
  const float feps = static_cast<float>(eps);
  for (std::size_t k = 0; k < n; ++k) {
    float mi[3], cov[3], var[6];
    const float mp = stats[3 * n + k];
    for (int c = 0; c < 3; ++c) {
      mi[c] = stats[c * n + k];
      cov[c] = stats[(4 + c) * n + k] - mi[c] * mp;
    }
    for (int e = 0; e < 6; ++e) var[e] = stats[(7 + e) * n + k] - mi[kI[e]] * mi[kJ[e]];
    const double s00 = var[0] + feps, s01 = var[1], s02 = var[2], s11 = var[3] + feps, s12 = var[4],
                 s22 = var[5] + feps;
    const double c00 = s11 * s22 - s12 * s12, c01 = s02 * s12 - s01 * s22, c02 = s01 * s12 - s02 * s11;
    const double c11 = s00 * s22 - s02 * s02, c12 = s01 * s02 - s00 * s12, c22 = s00 * s11 - s01 * s01;
    const double det = s00 * c00 + s01 * c01 + s02 * c02;
    const double v0 = cov[0], v1 = cov[1], v2 = cov[2];
    // A singular system (only where rounding cancels a tiny eps) has no solution to take:
    // a = 0 there, so that q is the window's mean probability.
    const bool solvable = det != 0 && std::isfinite(det);
    const float a[3] = {static_cast<float>(solvable ? (c00 * v0 + c01 * v1 + c02 * v2) / det : 0),
                        static_cast<float>(solvable ? (c01 * v0 + c11 * v1 + c12 * v2) / det : 0),
                        static_cast<float>(solvable ? (c02 * v0 + c12 * v1 + c22 * v2) / det : 0)};
    for (int c = 0; c < 3; ++c) ab[c * n + k] = a[c];
    ab[3 * n + k] = mp - (a[0] * mi[0] + a[1] * mi[1] + a[2] * mi[2]);
  }
  f.a = torch::empty({3, h, w}, opts);
  f.b = torch::empty({h, w}, opts);
  std::vector<float> mean_ab(4 * n);
  box_planes(ab.data(), 4, h, w, r, mean_ab.data());
  std::memcpy(f.a.data_ptr<float>(), mean_ab.data(), 3 * n * sizeof(float));
  std::memcpy(f.b.data_ptr<float>(), mean_ab.data() + 3 * n, n * sizeof(float));
  // The grid's own soft alpha, and the means of car and background colour around each cell.
  const float* A = mean_ab.data();
  for (std::size_t k = 0; k < n; ++k) {
    const float q = A[k] * guide[k] + A[n + k] * guide[n + k] + A[2 * n + k] * guide[2 * n + k] + A[3 * n + k];
    const float alpha = std::clamp((q - threshold) / softness + 0.5F, 0.0F, 1.0F);
    for (int c = 0; c < 3; ++c) {
      in[c * n + k] = guide[c * n + k] * alpha;
      in[(4 + c) * n + k] = guide[c * n + k] * (1 - alpha);
    }
    in[3 * n + k] = alpha;
    in[7 * n + k] = 1 - alpha;
  }
  box_planes(in.data(), 8, h, w, r, stats.data());
  f.fg = torch::empty({3, h, w}, opts);
  f.bg = torch::empty({3, h, w}, opts);
  float* fg = f.fg.data_ptr<float>();
  float* bg = f.bg.data_ptr<float>();
  for (std::size_t k = 0; k < n; ++k) {
    const float car = std::max(stats[3 * n + k], 1e-6F), back = std::max(stats[7 * n + k], 1e-6F);
    for (int c = 0; c < 3; ++c) {
      fg[c * n + k] = std::clamp(stats[c * n + k] / car, 0.0F, 1.0F);
      bg[c * n + k] = std::clamp(stats[(4 + c) * n + k] / back, 0.0F, 1.0F);
    }
  }
}

torch::Tensor soft_alpha(const torch::Tensor& q, double threshold, double softness) {
  return ((q - threshold) / softness + 0.5).clamp_(0, 1);
}

// One row of the photo added into the running column sums, minima and maxima of pool_photo.
// The sums are 16-bit where a band of rows cannot overflow them (257 rows of 255), which
// doubles the lanes of each AVX2 add. Two overloads, not a template: Clang refuses
// target_clones on a template.
#define CARSEG_ACCUMULATE_ROW(Sum)                                                             \
  CARSEG_AVX2_CLONES void accumulate_row(const std::uint8_t* __restrict row, std::size_t n,   \
                                         Sum* __restrict sum, std::uint8_t* __restrict rmin, \
                                         std::uint8_t* __restrict rmax) {                     \
    for (std::size_t k = 0; k < n; ++k) {                                                      \
      sum[k] = static_cast<Sum>(sum[k] + row[k]);                                              \
      rmin[k] = std::min(rmin[k], row[k]);                                                     \
      rmax[k] = std::max(rmax[k], row[k]);                                                     \
    }                                                                                          \
  }
CARSEG_ACCUMULATE_ROW(std::uint16_t)
CARSEG_ACCUMULATE_ROW(std::uint32_t)
#undef CARSEG_ACCUMULATE_ROW

// Adaptive average pooling of a uint8 photo to [3, h, w] in [0, 1] (output cell i covers rows
// floor(i*H/h) to ceil((i+1)*H/h), as torch's), by exact integer sums, with each cell's least
// and greatest colour.
template <typename Sum>
void pool_photo_as(const std::uint8_t* rgb, int H, int W, int h, int w, float* mean, float* lo, float* hi) {
  std::vector<Sum> sum(static_cast<std::size_t>(W) * 3);
  std::vector<std::uint8_t> rmin(static_cast<std::size_t>(W) * 3), rmax(static_cast<std::size_t>(W) * 3);
  const std::size_t plane = static_cast<std::size_t>(h) * static_cast<std::size_t>(w);
  std::vector<int> x0(static_cast<std::size_t>(w)), x1(static_cast<std::size_t>(w));
  for (int j = 0; j < w; ++j) {
    x0[static_cast<std::size_t>(j)] = static_cast<int>(static_cast<int64_t>(j) * W / w);
    x1[static_cast<std::size_t>(j)] = static_cast<int>((static_cast<int64_t>(j + 1) * W + w - 1) / w);
  }
  for (int i = 0; i < h; ++i) {
    const int y0 = static_cast<int>(static_cast<int64_t>(i) * H / h);
    const int y1 = static_cast<int>((static_cast<int64_t>(i + 1) * H + h - 1) / h);
    std::fill(sum.begin(), sum.end(), Sum{0});
    std::fill(rmin.begin(), rmin.end(), std::uint8_t{255});
    std::fill(rmax.begin(), rmax.end(), std::uint8_t{0});
    for (int y = y0; y < y1; ++y) {
      accumulate_row(rgb + static_cast<std::size_t>(y) * W * 3, sum.size(), sum.data(), rmin.data(), rmax.data());
    }
    for (int j = 0; j < w; ++j) {
      const int a = x0[static_cast<std::size_t>(j)], b = x1[static_cast<std::size_t>(j)];
      const double count = static_cast<double>(y1 - y0) * (b - a) * 255.0;
      std::uint64_t s[3] = {0, 0, 0};
      std::uint8_t mn[3] = {255, 255, 255}, mx[3] = {0, 0, 0};
      for (std::size_t k = static_cast<std::size_t>(a) * 3; k < static_cast<std::size_t>(b) * 3; k += 3) {
        for (std::size_t c = 0; c < 3; ++c) {
          s[c] += sum[k + c];
          mn[c] = std::min(mn[c], rmin[k + c]);
          mx[c] = std::max(mx[c], rmax[k + c]);
        }
      }
      for (int c = 0; c < 3; ++c) {
        const std::size_t o = c * plane + static_cast<std::size_t>(i) * w + j;
        mean[o] = static_cast<float>(static_cast<double>(s[c]) / count);
        lo[o] = static_cast<float>(mn[c]) / 255.0F;
        hi[o] = static_cast<float>(mx[c]) / 255.0F;
      }
    }
  }
}

void pool_photo(const std::uint8_t* rgb, int H, int W, int h, int w, float* mean, float* lo, float* hi) {
  // The tallest band: ceil(H / h) + 1 rows at most.
  const int64_t band = (static_cast<int64_t>(H) + h - 1) / h + 1;
  if (band <= 65535 / 255) {
    pool_photo_as<std::uint16_t>(rgb, H, W, h, w, mean, lo, hi);
  } else {
    pool_photo_as<std::uint32_t>(rgb, H, W, h, w, mean, lo, hi);
  }
}

using detail::Tap;
using detail::tap;

// `count` planes of h x w floats (`plane` apart, from `planes`) interpolated along y at `ty`
// into `count` rows of w floats at `dst`: what a row of the photo needs before it interpolates
// along x alone.
void rows_along_y(const float* planes, int count, std::size_t plane, int w, const Tap& ty, float* dst) {
  for (int c = 0; c < count; ++c) {
    const float* r0 = planes + c * plane + static_cast<std::size_t>(ty.i0) * w;
    const float* r1 = planes + c * plane + static_cast<std::size_t>(ty.i1) * w;
    float* out = dst + static_cast<std::size_t>(c) * w;
    for (int k = 0; k < w; ++k) out[k] = ty.l0 * r0[k] + ty.l1 * r1[k];
  }
}

// A stretch of `n` columns of one row, each interpolating the row's four coefficient planes
// (`planes`: a0, a1, a2, b, `w` floats each, already interpolated along y) between samples
// i0 and i1 with weights l0 and l1: mask and alpha. The arithmetic is the scalar rule of
// refine.py, op for op and without fused multiply-adds, so the AVX2 clone (picked at load time
// where the CPU has AVX2; the file is built with -fno-trapping-math so that GCC may vectorize
// the clamps) gives the same bytes as the default one.
CARSEG_AVX2_CLONES void apply_stretch(
    const std::uint8_t* __restrict rgb, const int* __restrict i0, const int* __restrict i1,
    const float* __restrict l0, const float* __restrict l1, const float* __restrict planes, int w,
    int n, float t, float s, std::uint8_t* __restrict mask, std::uint8_t* __restrict alpha) {
  const float* a0 = planes;
  const float* a1 = planes + w;
  const float* a2 = planes + 2 * w;
  const float* b = planes + 3 * w;
  for (int k = 0; k < n; ++k) {
    const float w0 = l0[k], w1 = l1[k];
    const int j0 = i0[k], j1 = i1[k];
    float q = (w0 * a0[j0] + w1 * a0[j1]) * (static_cast<float>(rgb[3 * k]) / 255.0F);
    q += (w0 * a1[j0] + w1 * a1[j1]) * (static_cast<float>(rgb[3 * k + 1]) / 255.0F);
    q += (w0 * a2[j0] + w1 * a2[j1]) * (static_cast<float>(rgb[3 * k + 2]) / 255.0F);
    q += w0 * b[j0] + w1 * b[j1];
    // refine.to_u8(clamp((q - t) / s + 0.5, 0, 1)), above 127 exactly where the mask is set
    float v = (q - t) / s + 0.5F;
    v = v < 0.0F ? 0.0F : v;
    v = v > 1.0F ? 1.0F : v;
    v = v * 255.0F + 0.5F;
    v = v > 255.0F ? 255.0F : v;
    const int a = static_cast<int>(v);
    const int car = q > t ? 1 : 0;
    mask[k] = static_cast<std::uint8_t>(car);
    alpha[k] = static_cast<std::uint8_t>(car ? (a < 128 ? 128 : a) : (a > 127 ? 127 : a));
  }
}

Matte apply_cpu(const torch::Tensor& image, std::shared_ptr<const RefineFit> fit, double* undecided) {
  const int H = static_cast<int>(image.size(0)), W = static_cast<int>(image.size(1));
  const int h = static_cast<int>(fit->b.size(0)), w = static_cast<int>(fit->b.size(1));
  const torch::Tensor img = image.contiguous();
  const std::uint8_t* rgb = img.data_ptr<std::uint8_t>();
  const torch::Tensor coef = torch::cat({fit->a, fit->b.unsqueeze(0)}).contiguous();  // [4, h, w]
  const float* C = coef.data_ptr<float>();
  const std::size_t plane = static_cast<std::size_t>(h) * w;
  const float t = fit->threshold, s = fit->softness;
  const float settle_lo = t - s / 2, settle_hi = t + s / 2;

  // Per quad (the pixels between four coefficient samples): 0 or 1 when q is settled there for
  // any colour in the quad's range, 2 when it has to be computed.
  std::vector<std::uint8_t> state(plane, 2);
  if (fit->lo.defined()) {
    const torch::Tensor lo = fit->lo.contiguous(), hi = fit->hi.contiguous();
    const float* L = lo.data_ptr<float>();
    const float* U = hi.data_ptr<float>();
    for (int i = 0; i < h; ++i) {
      const int i1 = std::min(i + 1, h - 1);
      for (int j = 0; j < w; ++j) {
        const int j1 = std::min(j + 1, w - 1);
        const std::size_t cells[4] = {static_cast<std::size_t>(i) * w + j, static_cast<std::size_t>(i) * w + j1,
                                      static_cast<std::size_t>(i1) * w + j, static_cast<std::size_t>(i1) * w + j1};
        float cl[3], cu[3];
        for (int c = 0; c < 3; ++c) {
          cl[c] = 1;
          cu[c] = 0;
          for (const std::size_t k : cells) {
            cl[c] = std::min(cl[c], L[c * plane + k]);
            cu[c] = std::max(cu[c], U[c * plane + k]);
          }
        }
        float qmax = -1e30F, qmin = 1e30F;
        for (const std::size_t k : cells) {
          float up = C[3 * plane + k], down = up;
          for (int c = 0; c < 3; ++c) {
            const float a = C[c * plane + k];
            up += std::max(a * cl[c], a * cu[c]);
            down += std::min(a * cl[c], a * cu[c]);
          }
          qmax = std::max(qmax, up);
          qmin = std::min(qmin, down);
        }
        state[static_cast<std::size_t>(i) * w + j] = qmax <= settle_lo ? 0 : qmin >= settle_hi ? 1 : 2;
      }
    }
  }

  Matte m;
  m.mask = torch::empty({H, W}, torch::kUInt8);
  m.alpha = torch::empty({H, W}, torch::kUInt8);
  std::uint8_t* mask = m.mask.data_ptr<std::uint8_t>();
  std::uint8_t* alpha = m.alpha.data_ptr<std::uint8_t>();
  // The column taps as four arrays, for apply_stretch.
  std::vector<int> xi0(static_cast<std::size_t>(W)), xi1(static_cast<std::size_t>(W));
  std::vector<float> xl0(static_cast<std::size_t>(W)), xl1(static_cast<std::size_t>(W));
  for (int x = 0; x < W; ++x) {
    const Tap t_x = tap(x, w, W);
    const auto k = static_cast<std::size_t>(x);
    xi0[k] = t_x.i0, xi1[k] = t_x.i1, xl0[k] = t_x.l0, xl1[k] = t_x.l1;
  }
  // The runs of columns that share a left coefficient sample, the same for every row: found
  // once here rather than by scanning each row's taps (a quarter of this function's time).
  struct Run {
    int x0, x1, j;
  };
  std::vector<Run> runs;
  for (int x = 0; x < W;) {
    const int j = xi0[static_cast<std::size_t>(x)];
    int end = x + 1;
    while (end < W && xi0[static_cast<std::size_t>(end)] == j) ++end;
    runs.push_back({x, end, j});
    x = end;
  }
  // The four coefficient planes interpolated along y for the current row, made once a row and
  // only for a row with pixels to compute: each such pixel then interpolates along x alone.
  std::vector<float> along_y(4 * static_cast<std::size_t>(w));
  std::size_t computed = 0;
  for (int y = 0; y < H; ++y) {
    const Tap ty = tap(y, h, H);
    const std::size_t row = static_cast<std::size_t>(y) * W;
    bool row_ready = false;
    const std::uint8_t* row_state = state.data() + static_cast<std::size_t>(ty.i0) * w;
    // Settled runs are filled; each stretch of adjacent undecided runs is computed in one call.
    for (std::size_t r = 0; r < runs.size();) {
      const std::uint8_t st = row_state[runs[r].j];
      const int x = runs[r].x0;
      if (st != 2) {
        const std::size_t n = static_cast<std::size_t>(runs[r].x1 - x);
        std::memset(mask + row + x, st, n);
        std::memset(alpha + row + x, st ? 255 : 0, n);
        ++r;
        continue;
      }
      std::size_t last = r;
      while (last + 1 < runs.size() && row_state[runs[last + 1].j] == 2) ++last;
      const int end = runs[last].x1;
      r = last + 1;
      computed += static_cast<std::size_t>(end - x);
      if (!row_ready) {
        rows_along_y(C, 4, plane, w, ty, along_y.data());
        row_ready = true;
      }
      apply_stretch(rgb + 3 * (row + x), xi0.data() + x, xi1.data() + x, xl0.data() + x,
                    xl1.data() + x, along_y.data(), w, end - x, t, s, mask + row + x, alpha + row + x);
    }
  }
  if (undecided) *undecided = static_cast<double>(computed) / (static_cast<double>(H) * W);
  m.fit = std::move(fit);
  return m;
}

}  // namespace

RefineFit fit_refinement(const torch::Tensor& image, const torch::Tensor& logits_small,
                         const RefineSpec& spec, double threshold, int size) {
  check_image(image);
  spec.validate();
  c10::InferenceMode guard;
  const int H = static_cast<int>(image.size(0)), W = static_cast<int>(image.size(1));
  if (size < 1) throw Error("refine", "expected the model's input size, got " + std::to_string(size));
  const RefineSpec::Grid g = spec.grid(H, W, size);
  const int h = g.height, w = g.width;
  if (logits_small.dim() != 2 || logits_small.size(0) != h || logits_small.size(1) != w) {
    std::ostringstream got;
    got << logits_small.sizes();
    throw Error("logits", "expected [" + std::to_string(h) + ", " + std::to_string(w) +
                              "] (the fitting grid), got " + got.str());
  }
  RefineFit f;
  torch::Tensor guide;
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  if (image.device().is_cpu()) {
    const torch::Tensor img = image.contiguous();
    guide = torch::empty({3, h, w}, opts);
    f.lo = torch::empty({3, h, w}, opts);
    f.hi = torch::empty({3, h, w}, opts);
    pool_photo(img.data_ptr<std::uint8_t>(), H, W, h, w, guide.data_ptr<float>(),
               f.lo.data_ptr<float>(), f.hi.data_ptr<float>());
  } else {
    guide = image.permute({2, 0, 1}).to(torch::kFloat32).div_(255);
    if (h != H || w != W) guide = torch::adaptive_avg_pool2d(guide.unsqueeze(0), {h, w}).squeeze(0);
  }
  const int r = g.radius;
  f.threshold = static_cast<float>(threshold);
  f.softness = static_cast<float>(spec.softness);
  const torch::Tensor prob = torch::sigmoid(logits_small.to(torch::kFloat32));
  if (image.device().is_cpu()) {
    const torch::Tensor p = prob.to(torch::kCPU).contiguous();
    fit_cpu(guide.data_ptr<float>(), p.data_ptr<float>(), h, w, r, spec.eps, f.threshold, f.softness, f);
    return f;
  }
  auto [a, b] = guided_coefficients(guide, prob, r, spec.eps);
  const torch::Tensor alpha = soft_alpha((a * guide).sum(0) + b, threshold, spec.softness);
  const torch::Tensor means =
      box(torch::cat({guide * alpha, alpha.unsqueeze(0), guide * (1 - alpha), (1 - alpha).unsqueeze(0)}), r);
  f.fg = (means.narrow(0, 0, 3) / means.select(0, 3).clamp_min(1e-6)).clamp_(0, 1).contiguous();
  f.bg = (means.narrow(0, 4, 3) / means.select(0, 7).clamp_min(1e-6)).clamp_(0, 1).contiguous();
  f.a = a.contiguous();
  f.b = b.contiguous();
  return f;
}

Matte apply_refinement(const torch::Tensor& image, std::shared_ptr<const RefineFit> fit,
                       double* undecided) {
  check_image(image);
  if (!fit) throw Error("refine", "no fit given");
  c10::InferenceMode guard;
  if (image.device().is_cpu() && fit->a.device().is_cpu()) return apply_cpu(image, std::move(fit), undecided);
  const int64_t H = image.size(0), W = image.size(1);
  torch::Tensor ab = torch::cat({fit->a, fit->b.unsqueeze(0)}).unsqueeze(0);
  if (ab.size(2) != H || ab.size(3) != W) {
    ab = at::upsample_bilinear2d(ab, {H, W}, /*align_corners=*/false);
  }
  ab = ab.squeeze(0);
  const torch::Tensor full = image.permute({2, 0, 1}).to(torch::kFloat32).div_(255);
  const torch::Tensor q = (ab.narrow(0, 0, 3) * full).sum(0) + ab.select(0, 3);
  Matte m;
  m.mask = q.gt(static_cast<double>(fit->threshold)).to(torch::kUInt8);
  const torch::Tensor a = soft_alpha(q, fit->threshold, fit->softness).mul_(255).add_(0.5).clamp_(0, 255).to(torch::kUInt8);
  m.alpha = torch::where(m.mask.to(torch::kBool), a.clamp_min(128), a.clamp_max(127));  // refine.alpha_u8
  if (undecided) *undecided = 1.0;
  m.fit = std::move(fit);
  return m;
}

Decontaminator::Decontaminator(const RefineFit& fit, int width, int height)
    : fg_(fit.fg.data_ptr<float>()),
      bg_(fit.bg.data_ptr<float>()),
      w_(static_cast<int>(fit.fg.size(2))),
      h_(static_cast<int>(fit.fg.size(1))),
      height_(height),
      plane_(static_cast<std::size_t>(fit.fg.size(1)) * static_cast<std::size_t>(fit.fg.size(2))),
      xs_(static_cast<std::size_t>(width)),
      row_(6 * static_cast<std::size_t>(fit.fg.size(2))) {
  for (int x = 0; x < width; ++x) xs_[static_cast<std::size_t>(x)] = tap(x, w_, width);
}

void Decontaminator::set_row(int y) {
  ty_ = tap(y, h_, height_);
  row_ready_ = false;
}

void Decontaminator::pixel(int x, const std::uint8_t* rgb, std::uint8_t alpha_u8, float* out) {
  if (!row_ready_) {
    // The six planes (fg, then bg) interpolated along y once for the row, on its first soft pixel.
    rows_along_y(fg_, 3, plane_, w_, ty_, row_.data());
    rows_along_y(bg_, 3, plane_, w_, ty_, row_.data() + 3 * static_cast<std::size_t>(w_));
    row_ready_ = true;
  }
  const Tap& tx = xs_[static_cast<std::size_t>(x)];
  const float a = static_cast<float>(alpha_u8) / 255.0F;
  for (int c = 0; c < 3; ++c) {
    const float* fr = row_.data() + static_cast<std::size_t>(c) * w_;
    const float* br = row_.data() + static_cast<std::size_t>(c + 3) * w_;
    const float f = tx.l0 * fr[tx.i0] + tx.l1 * fr[tx.i1], b = tx.l0 * br[tx.i0] + tx.l1 * br[tx.i1];
    const float image = static_cast<float>(rgb[c]) / 255.0F;
    out[c] = std::clamp(f + a * (image - a * f - (1 - a) * b), 0.0F, 1.0F);
  }
}

}  // namespace carseg
