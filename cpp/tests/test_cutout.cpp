#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "carseg/cutout.h"
#include "carseg/error.h"
#include "carseg/image_io.h"
#include "test_util.h"

namespace {

using carseg::Backdrop;
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

// A hard matte (mask * 255, no fit) through the one compositing path, composite_matte: white
// keeps the car and paints the rest 255; transparent keeps every RGB value and puts the mask in
// alpha.
std::vector<std::uint8_t> hard_alpha(const std::vector<std::uint8_t>& mask) {
  std::vector<std::uint8_t> alpha(mask.size());
  for (std::size_t i = 0; i < mask.size(); ++i) alpha[i] = mask[i] ? 255 : 0;
  return alpha;
}

TEST(Cutout, AHardMatteFollowsTheRule) {
  const Image img = gradient(64, 48);
  const auto alpha = hard_alpha(box_mask(64, 48));
  const std::size_t n = alpha.size();
  const carseg::Rect whole{0, 0, 64, 48};
  std::vector<std::uint8_t> white(3 * n), rgba(4 * n);
  carseg::composite_matte(img, alpha.data(), nullptr, Backdrop(Background::kWhite), whole, white.data());
  carseg::composite_matte(img, alpha.data(), nullptr, Backdrop(Background::kTransparent), whole, rgba.data());
  for (std::size_t i = 0; i < n; ++i) {
    for (int c = 0; c < 3; ++c) {
      EXPECT_EQ(white[3 * i + c], alpha[i] ? img.pixels[3 * i + c] : 255) << i;
      EXPECT_EQ(rgba[4 * i + c], img.pixels[3 * i + c]) << i;
    }
    EXPECT_EQ(rgba[4 * i + 3], alpha[i]) << i;
  }
  // In place (white) gives the same pixels.
  Image in_place = img;
  carseg::composite_matte(in_place, alpha.data(), nullptr, Backdrop(), whole, in_place.pixels.data());
  EXPECT_EQ(in_place.pixels, white);
}

TEST(Cutout, TensorCompositeIsTheSameRule) {
  const Image img = gradient(37, 21);
  const auto alpha = hard_alpha(box_mask(37, 21));
  const torch::Tensor image = torch::from_blob(const_cast<std::uint8_t*>(img.pixels.data()),
                                               {21, 37, 3}, torch::kUInt8);
  carseg::Matte matte;
  matte.alpha = torch::from_blob(const_cast<std::uint8_t*>(alpha.data()), {21, 37}, torch::kUInt8);
  matte.mask = matte.alpha.gt(127).to(torch::kUInt8);
  for (const Background bg : {Background::kWhite, Background::kTransparent}) {
    const Backdrop backdrop(bg);
    const torch::Tensor t = carseg::composite_matte(image, matte, backdrop);
    ASSERT_EQ(t.sizes(), (std::vector<int64_t>{21, 37, backdrop.channels()}));
    std::vector<std::uint8_t> want(alpha.size() * static_cast<std::size_t>(backdrop.channels()));
    carseg::composite_matte(img, alpha.data(), nullptr, backdrop, {0, 0, 37, 21}, want.data());
    EXPECT_EQ(std::memcmp(t.data_ptr<std::uint8_t>(), want.data(), want.size()), 0) << to_string(bg);
  }
  carseg::Matte short_one = matte;
  short_one.alpha = matte.alpha.narrow(0, 0, 20);
  carseg::test::expect_error([&] { (void)carseg::composite_matte(image, short_one, Backdrop()); },
                             {"matte", "expected an alpha of the image's size"});
}

// Encoded cutouts decode to the composited pixels (PNG exactly, JPEG closely); in place gives
// the same bytes, and a white cutout in place leaves the cutout in the photo's pixels.
TEST(Cutout, EncodedCutoutsDecodeToTheRule) {
  TempDir dir;
  const Image img = gradient(64, 48);
  const auto alpha = hard_alpha(box_mask(64, 48));
  const carseg::Rect whole{0, 0, 64, 48};
  std::vector<std::uint8_t> white(3 * alpha.size());
  carseg::composite_matte(img, alpha.data(), nullptr, Backdrop(), whole, white.data());
  for (const Background bg : {Background::kWhite, Background::kTransparent}) {
    Image copy = img;
    const std::vector<std::uint8_t> bytes =
        carseg::encode_matte_cutout(copy, alpha.data(), nullptr, Backdrop(bg), whole, 95, false);
    EXPECT_EQ(copy.pixels, img.pixels) << "not in place, yet the photo changed";
    Image work = img;
    EXPECT_EQ(carseg::encode_matte_cutout(work, alpha.data(), nullptr, Backdrop(bg), whole, 95, true), bytes)
        << to_string(bg);
    const auto file = dir / ("c" + carseg::cutout_suffix(bg));
    carseg::write_file_atomic(file, bytes);
    // Read back, a transparent cutout is composited on white: both equal the white rule.
    const Image back = carseg::read_image(file);
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
}

TEST(Cutout, SuffixesAndABackdropThatIsNoneNamesItsField) {
  EXPECT_EQ(carseg::cutout_suffix(Background::kWhite), ".jpg");
  EXPECT_EQ(carseg::cutout_suffix(Background::kTransparent), ".png");
  try {
    (void)Backdrop::parse("blue");
    FAIL() << "expected carseg::OptionError";
  } catch (const carseg::OptionError& e) {
    EXPECT_EQ(e.field(), "background");
    EXPECT_EQ(e.reason(), "expected white, transparent, #RRGGBB or an image file, got \"blue\" (no such file)");
  }
}

}  // namespace
