#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/preprocess.h"
#include "test_util.h"

namespace {

using carseg::test::cases;
using carseg::test::fixtures;
using carseg::test::read_raw;
using nlohmann::json;

carseg::PreprocessSpec spec_from(const json& j) {
  carseg::PreprocessSpec s;
  s.size = j.at("size").get<int>();
  for (int c = 0; c < 3; ++c) {
    s.mean[c] = j.at("mean")[c].get<double>();
    s.std[c] = j.at("std")[c].get<double>();
  }
  s.max_pixel_value = j.at("max_pixel_value").get<double>();
  s.pad_value = j.at("pad_value").get<double>();
  return s;
}

torch::Tensor photo(const json& e) {
  std::vector<std::uint8_t> rgb = read_raw<std::uint8_t>(fixtures() / (e["name"].get<std::string>() + ".rgb"));
  return torch::from_blob(rgb.data(), {e["h"].get<int>(), e["w"].get<int>(), 3}, torch::kUInt8).clone();
}

torch::Tensor raw_f32(const std::filesystem::path& p, std::vector<int64_t> shape) {
  std::vector<float> v = read_raw<float>(p);
  return torch::from_blob(v.data(), shape, torch::kFloat32).clone();
}

// Bit-identical to carseg.preprocess on the CPU: same ops in the same order.
TEST(Preprocess, MatchesPythonReferenceExactly) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  for (const std::string key : {"a", "b"}) {
    const carseg::Preprocessor pre(spec_from(c["specs"][key]));
    const int s = pre.spec().size;
    for (const auto& e : c["images"]) {
      const torch::Tensor got = pre.preprocess(photo(e));
      ASSERT_EQ(got.sizes(), (std::vector<int64_t>{3, s, s}));
      const torch::Tensor want =
          raw_f32(fixtures() / (e["name"].get<std::string>() + ".pre_" + key + ".f32"), {3, s, s});
      EXPECT_TRUE(torch::equal(got, want))
          << e["name"] << " spec " << key << ": max |diff| " << (got - want).abs().max().item<float>();
      const auto [nh, nw] = pre.spec().resized_shape(e["h"].get<int>(), e["w"].get<int>());
      EXPECT_EQ(nh, e["resized"][key][0].get<int>());
      EXPECT_EQ(nw, e["resized"][key][1].get<int>());
    }
  }
}

TEST(Preprocess, PngDecodeGivesTheSamePixelsAsPython) {
  CARSEG_REQUIRE_FIXTURES();
  for (const auto& e : cases()["images"]) {
    const carseg::Image img = carseg::read_image(fixtures() / (e["name"].get<std::string>() + ".png"));
    const std::vector<std::uint8_t> rgb =
        read_raw<std::uint8_t>(fixtures() / (e["name"].get<std::string>() + ".rgb"));
    EXPECT_EQ(img.pixels, rgb) << e["name"];
  }
}

TEST(Preprocess, PaddingGeometry) {
  carseg::PreprocessSpec spec;
  spec.size = 64;
  spec.pad_value = 7;
  spec.mean = {0, 0, 0};
  spec.std = {1, 1, 1};
  spec.max_pixel_value = 1;
  const carseg::Preprocessor pre(spec);
  // 32 x 16 -> 64 x 32: the right half is padding with pad_value, left half the photo.
  const torch::Tensor img = torch::full({32, 16, 3}, 200, torch::kUInt8);
  const torch::Tensor x = pre.preprocess(img);
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::all(x.index({Slice(), Slice(), Slice(0, 32)}) == 200).item<bool>());
  EXPECT_TRUE(torch::all(x.index({Slice(), Slice(), Slice(32, 64)}) == 7).item<bool>());
}

TEST(Preprocess, BatchStacksImagesOfDifferentSizes) {
  const carseg::Preprocessor pre(carseg::PreprocessSpec{});
  const torch::Tensor b = pre.preprocess_batch(
      {torch::zeros({10, 20, 3}, torch::kUInt8), torch::zeros({300, 5, 3}, torch::kUInt8)});
  EXPECT_EQ(b.sizes(), (std::vector<int64_t>{2, 3, 256, 256}));
  EXPECT_THROW((void)pre.preprocess_batch({}), carseg::Error);
}

TEST(Preprocess, RejectsWrongDtypeAndShapeWithExpectedAndGot) {
  const carseg::Preprocessor pre(carseg::PreprocessSpec{});
  try {
    (void)pre.preprocess(torch::zeros({4, 4, 3}, torch::kFloat32));
    FAIL();
  } catch (const carseg::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected dtype uint8, got Float"), std::string::npos) << e.what();
  }
  try {
    (void)pre.preprocess(torch::zeros({4, 4}, torch::kUInt8));
    FAIL();
  } catch (const carseg::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected shape [H, W, 3], got [4, 4]"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW((void)pre.preprocess(torch::zeros({0, 4, 3}, torch::kUInt8)), carseg::Error);
}

TEST(Postprocess, MatchesPythonReferenceExactly) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Preprocessor pre(spec_from(c["specs"]["a"]));
  const int s = pre.spec().size;
  const torch::Tensor logits = raw_f32(fixtures() / "logits_a.f32", {1, s, s});
  for (const auto& e : c["images"]) {
    const int h = e["h"].get<int>(), w = e["w"].get<int>();
    const std::string name = e["name"].get<std::string>();
    const torch::Tensor got = pre.postprocess_logits(logits, h, w);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{h, w}));
    EXPECT_TRUE(torch::equal(got, raw_f32(fixtures() / (name + ".post_a.f32"), {h, w}))) << name;
    std::vector<std::uint8_t> m = read_raw<std::uint8_t>(fixtures() / (name + ".postmask_a.u8"));
    const torch::Tensor want = torch::from_blob(m.data(), {h, w}, torch::kUInt8);
    EXPECT_TRUE(torch::equal(carseg::Preprocessor::mask_from_logits(got, 0.5), want)) << name;
  }
}

TEST(Postprocess, RejectsWrongLogitsShapeAndThreshold) {
  const carseg::Preprocessor pre(carseg::PreprocessSpec{});
  EXPECT_THROW((void)pre.postprocess_logits(torch::zeros({2, 256, 256}), 10, 10), carseg::Error);
  EXPECT_THROW((void)pre.postprocess_logits(torch::zeros({128, 128}), 10, 10), carseg::Error);
  EXPECT_THROW((void)carseg::Preprocessor::mask_from_logits(torch::zeros({2, 2}), 1.0), carseg::Error);
}

}  // namespace
