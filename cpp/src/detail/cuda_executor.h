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

  /// Runs `f` with the executor's stream as the current CUDA stream. The stream that was
  /// current before (the caller's) is remembered for upload and hand_over.
  void on_stream(const std::function<void()>& f);
  /// CPU images -> the same images on the device: one copy into the pinned buffer each, then
  /// one asynchronous upload on the stream. Images already in pinned memory are uploaded from
  /// where they are, with no copy on the host (inputs_read() waits until they have been read).
  /// Device images are read in place: the stream first waits for the work queued on the
  /// caller's stream (which may still be writing them), and the caching allocator is told that
  /// the stream reads them.
  [[nodiscard]] std::vector<torch::Tensor> upload(const std::vector<torch::Tensor>& images);
  /// Returns once the last upload has read the caller's pinned images (which the caller may
  /// then overwrite).
  void inputs_read();
  /// The tensors `slots` point at, moved to the host together: an asynchronous copy each into
  /// pinned memory on the stream, then one wait, instead of a blocking copy (a whole-stream
  /// wait) per tensor. Tensors already on the host are left as they are.
  void to_host(const std::vector<torch::Tensor*>& slots);
  /// Results made on the stream, handed to the caller as device tensors: the caller's stream
  /// waits for the stream's work so far, and the caching allocator is told that the caller's
  /// stream uses them (so that their memory is not reused under it once freed).
  void hand_over(const std::vector<torch::Tensor*>& results);
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
