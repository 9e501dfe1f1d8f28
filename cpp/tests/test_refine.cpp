// The refinement (output.refine) against the Python reference (carseg.runtime.refine), and the
// soft composites and output options built on it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <nlohmann/json.hpp>

#include "carseg/cutout.h"
#include "carseg/pipeline.h"
#include "carseg/predictor.h"
#include "carseg/refine.h"
#include "test_util.h"

namespace {

using carseg::test::cases;
using carseg::test::fixture_u8;
using carseg::test::fixtures;
using carseg::test::png_photo;
using nlohmann::json;

int64_t max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kInt32) - b.to(torch::kInt32)).abs().max().item<int64_t>();
}

// The manifest's refinement, applied by the C++ predictor, gives the Python reference's mask
// and matte: the coarse fit is computed step for step in loops (the 3x3 systems solved in
// float64 by their adjugate, where the reference solves them in float32 by LU), the guide
// pooled by integer sums (the reference pools floats), and the full-resolution pass runs only
// where the bound leaves the value open. Allowed: a mask pixel in 10,000 where q is within
// rounding of the threshold, alpha within 1 of 255.
TEST(Refine, PredictorMatchesThePythonReference) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Predictor predictor(fixtures() / "model");
  ASSERT_TRUE(predictor.refine().has_value());
  EXPECT_DOUBLE_EQ(predictor.refine()->radius, 4.0);
  const std::vector<torch::Tensor> images = carseg::test::png_photos(c);
  const std::vector<carseg::Matte> mattes = predictor.predict_mattes(images);
  const std::vector<torch::Tensor> masks = predictor.predict_batch(images);
  for (std::size_t i = 0; i < images.size(); ++i) {
    const json& e = c["images"][i];
    const torch::Tensor want = fixture_u8(e, ".refined_mask.u8");
    const int64_t differing = (mattes[i].mask != want).sum().item<int64_t>();
    EXPECT_LE(differing, std::max<int64_t>(1, want.numel() / 10000)) << e["name"];
    EXPECT_TRUE(torch::equal(masks[i], mattes[i].mask)) << e["name"];
    EXPECT_LE(max_abs_diff(mattes[i].alpha, fixture_u8(e, ".alpha.u8")), 1) << e["name"];
    // The matte is the mask's soft edge: at least half where the mask is set, at most half where not.
    EXPECT_TRUE((mattes[i].alpha.masked_select(mattes[i].mask.to(torch::kBool)) >= 127).all().item<bool>());
    EXPECT_TRUE((mattes[i].alpha.masked_select(mattes[i].mask == 0) <= 128).all().item<bool>());
  }
}

// Cutouts from the matte: on white, on a colour and transparent, within 2 grey levels of the
// reference's refine.composite_soft (the reference blends with the unrounded alpha).
TEST(Refine, SoftCutoutsMatchThePythonReference) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Predictor predictor(fixtures() / "model");
  const std::vector<std::pair<std::string, std::string>> backdrops = {
      {"white", "white"}, {"colour", "#3366cc"}, {"rgba", "transparent"}};
  for (const auto& e : c["images"]) {
    const torch::Tensor image = png_photo(e);
    for (const auto& [key, spec] : backdrops) {
      const carseg::Backdrop bd = carseg::Backdrop::parse(spec);
      const torch::Tensor got = predictor.cutout(image, bd);
      const torch::Tensor want = fixture_u8(e, ".cutout_" + key + ".u8", bd.channels());
      ASSERT_EQ(got.sizes(), want.sizes()) << e["name"] << " " << key;
      EXPECT_LE(max_abs_diff(got, want), 2) << e["name"] << " " << key;
    }
  }
}

// Skipping the pixels the bound settles changes nothing: a fit without colour ranges (every
// pixel computed) gives the same mask and matte, byte for byte.
void expect_skipping_is_exact(const torch::Tensor& image, const std::shared_ptr<const carseg::RefineFit>& fit,
                              bool expect_skips) {
  auto all = std::make_shared<carseg::RefineFit>(*fit);
  all->lo = torch::Tensor();
  all->hi = torch::Tensor();
  double banded = 0, full = 0;
  const carseg::Matte a = carseg::apply_refinement(image, fit, &banded);
  const carseg::Matte b = carseg::apply_refinement(image, all, &full);
  EXPECT_TRUE(torch::equal(a.mask, b.mask));
  EXPECT_TRUE(torch::equal(a.alpha, b.alpha));
  EXPECT_DOUBLE_EQ(full, 1.0);
  if (expect_skips) {
    EXPECT_LT(banded, 0.5) << "the bound settled too little";
  }
}

TEST(Refine, SkippingSettledPixelsIsExactOnTheFixtures) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Predictor predictor(fixtures() / "model");
  for (const auto& e : c["images"]) {
    const torch::Tensor image = png_photo(e);
    expect_skipping_is_exact(image, predictor.predict_mattes({image})[0].fit, false);
  }
}

// A car whose true edge the coarse logits miss by pixels: the refinement puts it back on the
// photo's edge, the matte is 0 far outside and 255 far inside, and the cutout is the backdrop
// colour outside the car and the photo inside.
TEST(Refine, FollowsThePhotosEdgeAndComposites) {
  const int H = 240, W = 360;
  torch::Tensor image = torch::full({H, W, 3}, 200, torch::kUInt8);
  torch::Tensor truth = torch::zeros({H, W}, torch::kUInt8);
  for (int y = 0; y < H; ++y) {
    for (int x = 0; x < W; ++x) {
      // A red car on a grey wall, its edge blended over about 3 pixels as a lens does.
      const double dy = (y - H * 0.55) / (H * 0.3), dx = (x - W * 0.5) / (W * 0.35);
      const double rr = dx * dx + dy * dy;
      if (rr <= 1) truth[y][x] = 1;
      const double cover = std::clamp((1 - rr) * 16 + 0.5, 0.0, 1.0);
      const double car[3] = {170, 30, 40};
      for (int c = 0; c < 3; ++c) image[y][x][c] = static_cast<int>(std::lround(car[c] * cover + 200 * (1 - cover)));
    }
  }
  // A 120 px model: 3 photo px a model px; radius 32 px, 4 px cells.
  carseg::RefineSpec spec;
  spec.radius = 32.0 / 3;
  spec.subsample = 4.0 / 3;
  const carseg::RefineSpec::Grid g = spec.grid(H, W, 120);
  ASSERT_EQ(g.radius, 8);
  const int h = g.height, w = g.width;
  // Coarse logits: the truth area-pooled to 1/24 and stretched back, as a model at 15 px would see it.
  const torch::Tensor coarse = torch::adaptive_avg_pool2d(truth.to(torch::kFloat32).unsqueeze(0), {10, 15});
  const torch::Tensor p = at::upsample_bilinear2d(coarse.unsqueeze(0), {h, w}, false).squeeze(0).squeeze(0);
  const torch::Tensor logits = torch::logit(p.clamp(0.02, 0.98));
  auto fit = std::make_shared<carseg::RefineFit>(carseg::fit_refinement(image, logits, spec, 0.5, 120));
  const carseg::Matte m = carseg::apply_refinement(image, fit);
  const int64_t wrong = (m.mask != truth).sum().item<int64_t>();
  const torch::Tensor coarse_full = at::upsample_bilinear2d(p.unsqueeze(0).unsqueeze(0), {H, W}, false)[0][0];
  const int64_t wrong_coarse = ((coarse_full > 0.5).to(torch::kUInt8) != truth).sum().item<int64_t>();
  EXPECT_LT(wrong * 4, wrong_coarse) << wrong << " vs " << wrong_coarse;
  expect_skipping_is_exact(image, fit, true);
  EXPECT_EQ(m.alpha[5][5].item<int>(), 0);
  EXPECT_EQ(m.alpha[static_cast<int>(H * 0.55)][W / 2].item<int>(), 255);

  carseg::Image photo;
  photo.width = W;
  photo.height = H;
  photo.pixels.assign(image.data_ptr<std::uint8_t>(), image.data_ptr<std::uint8_t>() + image.numel());
  const carseg::Backdrop green = carseg::Backdrop::parse("#00ff00");
  std::vector<std::uint8_t> out(static_cast<std::size_t>(H) * W * 3);
  const torch::Tensor alpha = m.alpha.contiguous();
  carseg::composite_matte(photo, alpha.data_ptr<std::uint8_t>(), fit.get(), green, {0, 0, W, H}, out.data());
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(out[1], 255);
  EXPECT_EQ(out[2], 0);
  const std::size_t inside = (static_cast<std::size_t>(H * 0.55) * W + W / 2) * 3;
  EXPECT_EQ(out[inside], 170);
  EXPECT_EQ(out[inside + 1], 30);
  // No grey fringe: where the edge is soft, the pixel should be alpha * car + (1 - alpha) * green.
  // Blending the photo's own pixel there (which holds some of the grey wall) misses that by the
  // wall's share; the decontaminated colour misses it by a fifth of that or less (measured: mean 1.8 grey
  // levels against 19.8).
  std::vector<std::uint8_t> naive(out.size());
  carseg::composite_matte(photo, alpha.data_ptr<std::uint8_t>(), nullptr, green, {0, 0, W, H}, naive.data());
  const std::uint8_t* a = alpha.data_ptr<std::uint8_t>();
  const double car[3] = {170, 30, 40}, back[3] = {0, 255, 0};
  int soft = 0;
  double err = 0, err_naive = 0, worst = 0;
  for (std::size_t i = 0; i < static_cast<std::size_t>(H) * W; ++i) {
    if (a[i] == 0 || a[i] == 255) continue;
    ++soft;
    const double al = a[i] / 255.0;
    for (int c = 0; c < 3; ++c) {
      const double ideal = al * car[c] + (1 - al) * back[c];
      err += std::abs(out[3 * i + c] - ideal);
      err_naive += std::abs(naive[3 * i + c] - ideal);
      worst = std::max(worst, std::abs(out[3 * i + c] - ideal));
    }
  }
  ASSERT_GT(soft, 0);
  EXPECT_LT(err, 0.2 * err_naive) << "mean error " << err / (3 * soft) << " vs " << err_naive / (3 * soft);
  EXPECT_LE(worst, 24) << "mean error " << err / (3 * soft) << " vs " << err_naive / (3 * soft);
  // Crop: the car's box, grown by the margin, holds every pixel of the matte.
  const carseg::Rect box = carseg::crop_box(a, W, H, 3);
  const torch::Tensor rows = m.alpha.gt(0).any(1).nonzero(), cols = m.alpha.gt(0).any(0).nonzero();
  EXPECT_EQ(box.y0, rows.min().item<int>() - 3);
  EXPECT_EQ(box.y1, rows.max().item<int>() + 4);
  EXPECT_EQ(box.x0, cols.min().item<int>() - 3);
  EXPECT_EQ(box.x1, cols.max().item<int>() + 4);
}

// A band of photo rows too tall for 16-bit column sums (over 257 rows a grid cell) is pooled
// with 32-bit ones: one cell over a 600-row photo of two colours has the photo's least and
// greatest colour and, the probability being flat, the mean probability as its filter value.
TEST(Refine, TallCellsPoolWithoutOverflow) {
  torch::Tensor image = torch::empty({600, 4, 3}, torch::kUInt8);
  image.narrow(0, 0, 300).fill_(250);
  image.narrow(0, 300, 300).select(2, 0).fill_(10);
  image.narrow(0, 300, 300).select(2, 1).fill_(200);
  image.narrow(0, 300, 300).select(2, 2).fill_(90);
  carseg::RefineSpec spec;
  spec.subsample = 64;  // cells of 64 model pixels: one cell for the whole photo
  const carseg::RefineSpec::Grid g = spec.grid(600, 4, 32);
  ASSERT_EQ(std::make_pair(g.height, g.width), std::make_pair(1, 1));
  const carseg::RefineFit f = carseg::fit_refinement(image, torch::full({1, 1}, 0.8F), spec, 0.5, 32);
  EXPECT_TRUE(torch::allclose(f.lo.flatten(), torch::tensor({10.0F, 200.0F, 90.0F}) / 255.0F));
  EXPECT_TRUE(torch::allclose(f.hi.flatten(), torch::tensor({250.0F, 250.0F, 250.0F}) / 255.0F));
  EXPECT_NEAR(f.b.item<float>(), 1.0F / (1.0F + std::exp(-0.8F)), 1e-5F);
  EXPECT_NEAR(f.a.abs().max().item<float>(), 0.0F, 1e-5F);
}

TEST(Refine, BadBackdropsAndSpecsAreNamed) {
  auto message = [](const std::string& s) {
    try {
      (void)carseg::Backdrop::parse(s);
    } catch (const carseg::OptionError& e) {
      EXPECT_EQ(e.field(), "background");
      return std::string(e.reason());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("#12345").find("#RRGGBB"), std::string::npos);
  EXPECT_NE(message("#gggggg").find("#RRGGBB"), std::string::npos);
  EXPECT_NE(message("/no/such/backdrop.jpg").find("no such file"), std::string::npos);
  EXPECT_EQ(carseg::Backdrop::parse("#FF8000").colour(), (std::array<std::uint8_t, 3>{255, 128, 0}));
  EXPECT_EQ(carseg::Backdrop::parse("#ff8000").describe(), "#ff8000");
  EXPECT_EQ(carseg::Backdrop::parse("transparent").suffix(), ".png");
  carseg::RefineSpec spec;
  spec.softness = 0;
  EXPECT_THROW(spec.validate(), carseg::OptionError);
  spec.softness = 0.5;
  spec.radius = 0;
  EXPECT_THROW(spec.validate(), carseg::OptionError);
  // The grid follows the photo's size: the same 4 model pixels at any size.
  const carseg::RefineSpec d;
  const auto big = d.grid(1280, 1918, 128), small = d.grid(160, 240, 64), tiny = d.grid(40, 60, 64);
  EXPECT_EQ(std::make_tuple(big.height, big.width, big.radius), std::make_tuple(85, 128, 4));
  EXPECT_EQ(std::make_tuple(small.height, small.width, small.radius), std::make_tuple(43, 64, 4));
  EXPECT_EQ(std::make_tuple(tiny.height, tiny.width, tiny.radius), std::make_tuple(40, 60, 4));
}

}  // namespace
