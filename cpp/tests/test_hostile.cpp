// Hostile input, one fixture a defect, each made here: what a stranger's manifest, image bytes
// or file system can do to libcarseg, and that it only ever gets a carseg::Error (or its own
// result) back. tests/hostile/ tries the same at every entry point.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/manifest.h"
#include "carseg/sha256.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using carseg::Image;
using carseg::Manifest;
using carseg::test::expect_error;
using carseg::test::gradient;
using carseg::test::TempDir;
using carseg::test::write_bytes;
using nlohmann::json;

std::string bytes_of(const std::vector<std::uint8_t>& v) { return {v.begin(), v.end()}; }

// ---- untrusted manifests

class HostileManifest : public ::testing::Test {
 protected:
  void SetUp() override { write_bytes(dir_ / "model.torchscript.pt", "model"); }
  void write(const std::string& text) { write_bytes(dir_ / "manifest.json", text); }
  json valid() const { return carseg::test::valid_manifest(carseg::sha256_hex("model")); }
  // The error message, which must be one line and short whatever the manifest holds.
  std::string error_of_loading() {
    try {
      (void)Manifest::load(dir_.path());
    } catch (const carseg::Error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      EXPECT_LT(what.size(), 400u) << what.substr(0, 400);
      return what;
    }
    ADD_FAILURE() << "expected carseg::Error";
    return {};
  }
  TempDir dir_;
};

TEST_F(HostileManifest, DeepNestingIsRefusedWithoutRecursion) {
  write(std::string(500'000, '[') + std::string(500'000, ']'));  // under the size limit
  EXPECT_NE(error_of_loading().find("nested deeper than"), std::string::npos);
  json j = valid();
  json deep = 1;
  for (int i = 0; i < 40; ++i) deep = json::array({deep});
  j["model"]["extra"] = deep;
  write(j.dump());
  EXPECT_NE(error_of_loading().find("nested deeper than"), std::string::npos);
}

TEST_F(HostileManifest, HugeFileIsRefusedBeforeItIsRead) {
  json j = valid();
  j["model"]["padding"] = std::string(2 << 20, 'x');
  write(j.dump());
  EXPECT_NE(error_of_loading().find("cannot read the manifest"), std::string::npos);
}

TEST_F(HostileManifest, OutOfRangeAndWronglyTypedValuesAreNamed) {
  const std::vector<std::pair<json, std::string>> sizes = {
      {1'000'000'000, "preprocessing.size: expected a number in [32, 8192]"},
      {1e300, "preprocessing.size: expected a number in [32, 8192]"},
      {256.5, "preprocessing.size: expected an integer"},
      {"256", "preprocessing.size: expected a number, got string"},
      {-64, "preprocessing.size: expected a number in"}};
  for (const auto& [value, message] : sizes) {
    json j = valid();
    j["preprocessing"]["size"] = value;
    write(j.dump());
    EXPECT_NE(error_of_loading().find(message), std::string::npos) << value;
  }
  json j = valid();
  j["output"]["threshold"] = "half";
  write(j.dump());
  EXPECT_NE(error_of_loading().find("output.threshold: expected a number"), std::string::npos);
}

TEST_F(HostileManifest, MessagesRepeatOnlyAFewDozenCharacters) {
  const std::string long_value(100'000, 'a');
  json j = valid();
  j["artifacts"]["torchscript"]["file"] = long_value;
  write(j.dump());
  EXPECT_NE(error_of_loading().find("(100000 bytes)"), std::string::npos);
  j = valid();
  j["preprocessing"]["mean"] = json::array();
  for (int i = 0; i < 100'000; ++i) j["preprocessing"]["mean"].push_back(i);
  write(j.dump());
  EXPECT_NE(error_of_loading().find("preprocessing.mean: expected 3 numbers"), std::string::npos);
  j = valid();
  j["preprocessing"][long_value] = 1;
  write(j.dump());
  EXPECT_NE(error_of_loading().find("unknown field"), std::string::npos);
}

TEST_F(HostileManifest, ReadVerifiedArtifactReturnsTheCheckedBytes) {
  write(valid().dump());
  const Manifest m = Manifest::load(dir_.path());
  EXPECT_EQ(bytes_of(m.read_verified_artifact("torchscript")), "model");
  write_bytes(dir_ / "model.torchscript.pt", "swapped");
  expect_error([&] { (void)m.read_verified_artifact("torchscript"); }, {"sha256 mismatch"});
}

// ---- untrusted image bytes

// A JPEG with `scans` start-of-scan segments: a real baseline JPEG whose scan is repeated.
std::vector<std::uint8_t> jpeg_with_scans(int scans) {
  const std::vector<std::uint8_t> jpeg = carseg::encode_jpeg(gradient(64, 48), 90);
  std::size_t sos = 0;
  for (std::size_t i = 2; i + 1 < jpeg.size(); ++i) {
    if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xDA) {
      sos = i;
      break;
    }
  }
  const std::vector<std::uint8_t> head(jpeg.begin(), jpeg.begin() + static_cast<long>(sos));
  const std::vector<std::uint8_t> scan(jpeg.begin() + static_cast<long>(sos), jpeg.end() - 2);
  std::vector<std::uint8_t> out = head;
  for (int i = 0; i < scans; ++i) out.insert(out.end(), scan.begin(), scan.end());
  out.push_back(0xFF);
  out.push_back(0xD9);
  return out;
}

TEST(HostileImage, JpegWithThousandsOfScansIsRefusedBeforeDecoding) {
  const auto bomb = jpeg_with_scans(3000);
  const auto t0 = std::chrono::steady_clock::now();
  expect_error([&] { (void)carseg::decode_image(bomb, "scans.jpg"); },
               {"scans.jpg", "JPEG with over 100 scans"});
  // Refused from its header too, as the folder pipeline peeks at every photo before it picks a
  // decoder (nvJPEG, which has no such limit, never sees it).
  expect_error([&] { (void)carseg::peek_image(bomb, "scans.jpg"); },
               {"scans.jpg", "JPEG with over 100 scans"});
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
  EXPECT_EQ(carseg::decode_image(jpeg_with_scans(1), "one.jpg").width, 64);
}

// A CMYK JPEG (as Photoshop and Pillow write one: Adobe's inverted CMYK) decodes to what Pillow
// gives: stored values inverted, then Pillow's CMYK -> RGB.
TEST(HostileImage, CmykJpegDecodesAsPillowDoes) {
  CARSEG_REQUIRE_FIXTURES();
  const fs::path cmyk = carseg::test::fixtures() / "cmyk.jpg";
  if (!fs::exists(cmyk)) GTEST_SKIP() << "fixture cmyk.jpg missing";
  const Image img = carseg::read_image(cmyk);
  const auto want = carseg::test::read_raw<std::uint8_t>(carseg::test::fixtures() / "cmyk.rgb");
  ASSERT_EQ(img.pixels.size(), want.size());
  EXPECT_EQ(img.pixels, want);
}

TEST(HostileImage, FifoAndDeviceAreRefusedWithoutBlocking) {
  TempDir dir;
  const fs::path fifo = dir / "pipe.jpg";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto read = std::async(std::launch::async, [&] {
    try {
      (void)carseg::read_image(fifo);
    } catch (const carseg::Error& e) {
      return std::string(e.what());
    }
    return std::string("read");
  });
  ASSERT_EQ(read.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "blocked";
  EXPECT_NE(read.get().find("not a regular file"), std::string::npos);
  expect_error([] { (void)carseg::read_image("/dev/zero"); }, {"/dev/zero", "not a regular file"});
}

TEST(HostileImage, HugeFileIsRefusedBeforeItIsRead) {
  TempDir dir;
  const fs::path big = dir / "big.png";
  write_bytes(big, "\x89PNG");
  fs::resize_file(big, (std::uintmax_t{300} << 20));  // sparse: 300 MB that take no room
  expect_error([&] { (void)carseg::read_image(big); }, {"big.png", "over the limit of"});
}

TEST(HostileImage, PeekReadsTheHeaderAlone) {
  const auto png = carseg::encode_png(gradient(40, 30).pixels.data(), 40, 30, 3);
  const carseg::ImageInfo info = carseg::peek_image(png, "a.png");
  EXPECT_EQ(info.width, 40);
  EXPECT_EQ(info.height, 30);
  EXPECT_EQ(info.format, "png");
  expect_error([] { (void)carseg::peek_image(std::vector<std::uint8_t>{'G', 'I', 'F'}, "x.gif"); },
               {"x.gif"});
}

// Pillow refuses a PNG whose chunks before the image data fail their checksum; stb would read
// past it. Both sides must call it corrupt.
TEST(HostileImage, PngWithABadHeaderChecksumIsCorrupt) {
  const auto png = carseg::encode_png(gradient(40, 30).pixels.data(), 40, 30, 3);
  EXPECT_EQ(carseg::decode_image(png, "good.png").width, 40);
  auto bad = png;
  bad[29] ^= 0xff;  // the first byte of IHDR's checksum (8 signature + 4 length + 4 type + 13)
  expect_error([&] { (void)carseg::decode_image(bad, "bad.png"); },
               {"bad.png", "corrupt PNG: bad checksum in its IHDR chunk"});
  expect_error([&] { (void)carseg::peek_image(bad, "bad.png"); }, {"bad.png", "IHDR"});
  auto huge = bad;  // and a damaged header claiming 100,000 x 100,000: corrupt, as in Pillow
  for (int i = 0; i < 2; ++i) {
    huge[16 + 4 * i] = 0x00, huge[17 + 4 * i] = 0x01, huge[18 + 4 * i] = 0x86, huge[19 + 4 * i] = 0xa0;
  }
  expect_error([&] { (void)carseg::decode_image(huge, "huge.png"); }, {"huge.png", "corrupt PNG"});
  auto unnamed = png;
  unnamed[12] = 0x01;  // a chunk type that is not letters: not echoed
  expect_error([&] { (void)carseg::decode_image(unnamed, "odd.png"); },
               {"odd.png", "bad checksum in its header"});
}

// ---- untrusted paths

TEST(HostilePath, NoOverwriteLeavesWhateverIsThereAlone) {
  TempDir dir;
  const std::vector<std::uint8_t> data = {1, 2, 3};
  write_bytes(dir / "theirs.png", "theirs");
  expect_error([&] { carseg::write_file_atomic(dir / "theirs.png", data, /*overwrite=*/false); },
               {"theirs.png", "exists"});
  EXPECT_EQ(std::filesystem::file_size(dir / "theirs.png"), 6u);
  // A planted link at the final name is neither followed nor replaced without overwrite...
  write_bytes(dir / "target", "secret");
  fs::create_symlink(dir / "target", dir / "link.png");
  expect_error([&] { carseg::write_file_atomic(dir / "link.png", data, false); }, {"exists"});
  // ... and with overwrite the link itself is replaced: its target keeps its bytes.
  carseg::write_file_atomic(dir / "link.png", data, true);
  EXPECT_FALSE(fs::is_symlink(dir / "link.png"));
  EXPECT_EQ(std::filesystem::file_size(dir / "target"), 6u);
  // No temporary files are left behind by any of it.
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_NE(e.path().filename().string().front(), '.') << e.path();
  }
}

}  // namespace
