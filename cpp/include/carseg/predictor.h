#pragma once

#include <torch/types.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "carseg/cutout.h"
#include "carseg/error.h"  // what the Predictor throws
#include "carseg/manifest.h"
#include "carseg/refine.h"

namespace carseg {

/// kInt8: the manifest's statically quantized ONNX model (`python -m export int8`), on the
/// CPU through ONNX Runtime; fp32 in and out.
/// kAuto (the default): the fastest precision the folder has proven for the device. On the CPU,
/// int8 where the manifest lists an int8 model whose verify passed (`parity.passed`: its masks
/// kept the mask-IoU tolerance against eager fp32 on real photos) and ONNX Runtime loads, with
/// backend auto or onnx; otherwise fp32 (and fp32 too, with a line on stderr saying why, where
/// that int8 model then fails to load). On CUDA, fp32 (fp16 is asked for by name).
/// Predictor::precision() gives what it resolved to.
enum class Precision { kFp32, kFp16, kInt8, kAuto };
enum class BackendKind { kAuto, kTorchScript, kAoti, kOnnx };
/// Where a call's results are put: on the CPU (the default), or left on the predictor's
/// device, so that a caller on CUDA gets CUDA tensors and no copy back. Results left on a CUDA
/// device are ordered before whatever the caller's current CUDA stream does next, as any
/// tensor made on that stream would be; on a CPU predictor the two are the same.
enum class Output { kCpu, kDevice };

/// Parse "auto"/"fp32"/"fp16"/"int8" and "auto"/"torchscript"/"aoti"/"onnx"; throw
/// OptionError("precision" or "backend", ...) on anything else.
[[nodiscard]] Precision parse_precision(const std::string& s);
[[nodiscard]] BackendKind parse_backend(const std::string& s);
/// "fp32", "fp16", "int8" or "auto".
[[nodiscard]] std::string to_string(Precision precision);
/// Whether this process can use a CUDA device (false on a CPU-only build or machine).
[[nodiscard]] bool cuda_available();
/// The CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota
/// (/sys/fs/cgroup/cpu.max, rounded up). At least 1.
[[nodiscard]] int available_cpus();

struct PredictorOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:1"
  Precision precision = Precision::kAuto;
  std::optional<double> threshold;  // overrides manifest.json's output.threshold
  bool use_cuda_graphs = true;      // capture and replay per batch shape (CUDA only)
  BackendKind backend = BackendKind::kAuto;
  int warmup_iters = 2;           // forward passes at construction
  bool optimize_for_inference = false;  // TorchScript: faster on CPU, not bit-identical
  /// CPU, TorchScript: oneDNN Graph fusion of the frozen graph (conv + bias + ReLU/add in one
  /// oneDNN partition). Faster at batch 1; logits differ from unfused ones by float rounding.
  /// It is a process-wide TorchScript pass: once on, it stays on for every CPU TorchScript
  /// module in the process.
  bool onednn_fusion = false;
  /// true: pre- and post-processing op for op as the Python reference (bit-identical on the
  /// CPU). false (CPU only): fused kernels (Preprocessor::preprocess_fused, mask_fused), one
  /// pass over the pixels and no full-size float images; a mask pixel whose logit is within
  /// float rounding of the threshold can differ from the reference.
  bool exact = true;
  /// Apply the manifest's output.refine (where it has one): the mask follows the photo's edges
  /// at full resolution, and predict_mattes gives a soft alpha matte. false: the model's mask,
  /// resized.
  bool refine = true;
  /// Overrides output.refine.softness (the width of the matte's soft edge, in (0, 1]).
  std::optional<double> softness;
};

/// Loads an artifact folder (manifest.json + model file), checks it, warms it up, and turns
/// photos into masks at their own resolution.
///
/// Thread-safe: any number of threads may call one Predictor. The model's forward pass (and on
/// CUDA everything touching the stream, staging buffer and CUDA graphs) runs under one lock; on
/// the CPU, preprocessing (resize, normalize) and post-processing (resize back, threshold) run
/// outside it, so one call's pre/post-processing overlaps another call's forward pass.
/// Images larger than kDefaultMaxPixels (image_io.h) are refused with carseg::Error.
class Predictor {
 public:
  /// Throws carseg::Error: bad manifest, sha256 mismatch, unloadable model; OptionError for a
  /// bad option, CUDA requested but not available among them ("device", "CUDA requested but
  /// not available").
  explicit Predictor(const std::filesystem::path& artifacts, PredictorOptions options = {});
  ~Predictor();
  Predictor(const Predictor&) = delete;
  Predictor& operator=(const Predictor&) = delete;
  Predictor(Predictor&&) noexcept;
  Predictor& operator=(Predictor&&) noexcept;

  /// uint8 [H, W, 3] RGB -> uint8 mask [H, W] in {0, 1} on the CPU. An image may be on the CPU
  /// or, for a CUDA predictor, on its device (read in place, after the work already queued on
  /// the caller's current stream).
  [[nodiscard]] torch::Tensor predict(const torch::Tensor& image_hwc_u8,
                                      Output output = Output::kCpu) const;
  /// Images of different sizes in one forward pass -> one mask each.
  [[nodiscard]] std::vector<torch::Tensor> predict_batch(const std::vector<torch::Tensor>& images,
                                                         Output output = Output::kCpu) const;
  /// float32 logits [H, W] per image, at each image's own size.
  [[nodiscard]] std::vector<torch::Tensor> predict_logits(const std::vector<torch::Tensor>& images,
                                                          Output output = Output::kCpu) const;
  /// sigmoid of predict_logits.
  [[nodiscard]] std::vector<torch::Tensor> predict_probabilities(
      const std::vector<torch::Tensor>& images, Output output = Output::kCpu) const;
  /// Per image its mask and alpha matte (refine.h); with refinement also the fit that cutouts
  /// use to decontaminate the edge (on the CPU when the output is). refine = false skips the
  /// refinement for this call (a front end's per-request switch).
  [[nodiscard]] std::vector<Matte> predict_mattes(const std::vector<torch::Tensor>& images,
                                                  bool refine = true,
                                                  Output output = Output::kCpu) const;
  /// The two halves of predict_mattes, for a caller that spreads the second over threads (the
  /// folder pipeline): the model's logits [1, S, S] per image (on the predictor's device), and
  /// one image's matte from its logits. matte_from_logits needs no lock: any number of threads
  /// may run it at once, beside another call's forward pass.
  [[nodiscard]] std::vector<torch::Tensor> predict_model_logits(
      const std::vector<torch::Tensor>& images) const;
  [[nodiscard]] Matte matte_from_logits(const torch::Tensor& logits, const torch::Tensor& image_hwc_u8,
                                        bool refine = true) const;
  /// The cutout (composite_matte, cutout.h): uint8 [H, W, 3] on white or [H, W, 4] RGBA, on the CPU.
  [[nodiscard]] torch::Tensor cutout(const torch::Tensor& image_hwc_u8,
                                     Background background) const;
  /// The cutout on any backdrop; crop_margin >= 0 crops it to the car's box grown by that many
  /// pixels.
  [[nodiscard]] torch::Tensor cutout(const torch::Tensor& image_hwc_u8, const Backdrop& backdrop,
                                     int crop_margin = -1) const;
  /// The model alone: preprocessed float [N, 3, S, S] (any device) -> logits [N, 1, S, S] on the
  /// predictor's device (CUDA graphs used when enabled and allow_graphs).
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& batch, bool allow_graphs = true) const;
  /// Waits for the predictor's work on its device (no-op on the CPU).
  void synchronize() const;

  [[nodiscard]] const Manifest& manifest() const;
  [[nodiscard]] torch::Device device() const;
  [[nodiscard]] double threshold() const;
  /// The refinement applied (nullopt: none).
  [[nodiscard]] const std::optional<RefineSpec>& refine() const;
  /// PredictorOptions' precision with kAuto resolved. (A folder whose TorchScript file is fp16
  /// runs fp16 whatever this says; the predictor logs it when loading.)
  [[nodiscard]] Precision precision() const;
  [[nodiscard]] std::string backend_name() const;
  [[nodiscard]] int input_size() const;
  /// Batch sizes whose CUDA graph has been captured (empty on the CPU).
  [[nodiscard]] std::vector<int64_t> captured_batch_sizes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace carseg
