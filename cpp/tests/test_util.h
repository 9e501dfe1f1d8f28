#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <torch/types.h>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/predictor.h"

namespace carseg::test {

/// A w x h RGB test picture: red rises left to right, green top to bottom.
inline carseg::Image gradient(int w, int h) {
  carseg::Image img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      std::uint8_t* p = &img.pixels[(static_cast<std::size_t>(y) * w + x) * 3];
      p[0] = static_cast<std::uint8_t>(x * 255 / std::max(1, w - 1));
      p[1] = static_cast<std::uint8_t>(y * 255 / std::max(1, h - 1));
      p[2] = static_cast<std::uint8_t>((x + y) % 256);
    }
  }
  return img;
}

/// A manifest.json that Manifest::load accepts, for a TorchScript file with this sha256.
inline nlohmann::json valid_manifest(const std::string& sha) {
  using nlohmann::json;
  return json{{"schema_version", 1},
              {"model", {{"arch", "Unet"}, {"encoder_name", "resnet18"}}},
              {"preprocessing",
               {{"size", 256},
                {"mean", {0.485, 0.456, 0.406}},
                {"std", {0.229, 0.224, 0.225}},
                {"max_pixel_value", 255.0},
                {"pad_value", 0},
                {"pad_position", "bottom_right"},
                {"interpolation", "bilinear"},
                {"antialias", false},
                {"channel_order", "RGB"},
                {"layout", "NCHW"}}},
              {"output", {{"kind", "logits"}, {"activation", "sigmoid"}, {"threshold", 0.4}}},
              {"artifacts",
               {{"torchscript",
                 {{"file", "model.torchscript.pt"},
                  {"format", "torchscript"},
                  {"precision", "fp32"},
                  {"device", "cpu"},
                  {"sha256", sha},
                  {"parity", nullptr}}},
                {"onnx", nullptr}}}};
}

/// Folder written by make_fixtures.py (ctest passes it in CARSEG_TEST_FIXTURES).
inline std::filesystem::path fixtures() {
  const char* dir = std::getenv("CARSEG_TEST_FIXTURES");
  return dir ? std::filesystem::path(dir) : std::filesystem::path();
}

#define CARSEG_REQUIRE_FIXTURES()                                                  \
  do {                                                                             \
    if (::carseg::test::fixtures().empty() ||                                      \
        !std::filesystem::exists(::carseg::test::fixtures() / "cases.json"))       \
      GTEST_SKIP() << "no fixtures: set CARSEG_TEST_FIXTURES (ctest does)";        \
  } while (0)

template <class T>
std::vector<T> read_raw(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Fixture image `e` (an entry of cases.json), read from its PNG: uint8 [H, W, 3].
inline torch::Tensor png_photo(const nlohmann::json& e) {
  const carseg::Image img = carseg::read_image(fixtures() / (e["name"].get<std::string>() + ".png"));
  return torch::from_blob(const_cast<std::uint8_t*>(img.pixels.data()), {img.height, img.width, 3},
                          torch::kUInt8).clone();
}

/// Every fixture image of `cases` (its "images" list), in order, as png_photo gives them.
inline std::vector<torch::Tensor> png_photos(const nlohmann::json& cases) {
  std::vector<torch::Tensor> images;
  for (const auto& e : cases["images"]) images.push_back(png_photo(e));
  return images;
}

/// The Python reference predictor's mask for fixture image `e`: uint8 [H, W].
inline torch::Tensor ref_mask(const nlohmann::json& e) {
  std::vector<std::uint8_t> m =
      read_raw<std::uint8_t>(fixtures() / (e["name"].get<std::string>() + ".ref_mask.u8"));
  return torch::from_blob(m.data(), {e["h"].get<int>(), e["w"].get<int>()}, torch::kUInt8).clone();
}

/// A fixture's raw uint8 file NAME.<suffix> as [H, W] or [H, W, channels].
inline torch::Tensor fixture_u8(const nlohmann::json& e, const std::string& suffix, int channels = 0) {
  std::vector<std::uint8_t> m = read_raw<std::uint8_t>(fixtures() / (e["name"].get<std::string>() + suffix));
  std::vector<int64_t> shape = {e["h"].get<int>(), e["w"].get<int>()};
  if (channels) shape.push_back(channels);
  return torch::from_blob(m.data(), shape, torch::kUInt8).clone();
}

/// Options for the model's own contract (the reference's unrefined masks): no refinement.
inline carseg::PredictorOptions unrefined() {
  carseg::PredictorOptions o;
  o.refine = false;
  return o;
}

/// The Python reference predictor's logits for fixture image `e`: float32 [H, W].
inline torch::Tensor ref_logits(const nlohmann::json& e) {
  std::vector<float> l =
      read_raw<float>(fixtures() / (e["name"].get<std::string>() + ".ref_logits.f32"));
  return torch::from_blob(l.data(), {e["h"].get<int>(), e["w"].get<int>()}, torch::kFloat32).clone();
}

/// Intersection over union of two masks (nonzero = set); 1 when both are empty.
inline double iou(const torch::Tensor& a, const torch::Tensor& b) {
  const double inter = a.logical_and(b).sum().item<double>();
  const double uni = a.logical_or(b).sum().item<double>();
  return uni == 0 ? 1.0 : inter / uni;
}

/// Removes `p` and, for a folder, everything below it (symbolic links as links).
/// Not std::filesystem::remove_all: torch 2.11's libtorch.so (the GPU image's) exports its own
/// copy of libstdc++'s filesystem functions, which our calls bind to, and its remove_all
/// crashes (make torch211 found it; the others this project calls work).
inline void remove_tree(const std::filesystem::path& p) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(p, ec)) {
    if (e.is_directory(ec) && !e.is_symlink(ec)) {
      remove_tree(e.path());
    } else {
      std::filesystem::remove(e.path(), ec);
    }
  }
  std::filesystem::remove(p, ec);
}

/// A fresh folder under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("carseg_test_" + std::to_string(rd()) + "_" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { remove_tree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// The photo cases make_fixtures.py wrote (cases.json).
inline nlohmann::json cases() {
  std::ifstream in(fixtures() / "cases.json");
  return nlohmann::json::parse(in);
}

/// Expects carseg::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    FAIL() << "expected carseg::Error";
  } catch (const carseg::Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

}  // namespace carseg::test
