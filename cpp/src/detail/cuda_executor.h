#pragma once

#include <torch/types.h>

#include <functional>
#include <memory>
#include <vector>

namespace carseg::detail {

class Backend;

/// The CUDA side of a Predictor: its own stream, a pinned (page-locked) staging buffer for
/// uploading photos, and one CUDA graph per input shape, captured on first use and replayed.
/// Not thread-safe: the Predictor calls it under its lock. On a build of libcarseg without
/// CUDA the constructor throws carseg::Error.
class CudaExecutor {
 public:
  /// `backend` must outlive the executor.
  CudaExecutor(Backend& backend, const torch::Device& device);
  ~CudaExecutor();
  CudaExecutor(const CudaExecutor&) = delete;
  CudaExecutor& operator=(const CudaExecutor&) = delete;

  /// Runs `f` with the executor's stream as the current CUDA stream.
  void on_stream(const std::function<void()>& f);
  /// CPU images -> the same images on the device: one copy into the pinned buffer each, then
  /// one asynchronous upload on the stream. Device images are passed through.
  [[nodiscard]] std::vector<torch::Tensor> upload(const std::vector<torch::Tensor>& images);
  /// The backend's logits for `x` from the CUDA graph of x's shape (a static output, valid
  /// until the next replay); undefined when that graph could not be captured (then run eager).
  [[nodiscard]] torch::Tensor replay(const torch::Tensor& x);
  /// Waits for everything queued on the stream.
  void synchronize();
  /// Batch sizes whose graph has been captured.
  [[nodiscard]] std::vector<int64_t> captured_batch_sizes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace carseg::detail
