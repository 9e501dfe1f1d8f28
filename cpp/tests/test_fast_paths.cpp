// The CPU fast paths against the op-for-op ones: fused pre/post-processing kernels
// (PredictorOptions::exact = false) and oneDNN Graph fusion (onednn_fusion = true).
//
// Linked last on purpose: oneDNN Graph fusion is a process-wide TorchScript pass, and once a
// test here turns it on it stays on. ctest runs every test in its own process; a plain
// `carseg_tests` run reaches these after the bit-identical tests in the other files.

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/predictor.h"
#include "carseg/preprocess.h"
#include "test_util.h"

namespace {

using carseg::test::cases;
using carseg::test::fixtures;
using nlohmann::json;

carseg::PreprocessSpec spec_of(int size) {
  carseg::PreprocessSpec s;
  s.size = size;
  return s;
}

torch::Tensor random_image(int h, int w, int seed) {
  torch::manual_seed(seed);
  return torch::randint(0, 256, {h, w, 3}, torch::kUInt8);
}

// Fused preprocessing equals the op-for-op one to float rounding: the geometry (which source
// pixels, which weights, where the padding starts) is the same, only the order of the float
// operations differs. Normalized values span about [-2.2, 2.7] and one grey level is 0.017;
// a source coordinate rounded one ulp apart moves a value by up to 1e-4 (measured: 3e-5).
TEST(FusedPreprocess, EqualsOpForOpToRounding) {
  const carseg::Preprocessor pre(spec_of(128));
  // wide, tall, exactly the size (no resize), smaller (upsampled), 1x1, odd shapes
  const std::vector<std::pair<int, int>> shapes = {
      {1280, 1918}, {1918, 1280}, {128, 128}, {90, 60}, {1, 1}, {37, 501}, {129, 127}};
  int seed = 0;
  for (const auto& [h, w] : shapes) {
    const torch::Tensor im = random_image(h, w, ++seed);
    const torch::Tensor want = pre.preprocess(im);
    torch::Tensor got = torch::empty({3, 128, 128});
    pre.preprocess_fused(im, got.data_ptr<float>());
    const float diff = (got - want).abs().max().item<float>();
    EXPECT_LE(diff, 1e-4f) << h << "x" << w;
    // The padding is the same constant in both, exactly.
    const auto [nh, nw] = pre.spec().resized_shape(h, w);
    if (nh < 128) EXPECT_TRUE(torch::equal(got.narrow(1, nh, 128 - nh), want.narrow(1, nh, 128 - nh)));
    if (nw < 128) EXPECT_TRUE(torch::equal(got.narrow(2, nw, 128 - nw), want.narrow(2, nw, 128 - nw)));
  }
  // A batch of different sizes: one slice per image.
  const std::vector<torch::Tensor> ims = {random_image(40, 70, 11), random_image(300, 200, 12)};
  const torch::Tensor batch = pre.preprocess_batch_fused(ims);
  ASSERT_EQ(batch.sizes(), (std::vector<int64_t>{2, 3, 128, 128}));
  for (int i = 0; i < 2; ++i) EXPECT_LE((batch[i] - pre.preprocess(ims[i])).abs().max().item<float>(), 1e-4f);
}

TEST(FusedPreprocess, NonContiguousImagesAndBadInputs) {
  const carseg::Preprocessor pre(spec_of(64));
  const torch::Tensor big = random_image(100, 160, 3);
  const torch::Tensor view = big.narrow(1, 10, 120);  // rows with a stride: not contiguous
  ASSERT_FALSE(view.is_contiguous());
  torch::Tensor got = torch::empty({3, 64, 64});
  pre.preprocess_fused(view, got.data_ptr<float>());
  EXPECT_LE((got - pre.preprocess(view)).abs().max().item<float>(), 1e-4f);
  EXPECT_THROW(pre.preprocess_fused(torch::zeros({4, 4, 3}), got.data_ptr<float>()), carseg::Error);
  EXPECT_THROW(pre.preprocess_fused(torch::zeros({4, 4}, torch::kUInt8), got.data_ptr<float>()),
               carseg::Error);
  EXPECT_THROW((void)pre.preprocess_batch_fused({}), carseg::Error);
}

// The fused mask thresholds the interpolated logit against log(t / (1 - t)) instead of the
// sigmoid against t. Pixels may differ only where the logit is within rounding of the cut.
TEST(FusedMask, EqualsSigmoidThresholdExceptAtTheCut) {
  const int s = 128;
  const carseg::Preprocessor pre(spec_of(s));
  torch::manual_seed(7);
  // Smooth logits, as a model gives, with a few sharp edges.
  const torch::Tensor coarse = torch::randn({1, 1, 16, 16}) * 6;
  const torch::Tensor logits =
      at::upsample_bilinear2d(coarse, {s, s}, false).view({s, s}).contiguous();
  for (const double t : {0.5, 0.2, 0.93}) {
    const float cut = static_cast<float>(std::log(t / (1 - t)));
    for (const auto& [h, w] : std::vector<std::pair<int, int>>{{1280, 1918}, {480, 320}, {128, 128}, {50, 9}}) {
      const torch::Tensor up = pre.postprocess_logits(logits, h, w);
      const torch::Tensor want = carseg::Preprocessor::mask_from_logits(up, t);
      const torch::Tensor got = pre.mask_fused(logits, h, w, t);
      ASSERT_EQ(got.sizes(), want.sizes());
      ASSERT_EQ(got.scalar_type(), torch::kUInt8);
      const torch::Tensor differ = got != want;
      const int64_t n = differ.sum().item<int64_t>();
      EXPECT_LE(n, std::max<int64_t>(1, want.numel() / 10000)) << t << " " << h << "x" << w;
      if (n > 0) {  // only right at the cut
        EXPECT_LE((up.masked_select(differ) - cut).abs().max().item<float>(), 1e-4f);
      }
      // A mask with both classes in it: the comparison above is not vacuous.
      const double fg = want.to(torch::kFloat32).mean().item<double>();
      EXPECT_GT(fg, 0.02) << t;
      EXPECT_LT(fg, 0.98) << t;
    }
  }
}

TEST(FusedMask, RejectsBadLogitsAndThreshold) {
  const carseg::Preprocessor pre(spec_of(64));
  EXPECT_THROW((void)pre.mask_fused(torch::zeros({32, 32}), 10, 10, 0.5), carseg::Error);
  EXPECT_THROW((void)pre.mask_fused(torch::zeros({2, 64, 64}), 10, 10, 0.5), carseg::Error);
  EXPECT_THROW((void)pre.mask_fused(torch::zeros({64, 64}), 10, 10, 0.0), carseg::Error);
  EXPECT_THROW((void)pre.mask_fused(torch::zeros({64, 64}), 10, 10, 1.0), carseg::Error);
  // [1, S, S] is accepted as [S, S]; all logits below the cut give an empty mask.
  const torch::Tensor m = pre.mask_fused(torch::full({1, 64, 64}, -3.0f), 7, 11, 0.5);
  EXPECT_EQ(m.sizes(), (std::vector<int64_t>{7, 11}));
  EXPECT_EQ(m.sum().item<int64_t>(), 0);
}

// carseg_infer's CPU defaults (fused kernels + oneDNN Graph fusion) against the Python
// reference's masks and logits: IoU >= 0.999, at most 1 pixel in 10,000 differing.
TEST(FastPredictor, AgreesWithPythonReference) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  carseg::PredictorOptions o = carseg::test::unrefined();
  o.exact = false;
  o.onednn_fusion = true;
  o.backend = carseg::BackendKind::kTorchScript;
  const carseg::Predictor predictor(fixtures() / "model", o);
  const std::vector<torch::Tensor> images = carseg::test::png_photos(c);
  // Three rounds: the first calls run the profiling executor, later ones the fused graph.
  for (int round = 0; round < 3; ++round) {
    const std::vector<torch::Tensor> masks = predictor.predict_batch(images);
    const std::vector<torch::Tensor> logits = predictor.predict_logits(images);
    for (std::size_t i = 0; i < images.size(); ++i) {
      const json& e = c["images"][i];
      const int h = e["h"].get<int>(), w = e["w"].get<int>();
      const torch::Tensor want = carseg::test::ref_mask(e);
      const int64_t differing = (masks[i] != want).sum().item<int64_t>();
      EXPECT_LE(differing, std::max(1, h * w / 10000)) << e["name"] << " round " << round;
      EXPECT_GE(carseg::test::iou(masks[i], want), 0.999) << e["name"];
      const torch::Tensor ref = carseg::test::ref_logits(e);
      EXPECT_TRUE(torch::allclose(logits[i], ref, 1e-4, 1e-4))
          << e["name"] << ": max |diff| " << (logits[i] - ref).abs().max().item<float>();
    }
  }
}

}  // namespace
