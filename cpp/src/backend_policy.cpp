// Which artifact a Predictor loads, and how: the policy in one place, apart from the running.
#include <c10/util/Exception.h>

#include <iostream>

#include "carseg/error.h"
#include "detail/backend.h"

namespace carseg::detail {
namespace {

void log_line(const std::string& line) { std::cerr << "carseg: " << line << std::endl; }

// The artifact of `format` that best fits the request: same precision and device first.
std::string pick_artifact(const Manifest& m, const std::string& format, const std::string& precision,
                          const std::string& device_type) {
  std::string best;
  int best_score = -1;
  for (const auto& [name, a] : m.artifacts()) {
    if (a.format != format) continue;
    const int score = (a.precision == precision ? 2 : 0) + (a.device == device_type ? 1 : 0);
    if (score > best_score) {
      best = name;
      best_score = score;
    }
  }
  return best;
}

torch::ScalarType dtype_of(const ArtifactEntry& a) {
  return a.precision == "fp16" ? torch::kHalf : torch::kFloat32;
}

}  // namespace

Error library_error(const std::string& file, const std::string& what_failed,
                    const std::exception& e) {
  std::string text;
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) {
    text = c10e->what_without_backtrace();
  } else {
    text = e.what();
  }
  std::string first = text.substr(0, text.find('\n'));
  if (first.size() > 240) first = first.substr(0, 240) + "...";  // --verbose has it all
  return Error(file, what_failed + ": " + (first.empty() ? "unknown error" : first), e.what());
}

Precision resolve_precision(const Manifest& manifest, const PredictorOptions& options,
                            const torch::Device& device) {
  if (options.precision != Precision::kAuto) return options.precision;
  // int8 is what the CPU runs fastest (benchmarks/results/cpu-amd-epyc: ONNX Runtime int8
  // against fp32), taken only where the folder proved it: verify passed it against fp32.
  if (device.is_cuda() || (options.backend != BackendKind::kAuto && options.backend != BackendKind::kOnnx)) {
    return Precision::kFp32;
  }
  // The int8 artifact load_backend would load, and only if verify passed that one.
  const std::string q = pick_artifact(manifest, "onnx", "int8", "cpu");
  if (!q.empty()) {
    const ArtifactEntry& a = manifest.artifact(q);
    if (a.precision == "int8" && a.verified && onnx_available()) return Precision::kInt8;
  }
  return Precision::kFp32;
}

std::unique_ptr<Backend> load_backend(const Manifest& manifest, const PredictorOptions& options,
                                      const torch::Device& device) {
  const std::string want_precision = to_string(options.precision);
  const std::string device_type = device.is_cuda() ? "cuda" : "cpu";

  // int8: the statically quantized ONNX model, through ONNX Runtime, or nothing.
  if (options.precision == Precision::kInt8) {
    if (options.backend != BackendKind::kAuto && options.backend != BackendKind::kOnnx) {
      throw OptionError("backend", "int8 runs through ONNX Runtime: use auto or onnx");
    }
    const std::string q = pick_artifact(manifest, "onnx", "int8", "cpu");
    if (q.empty() || manifest.artifact(q).precision != "int8") {
      throw Error(manifest.path().string(), "no int8 artifact (make one with `python -m export "
                                            "int8 FOLDER --calibration TRAINING_PHOTOS`)");
    }
    return make_onnx_backend(manifest.read_verified_artifact(q), manifest.artifact_path(q),
                             device);
  }

  // ONNX Runtime when asked for, and on auto on the CPU (the fastest CPU backend measured:
  // benchmarks/results), when the manifest has an fp32 ONNX file and the library loads.
  const std::string onnx = pick_artifact(manifest, "onnx", "fp32", "cpu");
  const bool onnx_fits = !onnx.empty() && manifest.artifact(onnx).precision == "fp32" &&
                         !device.is_cuda() && options.precision == Precision::kFp32;
  if (options.backend == BackendKind::kOnnx ||
      (options.backend == BackendKind::kAuto && onnx_fits && onnx_available())) {
    if (onnx.empty()) {
      throw Error(manifest.path().string(), "no ONNX artifact (format \"onnx\") to load");
    }
    const ArtifactEntry& a = manifest.artifact(onnx);
    if (a.precision != "fp32") {
      throw Error(manifest.artifact_path(onnx).string(),
                  "the ONNX Runtime backend runs fp32 models; this one is " + a.precision);
    }
    try {
      return make_onnx_backend(manifest.read_verified_artifact(onnx),
                               manifest.artifact_path(onnx), device);
    } catch (const Error& e) {
      if (options.backend == BackendKind::kOnnx) throw;
      log_line(std::string(e.what()) + "; falling back to the other backends");
    }
  }

  // AOTI first when asked for (or on auto when the manifest has a package for this device).
  const std::string aoti = pick_artifact(manifest, "aoti", want_precision, device_type);
  const bool aoti_fits = !aoti.empty() && manifest.artifact(aoti).device == device_type;
  if (options.backend == BackendKind::kAoti ||
      (options.backend == BackendKind::kAuto && aoti_fits && aoti_available())) {
    if (aoti.empty()) {
      throw Error(manifest.path().string(), "no AOTInductor artifact (format \"aoti\") to load");
    }
    const ArtifactEntry& a = manifest.artifact(aoti);
    const std::vector<std::uint8_t> bytes = manifest.read_verified_artifact(aoti);
    try {
      std::unique_ptr<Backend> backend =
          make_aoti_backend(bytes, manifest.artifact_path(aoti), device, dtype_of(a));
      if (options.precision == Precision::kFp16 && a.precision != "fp16") {
        log_line("the AOTInductor package is " + a.precision + ": running it in " + a.precision);
      }
      return backend;
    } catch (const Error& e) {
      if (options.backend == BackendKind::kAoti) throw;
      log_line(std::string(e.what()) + "; falling back to TorchScript");
    }
  }

  const std::string ts = pick_artifact(manifest, "torchscript", want_precision, device_type);
  if (ts.empty()) {
    throw Error(manifest.path().string(), "no TorchScript artifact (format \"torchscript\")");
  }
  const ArtifactEntry& a = manifest.artifact(ts);
  const std::vector<std::uint8_t> bytes = manifest.read_verified_artifact(ts);
  if (a.precision == "fp16" && !device.is_cuda()) {
    throw Error(manifest.artifact_path(ts).string(),
                "an fp16 artifact needs a CUDA device; export an fp32 folder for the CPU");
  }
  if (a.precision == "fp16" && options.precision == Precision::kFp32) {
    log_line("the TorchScript artifact is fp16 (the folder's precision): running fp16");
  }
  TorchScriptOptions ts_options;
  ts_options.file_dtype = dtype_of(a);
  ts_options.autocast_fp16 = options.precision == Precision::kFp16 && a.precision != "fp16";
  ts_options.optimize_for_inference = options.optimize_for_inference;
  ts_options.onednn_fusion = options.onednn_fusion;
  return make_torchscript_backend(bytes, manifest.artifact_path(ts), device, ts_options);
}

}  // namespace carseg::detail
