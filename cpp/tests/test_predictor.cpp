#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/predictor.h"
#include "carseg/sha256.h"
#include "test_util.h"

namespace {

using carseg::test::cases;
using carseg::test::fixtures;
using carseg::test::iou;
using carseg::test::ref_logits;
using carseg::test::ref_mask;
using nlohmann::json;

// The fixture's model on the GPU, with the default options.
carseg::Predictor fixture_on_gpu() {
  carseg::PredictorOptions o;
  o.device = "cuda";
  return carseg::Predictor(fixtures() / "model", o);
}

// The Python reference ran the whole fixture set as one batch: so does this test, and on the
// CPU the masks must be identical (IoU 1), the logits equal to float rounding.
TEST(Predictor, BatchMatchesPythonReference) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Predictor predictor(fixtures() / "model", carseg::test::unrefined());
  EXPECT_EQ(predictor.backend_name(), "torchscript");
  EXPECT_DOUBLE_EQ(predictor.threshold(), c["threshold"].get<double>());
  const std::vector<torch::Tensor> images = carseg::test::png_photos(c);
  const std::vector<torch::Tensor> masks = predictor.predict_batch(images);
  const std::vector<torch::Tensor> logits = predictor.predict_logits(images);
  ASSERT_EQ(masks.size(), images.size());
  int64_t differing = 0;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const json& e = c["images"][i];
    const int h = e["h"].get<int>(), w = e["w"].get<int>();
    ASSERT_EQ(masks[i].sizes(), (std::vector<int64_t>{h, w}));
    EXPECT_EQ(masks[i].scalar_type(), torch::kUInt8);
    const torch::Tensor want = ref_mask(e);
    EXPECT_GE(iou(masks[i], want), 0.999) << e["name"];
    differing += (masks[i] != want).sum().item<int64_t>();
    const torch::Tensor want_logits = ref_logits(e);
    EXPECT_TRUE(torch::allclose(logits[i], want_logits, 1e-4, 1e-4))
        << e["name"] << ": max |diff| " << (logits[i] - want_logits).abs().max().item<float>();
  }
  EXPECT_EQ(differing, 0) << "mask pixels differing from the Python reference";
}

TEST(Predictor, SingleImageAgreesWithBatchAndHasNontrivialMask) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Predictor predictor(fixtures() / "model", carseg::test::unrefined());
  const json& e = c["images"][4];  // 480 x 640
  const torch::Tensor mask = predictor.predict(carseg::test::png_photo(e));
  EXPECT_GE(iou(mask, ref_mask(e)), 0.999);
  const double fg = mask.to(torch::kFloat32).mean().item<double>();
  EXPECT_GT(fg, 0.01);
  EXPECT_LT(fg, 0.99);
  const auto probs = predictor.predict_probabilities({carseg::test::png_photo(e)});
  EXPECT_GE(probs[0].min().item<float>(), 0.0f);
  EXPECT_LE(probs[0].max().item<float>(), 1.0f);
}

TEST(Predictor, ThresholdOverrideChangesTheMask) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  carseg::PredictorOptions lo, hi;
  lo.threshold = 0.05;
  hi.threshold = 0.95;
  lo.warmup_iters = hi.warmup_iters = 0;
  const torch::Tensor img = carseg::test::png_photo(c["images"][1]);
  const auto a = carseg::Predictor(fixtures() / "model", lo).predict(img).sum().item<int64_t>();
  const auto b = carseg::Predictor(fixtures() / "model", hi).predict(img).sum().item<int64_t>();
  EXPECT_GT(a, b);
}

TEST(Predictor, RefusesTamperedModelWithBothHashes) {
  CARSEG_REQUIRE_FIXTURES();
  carseg::test::TempDir dir;
  std::filesystem::copy_file(fixtures() / "model" / "manifest.json", dir / "manifest.json");
  carseg::test::write_bytes(dir / "model.torchscript.pt", "tampered");
  try {
    const carseg::Predictor p(dir.path());
    FAIL() << "expected carseg::Error";
  } catch (const carseg::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.torchscript.pt"), std::string::npos) << msg;
    EXPECT_NE(msg.find("sha256 mismatch"), std::string::npos) << msg;
  }
}

TEST(Predictor, Fp16ArtifactOnCpuIsAClearError) {
  CARSEG_REQUIRE_FIXTURES();
  carseg::test::TempDir dir;
  std::ifstream in(fixtures() / "model" / "manifest.json");
  json m = json::parse(in);
  carseg::test::write_bytes(dir / "model.torchscript.pt", "half");
  m["artifacts"] = {{"torchscript", {{"file", "model.torchscript.pt"}, {"format", "torchscript"},
                                     {"precision", "fp16"}, {"device", "cuda"},
                                     {"sha256", carseg::sha256_hex("half")}}}};
  carseg::test::write_bytes(dir / "manifest.json", m.dump());
  try {
    const carseg::Predictor p(dir.path());
    FAIL() << "expected carseg::Error";
  } catch (const carseg::Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp16 artifact needs a CUDA device"), std::string::npos)
        << e.what();
  }
}

TEST(Predictor, BadOptionsAreClearErrors) {
  CARSEG_REQUIRE_FIXTURES();
  carseg::PredictorOptions o;
  // The core names the option's field; the CLI says --device, the bindings device=.
  auto expect_field = [](const std::string& field, auto&& f) {
    try {
      f();
      FAIL() << "expected carseg::OptionError for " << field;
    } catch (const carseg::OptionError& e) {
      EXPECT_EQ(e.field(), field) << e.what();
    }
  };
  o.device = "tpu";
  expect_field("device", [&] { carseg::Predictor p(fixtures() / "model", o); });
  o = {};
  o.precision = carseg::Precision::kFp16;  // fp16 needs CUDA
  expect_field("precision", [&] { carseg::Predictor p(fixtures() / "model", o); });
  o = {};
  o.threshold = 1.5;
  expect_field("threshold", [&] { carseg::Predictor p(fixtures() / "model", o); });
  expect_field("precision", [] { (void)carseg::parse_precision("int4"); });
  expect_field("backend", [] { (void)carseg::parse_backend("tensorrt"); });
  o = {};
  o.backend = carseg::BackendKind::kAoti;  // the fixture has no .pt2
  EXPECT_THROW(carseg::Predictor(fixtures() / "model", o), carseg::Error);
}

TEST(Predictor, RejectsBadImages) {
  CARSEG_REQUIRE_FIXTURES();
  carseg::PredictorOptions o;
  o.warmup_iters = 0;
  const carseg::Predictor predictor(fixtures() / "model", o);
  EXPECT_THROW((void)predictor.predict(torch::zeros({8, 8, 4}, torch::kUInt8)), carseg::Error);
  EXPECT_THROW((void)predictor.predict_batch({}), carseg::Error);
}

TEST(PredictorCuda, CudaRequestedWithoutDeviceIsAClearError) {
  CARSEG_REQUIRE_FIXTURES();
  if (carseg::cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  carseg::PredictorOptions o;
  o.device = "cuda";
  try {
    const carseg::Predictor p(fixtures() / "model", o);
    FAIL() << "expected carseg::Error";
  } catch (const carseg::Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA requested but not available"), std::string::npos);
  }
}

// On a GPU: fp32 CUDA vs the CPU reference, fp16 + CUDA graphs vs fp32, and refinement on
// the GPU vs on the CPU. Found on the first GPU run (H200): this test compared refined CUDA
// masks with the reference's unrefined ones (IoU 0.61-0.74 on the fixture's small model);
// the reference contract is unrefined, and refinement has its own comparison below.
TEST(PredictorCuda, MatchesCpuAndCapturesGraphs) {
  if (!carseg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const std::vector<torch::Tensor> images = carseg::test::png_photos(c);
  carseg::PredictorOptions o = carseg::test::unrefined();
  o.device = "cuda";
  const carseg::Predictor fp32(fixtures() / "model", o);
  const auto m32 = fp32.predict_batch(images);
  for (std::size_t i = 0; i < images.size(); ++i) {
    EXPECT_GE(iou(m32[i], ref_mask(c["images"][i])), 0.99) << c["images"][i]["name"];
  }
  o.precision = carseg::Precision::kFp16;
  const carseg::Predictor fp16(fixtures() / "model", o);
  const auto m16 = fp16.predict_batch(images);
  const auto again = fp16.predict_batch(images);  // graph replay
  for (std::size_t i = 0; i < images.size(); ++i) {
    EXPECT_GE(iou(m16[i], m32[i]), 0.98);
    EXPECT_TRUE(torch::equal(m16[i], again[i]));
  }
  EXPECT_FALSE(fp16.captured_batch_sizes().empty());
}

TEST(PredictorCuda, RefinementOnTheGpuMatchesTheCpu) {
  if (!carseg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const std::vector<torch::Tensor> images = carseg::test::png_photos(c);
  carseg::PredictorOptions o;  // refinement on, as the manifest says
  const auto cpu = carseg::Predictor(fixtures() / "model", o).predict_batch(images);
  o.device = "cuda";
  const auto gpu = carseg::Predictor(fixtures() / "model", o).predict_batch(images);
  for (std::size_t i = 0; i < images.size(); ++i) {
    EXPECT_GE(iou(gpu[i], cpu[i]), 0.99) << c["images"][i]["name"];
  }
}

// Output::kDevice: results left where the predictor runs. On the CPU that is the CPU, with the
// values of the default call.
TEST(Predictor, OutputOnTheDeviceOfACpuPredictorIsTheCpu) {
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Predictor predictor(fixtures() / "model");
  const std::vector<torch::Tensor> images = carseg::test::png_photos(c);
  const auto masks = predictor.predict_batch(images);
  const auto here = predictor.predict_batch(images, carseg::Output::kDevice);
  const auto mattes = predictor.predict_mattes(images, true, carseg::Output::kDevice);
  for (std::size_t i = 0; i < images.size(); ++i) {
    EXPECT_TRUE(here[i].device().is_cpu());
    EXPECT_TRUE(torch::equal(here[i], masks[i]));
    EXPECT_TRUE(torch::equal(mattes[i].mask, masks[i]));
  }
}

// A CUDA photo in, results left on the GPU: the same values the CPU copies hold.
// Photos in pinned memory are uploaded from where they are (no staging copy); results asked for
// on the CPU come back in one batch of copies into pinned memory. Both give what pageable photos
// give, and a pinned photo may be overwritten once a call that left its results on the device
// has returned.
TEST(PredictorCuda, PinnedPhotosAndBatchedCopiesBack) {
  if (!carseg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Predictor gpu = fixture_on_gpu();
  const std::vector<torch::Tensor> pageable = carseg::test::png_photos(c);
  std::vector<torch::Tensor> pinned;
  for (const auto& im : pageable) pinned.push_back(im.pin_memory());
  const auto a = gpu.predict_mattes(pageable);
  const auto b = gpu.predict_mattes(pinned);
  const auto d = gpu.predict_mattes(pinned, true, carseg::Output::kDevice);
  for (auto& im : pinned) im.fill_(0);  // read already: the device results must not change
  for (std::size_t i = 0; i < pageable.size(); ++i) {
    const std::string name = c["images"][i]["name"];
    EXPECT_TRUE(b[i].mask.device().is_cpu() && b[i].alpha.device().is_cpu()) << name;
    EXPECT_TRUE(torch::equal(a[i].mask, b[i].mask)) << name;
    EXPECT_TRUE(torch::equal(a[i].alpha, b[i].alpha)) << name;
    ASSERT_TRUE(b[i].fit != nullptr) << name;
    EXPECT_TRUE(b[i].fit->a.device().is_cpu()) << name;  // cutouts decontaminate on the CPU
    EXPECT_TRUE(torch::equal(d[i].mask.cpu(), a[i].mask)) << name;
  }
}

// Found on the second GPU run (H200): "cuda" stayed cuda:-1, so a caller's image on cuda:0
// compared unequal to the predictor's device and skipped the wait on the caller's stream.
TEST(PredictorCuda, DeviceCudaIsResolvedToItsIndex) {
  if (!carseg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  CARSEG_REQUIRE_FIXTURES();
  const carseg::Predictor gpu = fixture_on_gpu();
  EXPECT_TRUE(gpu.device().has_index());
  EXPECT_EQ(gpu.device(), torch::empty({0}, torch::kCUDA).device());
  carseg::PredictorOptions o;
  o.device = "cuda:" + std::to_string(torch::cuda::device_count());
  try {
    const carseg::Predictor none(fixtures() / "model", o);
    ADD_FAILURE() << "expected an error for " << o.device;
  } catch (const carseg::Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA device(s)"), std::string::npos) << e.what();
  }
}

TEST(PredictorCuda, OutputOnTheDeviceStaysOnTheGpu) {
  if (!carseg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  CARSEG_REQUIRE_FIXTURES();
  const json c = cases();
  const carseg::Predictor gpu = fixture_on_gpu();
  std::vector<torch::Tensor> images = carseg::test::png_photos(c);
  for (auto& im : images) im = im.to(torch::kCUDA);
  const auto on_cpu = gpu.predict_mattes(images);
  const auto on_gpu = gpu.predict_mattes(images, true, carseg::Output::kDevice);
  const auto probs = gpu.predict_probabilities(images, carseg::Output::kDevice);
  for (std::size_t i = 0; i < images.size(); ++i) {
    EXPECT_TRUE(on_gpu[i].mask.is_cuda() && on_gpu[i].alpha.is_cuda() && probs[i].is_cuda());
    EXPECT_TRUE(on_cpu[i].mask.device().is_cpu());
    EXPECT_TRUE(torch::equal(on_gpu[i].mask.cpu(), on_cpu[i].mask)) << c["images"][i]["name"];
    EXPECT_TRUE(torch::equal(on_gpu[i].alpha.cpu(), on_cpu[i].alpha)) << c["images"][i]["name"];
  }
}

}  // namespace
