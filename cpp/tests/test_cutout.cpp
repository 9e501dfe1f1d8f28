#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "carseg/cutout.h"
#include "carseg/error.h"
#include "carseg/image_io.h"
#include "test_util.h"

namespace {

using carseg::Background;
using carseg::Image;
using carseg::test::gradient;
using carseg::test::TempDir;

std::vector<std::uint8_t> box_mask(int w, int h) {
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(w) * h);
  for (std::size_t i = 0; i < mask.size(); ++i) {
    mask[i] = (i % w > 20 && i / w < 30) ? static_cast<std::uint8_t>(1 + i % 3) : 0;
  }
  return mask;
}

// The rule itself, pixel by pixel: white keeps the car and paints the rest 255; transparent
// keeps every RGB value and puts the mask in alpha.
TEST(Cutout, CompositeFollowsTheRule) {
  const Image img = gradient(64, 48);
  const auto mask = box_mask(64, 48);
  const std::size_t n = mask.size();
  std::vector<std::uint8_t> white(3 * n), rgba(4 * n);
  carseg::composite(img.pixels.data(), mask.data(), n, Background::kWhite, white.data());
  carseg::composite(img.pixels.data(), mask.data(), n, Background::kTransparent, rgba.data());
  for (std::size_t i = 0; i < n; ++i) {
    for (int c = 0; c < 3; ++c) {
      EXPECT_EQ(white[3 * i + c], mask[i] ? img.pixels[3 * i + c] : 255) << i;
      EXPECT_EQ(rgba[4 * i + c], img.pixels[3 * i + c]) << i;
    }
    EXPECT_EQ(rgba[4 * i + 3], mask[i] ? 255 : 0) << i;
  }
  // In place (white) gives the same pixels.
  std::vector<std::uint8_t> in_place = img.pixels;
  carseg::composite(in_place.data(), mask.data(), n, Background::kWhite, in_place.data());
  EXPECT_EQ(in_place, white);
}

TEST(Cutout, TensorCompositeIsTheSameRule) {
  const Image img = gradient(37, 21);
  const auto mask = box_mask(37, 21);
  const torch::Tensor image = torch::from_blob(const_cast<std::uint8_t*>(img.pixels.data()),
                                               {21, 37, 3}, torch::kUInt8);
  const torch::Tensor m = torch::from_blob(const_cast<std::uint8_t*>(mask.data()), {21, 37},
                                           torch::kUInt8);
  for (const Background bg : {Background::kWhite, Background::kTransparent}) {
    const torch::Tensor t = carseg::composite_cutout(image, m, bg);
    ASSERT_EQ(t.sizes(), (std::vector<int64_t>{21, 37, carseg::cutout_channels(bg)}));
    std::vector<std::uint8_t> want(mask.size() * carseg::cutout_channels(bg));
    carseg::composite(img.pixels.data(), mask.data(), mask.size(), bg, want.data());
    EXPECT_EQ(std::memcmp(t.data_ptr<std::uint8_t>(), want.data(), want.size()), 0) << to_string(bg);
  }
  carseg::test::expect_error(
      [&] { (void)carseg::composite_cutout(image, m.narrow(0, 0, 20), Background::kWhite); },
      {"mask", "expected shape [21, 37]"});
}

// Encoded cutouts decode to the composited pixels (PNG exactly, JPEG closely); in place gives
// the same bytes, and a white cutout in place leaves the cutout in the photo's pixels.
TEST(Cutout, EncodedCutoutsDecodeToTheRule) {
  TempDir dir;
  const Image img = gradient(64, 48);
  const auto mask = box_mask(64, 48);
  for (const Background bg : {Background::kWhite, Background::kTransparent}) {
    const std::vector<std::uint8_t> bytes = carseg::encode_cutout(img, mask.data(), bg);
    Image work = img;
    EXPECT_EQ(carseg::encode_cutout_in_place(work, mask.data(), bg), bytes) << to_string(bg);
    const auto file = dir / ("c" + carseg::cutout_suffix(bg));
    carseg::write_file_atomic(file, bytes);
    // Read back, a transparent cutout is composited on white: both equal the white rule.
    const Image back = carseg::read_image(file);
    std::vector<std::uint8_t> white(3 * mask.size());
    carseg::composite(img.pixels.data(), mask.data(), mask.size(), Background::kWhite, white.data());
    double diff = 0;
    for (std::size_t i = 0; i < white.size(); ++i) diff += std::abs(white[i] - back.pixels[i]);
    if (bg == Background::kTransparent) {
      EXPECT_EQ(back.pixels, white);
      EXPECT_EQ(work.pixels, img.pixels);  // the row-streamed PNG leaves the photo alone
    } else {
      EXPECT_LT(diff / static_cast<double>(white.size()), 3.0);
      EXPECT_EQ(work.pixels, white);
    }
  }
  Image bad = img;
  bad.pixels.resize(10);
  EXPECT_THROW((void)carseg::encode_cutout_in_place(bad, mask.data(), Background::kWhite),
               carseg::Error);
}

TEST(Cutout, BackgroundParsesAndNamesItsField) {
  EXPECT_EQ(carseg::parse_background("white"), Background::kWhite);
  EXPECT_EQ(carseg::parse_background("transparent"), Background::kTransparent);
  EXPECT_EQ(carseg::cutout_suffix(Background::kWhite), ".jpg");
  EXPECT_EQ(carseg::cutout_suffix(Background::kTransparent), ".png");
  try {
    (void)carseg::parse_background("blue");
    FAIL() << "expected carseg::OptionError";
  } catch (const carseg::OptionError& e) {
    EXPECT_EQ(e.field(), "background");
    EXPECT_EQ(e.reason(), "expected white or transparent, got \"blue\"");
  }
}

}  // namespace
