#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/pipeline.h"
#include "carseg/predictor.h"
#include "detail/gpu_jpeg.h"
#include "detail/queues.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using carseg::Background;
using carseg::test::cases;
using carseg::test::fixtures;
using carseg::test::TempDir;
using carseg::test::write_bytes;

// Three fixture photos of different sizes, and one bad file per defect, in one folder.
fs::path make_photos(const TempDir& dir) {
  const fs::path in = dir / "in";
  fs::create_directories(in);
  const auto c = cases();
  for (int i : {0, 2, 4}) {
    const std::string name = c["images"][i]["name"].get<std::string>();
    fs::copy_file(fixtures() / (name + ".png"), in / (name + ".png"));
  }
  write_bytes(in / "empty.png", "");
  write_bytes(in / "text_not_an_image.jpg", "this is not an image\n");
  write_bytes(in / "notes.txt", "not a photo name: never listed\n");
  return in;
}

torch::Tensor as_tensor(carseg::Image& img) {
  return torch::from_blob(img.pixels.data(), {img.height, img.width, 3}, torch::kUInt8);
}

// The folder run writes, for every good photo, the predictor's own mask as a 0/255 PNG and the
// white cutout; each bad file is its own error, named; nothing temporary is left behind.
TEST(Pipeline, WritesMasksAndCutoutsAndReportsBadFiles) {
  CARSEG_REQUIRE_FIXTURES();
  TempDir dir;
  const fs::path in = make_photos(dir);
  const fs::path out = dir / "out";
  const carseg::Predictor predictor(fixtures() / "model");
  carseg::PipelineOptions opt;
  opt.batch = 2;
  std::size_t last_done = 0, calls = 0;
  opt.progress = [&](std::size_t done, std::size_t total, std::size_t, bool last) {
    ++calls;
    EXPECT_EQ(total, 5u);
    if (last) last_done = done;
  };
  const std::vector<fs::path> photos = carseg::collect_photos({in}, out);
  ASSERT_EQ(photos.size(), 5u);  // notes.txt is not a photo name
  EXPECT_TRUE(std::is_sorted(photos.begin(), photos.end()));
  const carseg::PipelineReport report = carseg::Pipeline(predictor, opt).run(photos, out);
  ASSERT_EQ(report.results.size(), 5u);
  EXPECT_EQ(report.succeeded(), 3u);
  EXPECT_EQ(report.failed(), 2u);
  EXPECT_EQ(last_done, 5u);
  EXPECT_GE(calls, 2u);
  for (const carseg::PhotoResult& r : report.results) {
    const std::string name = r.input.filename().string();
    if (name == "empty.png") {
      EXPECT_FALSE(r.ok);
      EXPECT_NE(r.error.find("empty.png: empty file"), std::string::npos) << r.error;
      continue;
    }
    if (name == "text_not_an_image.jpg") {
      EXPECT_FALSE(r.ok);
      EXPECT_NE(r.error.find("not an image"), std::string::npos) << r.error;
      continue;
    }
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.mask, carseg::mask_path(out, r.input));
    EXPECT_EQ(r.cutout, out / (r.input.stem().string() + "_cutout.jpg"));
    carseg::Image photo = carseg::read_image(r.input);
    const torch::Tensor want = predictor.predict(as_tensor(photo));
    carseg::Image mask = carseg::read_image(r.mask);
    ASSERT_EQ(mask.width, photo.width);
    ASSERT_EQ(mask.height, photo.height);
    const torch::Tensor got = as_tensor(mask).select(2, 0).div(255);
    EXPECT_TRUE(torch::equal(got, want)) << name;
    EXPECT_NEAR(r.foreground, want.to(torch::kFloat64).mean().item<double>(), 1e-9);
    const carseg::Image cut = carseg::read_image(r.cutout);
    EXPECT_EQ(cut.width, photo.width);
  }
  for (const auto& entry : fs::directory_iterator(out)) {
    const std::string name = entry.path().filename().string();
    EXPECT_TRUE(carseg::is_output_name(entry.path())) << "left behind: " << name;
  }
  // A second listing of the output folder as input finds no photos: they are the run's own.
  EXPECT_TRUE(carseg::collect_photos({out}, out).empty());
  EXPECT_EQ(carseg::collect_photos({out}).size(), 6u);
}

TEST(Pipeline, SameNameIsRefusedTransparentAndMasksOnly) {
  CARSEG_REQUIRE_FIXTURES();
  TempDir dir;
  const fs::path in = make_photos(dir);
  const auto name = cases()["images"][0]["name"].get<std::string>();
  fs::create_directories(dir / "other");
  fs::copy_file(in / (name + ".png"), dir / "other" / (name + ".png"));
  const carseg::Predictor predictor(fixtures() / "model");
  const std::vector<fs::path> photos = {in / (name + ".png"), dir / "other" / (name + ".png")};

  carseg::PipelineOptions opt;
  opt.cutout = Background::kTransparent;
  auto report = carseg::Pipeline(predictor, opt).run(photos, dir / "t");
  ASSERT_TRUE(report.results[0].ok);
  EXPECT_FALSE(report.results[1].ok);
  EXPECT_NE(report.results[1].error.find("same name as"), std::string::npos);
  EXPECT_EQ(report.results[0].cutout.extension(), ".png");
  EXPECT_TRUE(fs::exists(dir / "t" / (name + "_cutout.png")));

  opt.cutout.reset();
  report = carseg::Pipeline(predictor, opt).run({photos[0]}, dir / "m");
  ASSERT_TRUE(report.results[0].ok);
  EXPECT_TRUE(report.results[0].cutout.empty());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "m"), fs::directory_iterator()), 1);

  opt.write = false;  // the benchmark's mode: everything encoded, nothing written
  report = carseg::Pipeline(predictor, opt).run({photos[0]}, dir / "nothing");
  ASSERT_TRUE(report.results[0].ok);
  EXPECT_FALSE(fs::exists(dir / "nothing"));
}

TEST(Pipeline, UnwritableOutputAndBadOptionsAreErrors) {
  CARSEG_REQUIRE_FIXTURES();
  TempDir dir;
  write_bytes(dir / "file", "in the way");
  const carseg::Predictor predictor(fixtures() / "model");
  carseg::test::expect_error(
      [&] { (void)carseg::Pipeline(predictor, {}).run({dir / "x.png"}, dir / "file" / "out"); },
      {"cannot create the output folder"});
  carseg::PipelineOptions opt;
  opt.batch = 0;
  try {
    carseg::Pipeline p(predictor, opt);
    FAIL() << "expected carseg::OptionError";
  } catch (const carseg::OptionError& e) {
    EXPECT_EQ(e.field(), "batch");
  }
}

// On a GPU: the folder run in fp16 with CUDA graphs gives the CPU's masks (to fp16's IoU), and
// batches of photos of different sizes reuse one graph per batch shape.
TEST(PipelineCuda, FolderRunOnTheGpuMatchesTheCpu) {
  if (!carseg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  CARSEG_REQUIRE_FIXTURES();
  TempDir dir;
  const fs::path in = make_photos(dir);
  const std::vector<fs::path> photos = carseg::collect_photos({in});
  const carseg::Predictor cpu(fixtures() / "model");
  carseg::PredictorOptions o;
  o.device = "cuda";
  o.precision = carseg::Precision::kFp16;
  const carseg::Predictor gpu(fixtures() / "model", o);
  carseg::PipelineOptions opt;
  opt.batch = 2;
  const auto a = carseg::Pipeline(cpu, opt).run(photos, dir / "cpu");
  const auto b = carseg::Pipeline(gpu, opt).run(photos, dir / "gpu");
  ASSERT_EQ(a.succeeded(), b.succeeded());
  for (std::size_t i = 0; i < photos.size(); ++i) {
    if (!a.results[i].ok) continue;
    carseg::Image ma = carseg::read_image(a.results[i].mask);
    carseg::Image mb = carseg::read_image(b.results[i].mask);
    EXPECT_GE(carseg::test::iou(as_tensor(ma), as_tensor(mb)), 0.98) << photos[i];
  }
  const auto graphs = gpu.captured_batch_sizes();
  EXPECT_FALSE(graphs.empty());
}

// GPU JPEG decoding (PipelineOptions::gpu_decode, detail/gpu_jpeg.h): refused, with the reason,
// for a CPU device and a CPU predictor's pipeline, and without a GPU.
TEST(GpuJpeg, NeedsACudaDevice) {
  try {
    const carseg::detail::GpuJpegDecoder d(torch::Device(torch::kCPU));
    FAIL() << "expected carseg::OptionError";
  } catch (const carseg::OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("GPU decoding needs a CUDA device"), std::string::npos) << e.what();
  }
  if (!carseg::cuda_available()) {
    try {
      const carseg::detail::GpuJpegDecoder d(torch::Device(torch::kCUDA, 0));
      FAIL() << "expected carseg::OptionError";
    } catch (const carseg::OptionError& e) {
      EXPECT_NE(std::string(e.what()).find("decode: GPU decoding needs"), std::string::npos) << e.what();
    }
  }
  CARSEG_REQUIRE_FIXTURES();
  const carseg::Predictor cpu(fixtures() / "model");
  carseg::PipelineOptions opt;
  opt.gpu_decode = true;
  EXPECT_THROW(carseg::Pipeline(cpu, opt), carseg::OptionError);
}

// nvJPEG's library loads and has the functions used, GPU or not, where the build found one
// (torch's CUDA wheels and torchvision's bring it).
TEST(GpuJpeg, LoadsNvjpeg) {
  std::string path;
  try {
    path = carseg::detail::GpuJpegDecoder::load_library();
  } catch (const carseg::OptionError& e) {
    GTEST_SKIP() << "no nvJPEG here: " << e.what();
  }
  EXPECT_NE(path.find("nvjpeg"), std::string::npos) << path;
}

// JPEG copies of three fixture photos, and one cut short after its header.
fs::path make_jpegs(const TempDir& dir) {
  const fs::path in = dir / "jpegs";
  fs::create_directories(in);
  const auto c = cases();
  std::vector<std::uint8_t> jpeg;
  for (int i : {0, 2, 4}) {
    const std::string name = c["images"][i]["name"].get<std::string>();
    jpeg = carseg::encode_jpeg(carseg::read_image(fixtures() / (name + ".png")), 92);
    carseg::write_file_atomic(in / (name + ".jpg"), jpeg);
  }
  jpeg.resize(jpeg.size() / 2);
  carseg::write_file_atomic(in / "truncated.jpg", jpeg);
  return in;
}

// On a GPU: nvJPEG's pixels are libjpeg-turbo's to within its own colour conversion and chroma
// upsampling (a few levels on average), and the folder run with JPEGs decoded by nvJPEG gives the masks the predictor
// gives for those pixels; a truncated JPEG is its own error; masks-only runs need no copy back.
// The second GPU run (H200) compared the masks with the CPU decoder's run instead and found
// IoU 0.88-0.93: the fixture's barely trained model moves that much for +-1 level of noise
// (IoU 0.96-0.98 on the CPU), so the decoders are compared on pixels, and the trained model's
// masks from both decoders are compared in the GPU check (e2e.json).
TEST(PipelineCuda, GpuDecodingMatchesCpuDecoding) {
  if (!carseg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  CARSEG_REQUIRE_FIXTURES();
  ASSERT_NO_THROW((void)carseg::detail::GpuJpegDecoder::load_library());
  TempDir dir;
  const std::vector<fs::path> photos = carseg::collect_photos({make_jpegs(dir)});
  ASSERT_EQ(photos.size(), 4u);
  carseg::PredictorOptions o;
  o.device = "cuda";
  const carseg::Predictor gpu(fixtures() / "model", o);
  carseg::PipelineOptions opt;
  opt.batch = 4;
  const auto a = carseg::Pipeline(gpu, opt).run(photos, dir / "cpu_decode");
  opt.gpu_decode = true;
  const auto b = carseg::Pipeline(gpu, opt).run(photos, dir / "gpu_decode");
  opt.cutout.reset();
  const auto masks_only = carseg::Pipeline(gpu, opt).run(photos, dir / "gpu_masks");
  ASSERT_EQ(a.succeeded(), 3u);
  ASSERT_EQ(b.succeeded(), 3u);
  ASSERT_EQ(masks_only.succeeded(), 3u);
  const carseg::detail::GpuJpegDecoder decoder(gpu.device());
  carseg::detail::GpuJpegDecoder::Session session(decoder);
  for (std::size_t i = 0; i < photos.size(); ++i) {
    if (photos[i].filename() == "truncated.jpg") {
      EXPECT_FALSE(b.results[i].ok);
      EXPECT_NE(b.results[i].error.find("truncated.jpg"), std::string::npos) << b.results[i].error;
      continue;
    }
    ASSERT_TRUE(b.results[i].ok) << b.results[i].error;
    const std::vector<std::uint8_t> jpeg = carseg::read_file(photos[i]);
    carseg::Image cpu_pixels = carseg::decode_image(jpeg, photos[i].string());
    const torch::Tensor on_gpu = session.decode(jpeg, cpu_pixels.width, cpu_pixels.height, photos[i].string());
    ASSERT_TRUE(on_gpu.is_cuda());
    const torch::Tensor gpu_pixels = on_gpu.cpu();
    const torch::Tensor diff = (gpu_pixels.to(torch::kInt32) - as_tensor(cpu_pixels).to(torch::kInt32)).abs();
    const double mean = diff.to(torch::kFloat64).mean().item<double>();
    std::cerr << photos[i].filename() << ": nvJPEG against libjpeg-turbo, mean |diff| " << mean << ", max "
              << diff.max().item<int>() << " levels\n";
    // Measured on the H200 (nvJPEG of CUDA 13): 2.5-2.9 levels on average, 14-25 at most.
    EXPECT_LT(mean, 4.0) << photos[i];
    // The run's masks are the predictor's for nvJPEG's pixels.
    const carseg::Matte want = gpu.predict_mattes({on_gpu})[0];
    carseg::Image mb = carseg::read_image(b.results[i].mask);
    carseg::Image mc = carseg::read_image(masks_only.results[i].mask);
    EXPECT_GE(carseg::test::iou(as_tensor(mb).select(2, 0).gt(0), want.mask.gt(0)), 0.99) << photos[i];
    EXPECT_TRUE(torch::equal(as_tensor(mb), as_tensor(mc))) << photos[i];
    carseg::Image ca = carseg::read_image(a.results[i].cutout);
    carseg::Image cb = carseg::read_image(b.results[i].cutout);
    const double cut = (as_tensor(ca).to(torch::kFloat32) - as_tensor(cb).to(torch::kFloat32)).abs().mean().item<double>();
    EXPECT_LT(cut, 3.0) << photos[i];
  }
}

// A producer blocked on a full queue wakes when the consumer gives up, and its item is dropped.
TEST(PipelineQueue, CloseWakesABlockedProducer) {
  carseg::detail::BoundedQueue<int> q(1);
  ASSERT_TRUE(q.push(1));
  std::atomic<int> result{-1};
  std::thread producer([&] { result = q.push(2) ? 1 : 0; });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(result.load(), -1);  // still waiting for room
  q.close();
  producer.join();
  EXPECT_EQ(result.load(), 0);
  EXPECT_EQ(q.pop_up_to(8), std::vector<int>{1});  // what was queued drains, then nothing
  EXPECT_TRUE(q.pop_up_to(8).empty());
}

}  // namespace
