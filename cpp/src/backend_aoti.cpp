#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "detail/backend.h"

#if __has_include(<torch/csrc/inductor/aoti_package/model_package_loader.h>)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#define CARSEG_HAS_AOTI 1
#endif
#if defined(CARSEG_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#endif

namespace carseg::detail {

#if defined(CARSEG_HAS_AOTI)
namespace {

// The checked bytes of a package, as a file in a private folder (mode 0700, a fresh name made
// by mkdtemp), removed with the folder when the package has been loaded. The loader takes a
// path; this way the path it opens holds exactly the bytes that were checked.
class PrivateCopy {
 public:
  PrivateCopy(const std::vector<std::uint8_t>& bytes, const std::filesystem::path& file) {
    std::string templ = (std::filesystem::temp_directory_path() / "carseg-aoti-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) {
      throw Error(file.string(), std::string("cannot make a private folder to load it from: ") +
                                     std::strerror(errno));
    }
    dir_ = templ;
    path_ = dir_ / "model.pt2";
    write_file_atomic(path_, bytes, /*overwrite=*/false);
  }
  ~PrivateCopy() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  PrivateCopy(const PrivateCopy&) = delete;
  PrivateCopy& operator=(const PrivateCopy&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path dir_, path_;
};

class AotiBackend final : public Backend {
 public:
  AotiBackend(const std::vector<std::uint8_t>& bytes, const std::filesystem::path& file,
              const torch::Device& device, torch::ScalarType dtype)
      : device_(device), dtype_(dtype) {
    const PrivateCopy copy(bytes, file);
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          copy.path().string(), "model", /*run_single_threaded=*/false, /*num_runners=*/1,
          device.is_cuda() ? device.index() : c10::DeviceIndex{-1});
    } catch (const std::exception& e) {
      throw library_error(file.string(), "cannot load AOTInductor package", e);
    }
  }

  torch::Tensor forward(const torch::Tensor& input) override {
    void* stream = nullptr;
#if defined(CARSEG_WITH_CUDA)
    // Run on the caller's current stream (the predictor's own stream, or a capture stream).
    if (device_.is_cuda()) stream = c10::cuda::getCurrentCUDAStream(device_.index()).stream();
#endif
    std::vector<torch::Tensor> out = loader_->run({input}, stream);
    if (out.empty()) throw Error("aoti", "expected one output tensor, got none");
    return out[0];
  }

  std::string name() const override { return "aoti"; }
  torch::ScalarType input_dtype() const override { return dtype_; }

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  torch::Device device_;
  torch::ScalarType dtype_;
};

}  // namespace

bool aoti_available() { return true; }

std::unique_ptr<Backend> make_aoti_backend(const std::vector<std::uint8_t>& bytes,
                                           const std::filesystem::path& file,
                                           const torch::Device& device,
                                           torch::ScalarType file_dtype) {
  return std::make_unique<AotiBackend>(bytes, file, device, file_dtype);
}

#else

bool aoti_available() { return false; }

std::unique_ptr<Backend> make_aoti_backend(const std::vector<std::uint8_t>&,
                                           const std::filesystem::path& file,
                                           const torch::Device&, torch::ScalarType) {
  throw Error(file.string(), "this libtorch has no AOTInductor package loader");
}

#endif

}  // namespace carseg::detail
