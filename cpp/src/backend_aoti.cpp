#include "detail/backend.h"
#include "carseg/error.h"

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

class AotiBackend final : public Backend {
 public:
  AotiBackend(const std::filesystem::path& file, const torch::Device& device,
              torch::ScalarType dtype)
      : device_(device), dtype_(dtype) {
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          file.string(), "model", /*run_single_threaded=*/false, /*num_runners=*/1,
          device.is_cuda() ? device.index() : c10::DeviceIndex{-1});
    } catch (const std::exception& e) {
      throw Error(file.string(), std::string("cannot load AOTInductor package: ") + e.what());
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

std::unique_ptr<Backend> make_aoti_backend(const std::filesystem::path& file,
                                           const torch::Device& device,
                                           torch::ScalarType file_dtype) {
  return std::make_unique<AotiBackend>(file, device, file_dtype);
}

#else

bool aoti_available() { return false; }

std::unique_ptr<Backend> make_aoti_backend(const std::filesystem::path& file,
                                           const torch::Device&, torch::ScalarType) {
  throw Error(file.string(), "this libtorch has no AOTInductor package loader");
}

#endif

}  // namespace carseg::detail
