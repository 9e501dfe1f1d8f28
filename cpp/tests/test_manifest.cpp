#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "carseg/error.h"
#include "carseg/manifest.h"
#include "carseg/predictor.h"
#include "carseg/sha256.h"
#include "detail/backend.h"
#include "test_util.h"

namespace {

using carseg::Manifest;
using carseg::test::expect_error;
using carseg::test::TempDir;
using carseg::test::valid_manifest;
using nlohmann::json;

class ManifestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    carseg::test::write_bytes(dir_ / "model.torchscript.pt", "not really a model");
    sha_ = carseg::sha256_hex("not really a model");
  }
  void write(const json& j) { carseg::test::write_bytes(dir_ / "manifest.json", j.dump()); }
  TempDir dir_;
  std::string sha_;
};

TEST_F(ManifestTest, ParsesValidManifestAndVerifiesHash) {
  write(valid_manifest(sha_));
  const Manifest m = Manifest::load(dir_.path());
  EXPECT_EQ(m.preprocessing().size, 256);
  EXPECT_DOUBLE_EQ(m.preprocessing().mean[1], 0.456);
  EXPECT_DOUBLE_EQ(m.preprocessing().std[2], 0.225);
  EXPECT_DOUBLE_EQ(m.threshold(), 0.4);
  EXPECT_EQ(m.arch(), "Unet");
  EXPECT_EQ(m.artifacts().size(), 1u);  // the null "onnx" entry is skipped
  EXPECT_TRUE(m.has_artifact("torchscript"));
  EXPECT_EQ(m.artifact_path("torchscript"), dir_.path() / "model.torchscript.pt");
  EXPECT_NO_THROW(m.verify_artifact("torchscript"));
}

TEST_F(ManifestTest, LoadsFromFilePathToo) {
  write(valid_manifest(sha_));
  EXPECT_EQ(Manifest::load(dir_ / "manifest.json").dir(), dir_.path());
}

TEST_F(ManifestTest, RefusesOtherSchemaVersionNamingBoth) {
  json j = valid_manifest(sha_);
  j["schema_version"] = 2;
  write(j);
  expect_error([&] { (void)Manifest::load(dir_.path()); },
               {"manifest.json", "schema_version 2", "expected 1"});
}

TEST_F(ManifestTest, RefusesHashMismatchNamingFileExpectedAndActual) {
  const std::string wrong(64, 'a');
  write(valid_manifest(wrong));
  const Manifest m = Manifest::load(dir_.path());
  expect_error([&] { m.verify_artifact("torchscript"); },
               {"model.torchscript.pt", "sha256 mismatch", wrong, sha_});
}

TEST_F(ManifestTest, MissingModelFileIsNamed) {
  write(valid_manifest(sha_));
  std::filesystem::remove(dir_ / "model.torchscript.pt");
  const Manifest m = Manifest::load(dir_.path());
  expect_error([&] { m.verify_artifact("torchscript"); }, {"model.torchscript.pt", "no such file"});
}

TEST_F(ManifestTest, MissingManifestAndBadJson) {
  expect_error([&] { (void)Manifest::load(dir_.path()); }, {"manifest.json", "no such file"});
  carseg::test::write_bytes(dir_ / "manifest.json", "{\"schema_version\": 1,");
  expect_error([&] { (void)Manifest::load(dir_.path()); }, {"manifest.json", "not valid JSON"});
}

TEST_F(ManifestTest, BadFieldsAreNamed) {
  struct Case {
    const char* pointer;
    json value;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"/preprocessing/size", 100, "multiple of 32"},
      {"/preprocessing/mean", json::array({0.1, 0.2}), "preprocessing.mean"},
      {"/preprocessing/std", json::array({0.1, 0.0, 0.2}), "std"},
      {"/preprocessing/pad_position", "center", "pad_position"},
      {"/preprocessing/antialias", true, "antialias"},
      {"/preprocessing/colour", "x", "unknown field \"colour\""},
      {"/output/threshold", 1.5, "output.threshold"},
      {"/artifacts/torchscript/sha256", "xyz", "artifacts.torchscript.sha256"},
      {"/artifacts/torchscript/file", "../evil.pt", "artifacts.torchscript.file"},
      {"/artifacts/torchscript/precision", "int8", "precision"},
  };
  for (const auto& c : cases) {
    json j = valid_manifest(sha_);
    j[json::json_pointer(c.pointer)] = c.value;
    write(j);
    expect_error([&] { (void)Manifest::load(dir_.path()); }, {"manifest.json", c.expect});
  }
  json j = valid_manifest(sha_);
  j.erase("preprocessing");
  write(j);
  expect_error([&] { (void)Manifest::load(dir_.path()); }, {"missing field preprocessing"});
}

// Precision::kAuto: int8 on the CPU only where the manifest lists an int8 model that verify
// passed (parity.passed true) and the backend may be ONNX Runtime; fp32 everywhere else.
TEST_F(ManifestTest, AutoPrecisionTakesOnlyAVerifiedInt8Model) {
  carseg::test::write_bytes(dir_ / "model.int8.onnx", "not really a model");
  auto with_int8 = [&](const json& parity) {
    json j = valid_manifest(sha_);
    j["artifacts"]["onnx_int8"] = {{"file", "model.int8.onnx"}, {"format", "onnx"}, {"precision", "int8"},
                                   {"device", "cpu"}, {"sha256", sha_}};
    if (!parity.is_null()) j["artifacts"]["onnx_int8"]["parity"] = parity;
    write(j);
    return Manifest::load(dir_.path());
  };
  const torch::Device cpu("cpu"), cuda("cuda");
  auto resolve = [](const Manifest& m, carseg::Precision p, carseg::BackendKind b, const torch::Device& d) {
    carseg::PredictorOptions o;
    o.precision = p;
    o.backend = b;
    return carseg::detail::resolve_precision(m, o, d);
  };
  using carseg::BackendKind;
  using carseg::Precision;
  const Manifest verified = with_int8({{"passed", true}, {"mask_iou", 0.998}});
  EXPECT_TRUE(verified.artifact("onnx_int8").verified);
  EXPECT_FALSE(verified.artifact("torchscript").verified);
  const Precision cpu_auto = carseg::detail::onnx_available() ? Precision::kInt8 : Precision::kFp32;
  EXPECT_EQ(resolve(verified, Precision::kAuto, BackendKind::kAuto, cpu), cpu_auto);
  EXPECT_EQ(resolve(verified, Precision::kAuto, BackendKind::kOnnx, cpu), cpu_auto);
  EXPECT_EQ(resolve(verified, Precision::kAuto, BackendKind::kTorchScript, cpu), Precision::kFp32);
  EXPECT_EQ(resolve(verified, Precision::kAuto, BackendKind::kAuto, cuda), Precision::kFp32);
  EXPECT_EQ(resolve(verified, Precision::kFp32, BackendKind::kAuto, cpu), Precision::kFp32);
  // Not verified, failed, or a "passed" that is not true: fp32.
  for (const json& parity : {json(nullptr), json{{"passed", false}}, json{{"passed", "yes"}}, json("passed")}) {
    const Manifest m = with_int8(parity);
    EXPECT_FALSE(m.artifact("onnx_int8").verified) << parity.dump();
    EXPECT_EQ(resolve(m, Precision::kAuto, BackendKind::kAuto, cpu), Precision::kFp32) << parity.dump();
  }
  EXPECT_EQ(carseg::parse_precision("auto"), Precision::kAuto);
  EXPECT_EQ(carseg::to_string(Precision::kAuto), "auto");
  expect_error([] { (void)carseg::parse_precision("fp8"); }, {"expected auto, fp32, fp16 or int8", "fp8"});
}

TEST(PreprocessSpec, ResizedShapeRoundsHalfToEven) {
  carseg::PreprocessSpec s;  // size 256
  // 3 * 256/512 = 1.5 -> 2; 5 * 256/512 = 2.5 -> 2 (Python's round).
  EXPECT_EQ(s.resized_shape(3, 512), std::make_pair(2, 256));
  EXPECT_EQ(s.resized_shape(512, 5), std::make_pair(256, 2));
  EXPECT_EQ(s.resized_shape(1, 1000), std::make_pair(1, 256));
  EXPECT_EQ(s.resized_shape(1280, 1918), std::make_pair(171, 256));
  EXPECT_THROW((void)s.resized_shape(0, 5), carseg::Error);
}

TEST(PreprocessSpec, ResizedShapeMatchesPythonOnFixtureCases) {
  CARSEG_REQUIRE_FIXTURES();
  std::ifstream in(carseg::test::fixtures() / "cases.json");
  const json cases = json::parse(in);
  int n = 0;
  for (const auto& c : cases.at("resized")) {
    carseg::PreprocessSpec s;
    s.size = c[2].get<int>();
    const auto [h, w] = s.resized_shape(c[0].get<int>(), c[1].get<int>());
    EXPECT_EQ(h, c[3].get<int>()) << c.dump();
    EXPECT_EQ(w, c[4].get<int>()) << c.dump();
    ++n;
  }
  EXPECT_GT(n, 50);
}

}  // namespace
