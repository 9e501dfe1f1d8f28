#pragma once

#include <torch/types.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "carseg/error.h"

#include "carseg/manifest.h"
#include "carseg/predictor.h"

namespace carseg::detail {

/// One model runtime (mmdeploy style: one adapter per backend). Takes a preprocessed float
/// batch [N, 3, S, S] on the backend's device, returns logits [N, 1, S, S] on that device.
class Backend {
 public:
  virtual ~Backend() = default;
  [[nodiscard]] virtual torch::Tensor forward(const torch::Tensor& input) = 0;
  /// "torchscript", "aoti" or "onnx".
  [[nodiscard]] virtual std::string name() const = 0;
  /// Input dtype the model expects (fp32 or fp16).
  [[nodiscard]] virtual torch::ScalarType input_dtype() const = 0;
};

struct TorchScriptOptions {
  /// Run fp16 on CUDA through autocast when the file itself is fp32.
  bool autocast_fp16 = false;
  /// torch::jit::optimize_for_inference (faster on CPU; results may differ in the last bits).
  bool optimize_for_inference = false;
  /// CPU: oneDNN Graph fusion of the frozen graph (process-wide; results may differ in the
  /// last bits).
  bool onednn_fusion = false;
  /// Precision recorded in the manifest for this file.
  torch::ScalarType file_dtype = torch::kFloat32;
};

/// Loads a (frozen) TorchScript model from `bytes` (the file `file`, already read and checked)
/// directly onto `device`: frozen files keep weights as constants, which module.to(device)
/// would not move. Throws carseg::Error.
[[nodiscard]] std::unique_ptr<Backend> make_torchscript_backend(
    const std::vector<std::uint8_t>& bytes, const std::filesystem::path& file,
    const torch::Device& device, const TorchScriptOptions& options);

/// Whether this build of libcarseg can load AOTInductor packages (.pt2).
[[nodiscard]] bool aoti_available();
/// Loads an AOTInductor package from `bytes` (the file `file`, already read and checked): they
/// are written to a private folder (mode 0700, created exclusively) and loaded from there, so
/// what is loaded is what was checked. Throws carseg::Error (also when !aoti_available()).
[[nodiscard]] std::unique_ptr<Backend> make_aoti_backend(const std::vector<std::uint8_t>& bytes,
                                                         const std::filesystem::path& file,
                                                         const torch::Device& device,
                                                         torch::ScalarType file_dtype);

/// Whether this build can run ONNX models: built with ONNX Runtime's headers, and its library
/// loads (the first call loads it); `why` gets the reason when not.
[[nodiscard]] bool onnx_available(std::string* why = nullptr);
/// An ONNX Runtime session (CPU execution provider, intra-op threads as libtorch's) over `bytes`
/// (the file `file`, already read and checked). Throws carseg::Error: on CUDA, without ONNX
/// Runtime, for a model that is not fp32 [N, 3, H, W] -> one output.
[[nodiscard]] std::unique_ptr<Backend> make_onnx_backend(const std::vector<std::uint8_t>& bytes,
                                                         const std::filesystem::path& file,
                                                         const torch::Device& device);

/// carseg::Error for `file` from what a library threw: "<what failed>: <its first line>", its
/// whole text (torch's C++ backtrace) kept as the detail.
[[nodiscard]] Error library_error(const std::string& file, const std::string& what_failed,
                                  const std::exception& e);

/// The backend policy: which artifact of the manifest to load for these options and device,
/// its sha256 checked against the manifest before it is loaded. Asked for by name, that one
/// or an error. On auto: on the CPU at fp32, ONNX Runtime on the fp32 ONNX file (the fastest
/// on the CPUs measured) when the library loads; then an AOTInductor package compiled for this
/// device; then TorchScript; each falling back to the next when it cannot load. Throws
/// carseg::Error naming the manifest or the file.
[[nodiscard]] std::unique_ptr<Backend> load_backend(const Manifest& manifest,
                                                    const PredictorOptions& options,
                                                    const torch::Device& device);

/// options.precision, with Precision::kAuto resolved for this manifest and device (see kAuto).
[[nodiscard]] Precision resolve_precision(const Manifest& manifest, const PredictorOptions& options,
                                          const torch::Device& device);

}  // namespace carseg::detail
