#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace carseg {

/// The preprocessing contract of docs/manifest.md (python/carseg/preprocess.py PreprocessSpec).
struct PreprocessSpec {
  int size = 256;
  std::array<double, 3> mean = {0.485, 0.456, 0.406};
  std::array<double, 3> std = {0.229, 0.224, 0.225};
  double max_pixel_value = 255.0;
  double pad_value = 0.0;

  /// (h', w') after fitting the longest side to `size`, round-half-to-even as Python's round.
  [[nodiscard]] std::pair<int, int> resized_shape(int height, int width) const;
  /// Throws carseg::Error("preprocessing", ...) when a field is out of range.
  void validate() const;
};

/// manifest.json's output.refine (python/carseg/runtime/refine.py RefineSpec): the guided
/// filter that turns the model's logits into the mask and alpha matte at the photo's size.
struct RefineSpec {
  double radius = 4.0;     // window radius, in pixels of the model's input
  double eps = 1e-4;       // regularization
  double subsample = 1.0;  // a fitting cell, in pixels of the model's input (never under 1 photo px)
  double softness = 0.5;   // soft edge: alpha = clamp((q - threshold) / softness + 0.5, 0, 1)

  static constexpr double kMaxRadius = 256;
  static constexpr double kMaxSubsample = 64;

  /// The fitting grid for a photo and a model of input `size`: with s = max(H, W) / size and
  /// cell = max(1, subsample * s) photo pixels, height = round(H / cell), width likewise (each
  /// at least 1), radius = max(1, round(radius * s / cell)) cells; round half to even.
  struct Grid {
    int height = 1, width = 1, radius = 1;
  };
  [[nodiscard]] Grid grid(int height, int width, int size) const;
  /// Throws OptionError("refine", ...) naming the field out of range.
  void validate() const;
};

/// One entry of manifest.json's "artifacts".
struct ArtifactEntry {
  std::string name;       // key: "torchscript", "onnx", "aoti", ...
  std::string file;       // file name inside the artifact folder
  std::string format;     // "torchscript" | "onnx" | "aoti"
  std::string precision;  // "fp32" | "fp16"
  std::string device;     // device it was exported for ("cpu", "cuda")
  std::string sha256;     // 64 lower-case hex digits
  bool verified = false;  // parity.passed: `python -m export verify` passed it
};

/// manifest.json, parsed and validated once (schema_version 1). A manifest is untrusted input:
/// any size, depth, type or value gives a carseg::Error that repeats at most a few dozen
/// characters of it. The model files it names are another matter: an AOTInductor package is
/// native code that runs when loaded, so an artifact folder must come from someone you trust
/// (TorchScript is the safer choice for a folder you did not make).
class Manifest {
 public:
  /// `path` is an artifact folder or a manifest.json file. Throws carseg::Error.
  [[nodiscard]] static Manifest load(const std::filesystem::path& path);
  /// Parses JSON text; `source` names it in messages and gives the artifact folder.
  [[nodiscard]] static Manifest parse(const std::string& json, const std::filesystem::path& source);

  static constexpr int kSchemaVersion = 1;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::filesystem::path dir() const { return path_.parent_path(); }
  [[nodiscard]] const PreprocessSpec& preprocessing() const { return preprocessing_; }
  [[nodiscard]] double threshold() const { return threshold_; }
  /// output.refine, or nullopt (a manifest without it: the model's mask, resized).
  [[nodiscard]] const std::optional<RefineSpec>& refine() const { return refine_; }
  [[nodiscard]] const std::string& arch() const { return arch_; }
  [[nodiscard]] const std::string& encoder_name() const { return encoder_name_; }
  [[nodiscard]] const std::map<std::string, ArtifactEntry>& artifacts() const { return artifacts_; }
  [[nodiscard]] bool has_artifact(const std::string& name) const {
    return artifacts_.count(name) != 0;
  }
  /// Throws carseg::Error naming the manifest when there is no such artifact.
  [[nodiscard]] const ArtifactEntry& artifact(const std::string& name) const;
  /// Absolute path of an artifact's file.
  [[nodiscard]] std::filesystem::path artifact_path(const std::string& name) const;
  /// Checks that the artifact's file exists and its sha256 matches; throws carseg::Error
  /// naming the file, the expected and the actual hash.
  void verify_artifact(const std::string& name) const;
  /// The artifact's file, read once (at most kMaxArtifactBytes) and checked against the
  /// manifest's sha256: what a backend loads is exactly what was checked, with no second open
  /// of the path in between. Throws like verify_artifact.
  [[nodiscard]] std::vector<std::uint8_t> read_verified_artifact(const std::string& name) const;

  /// Largest model file read (this model's are about 60 MB).
  static constexpr std::int64_t kMaxArtifactBytes = 4LL << 30;

 private:
  std::filesystem::path path_;
  PreprocessSpec preprocessing_;
  double threshold_ = 0.5;
  std::optional<RefineSpec> refine_;
  std::string arch_;
  std::string encoder_name_;
  std::map<std::string, ArtifactEntry> artifacts_;
};

}  // namespace carseg
