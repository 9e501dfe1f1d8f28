#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace carseg::detail {

/// JPEG decoding on a CUDA device with nvJPEG. The library is loaded with dlopen when a decoder
/// is made (CARSEG_NVJPEG_LIBRARY in the environment, else the one found at build time beside
/// torch, in torchvision's wheel or in the CUDA toolkit, else libnvjpeg.so.N on the loader's
/// path), so that libcarseg neither links it nor needs it for anything else. The declarations it
/// uses are nvJPEG's documented C API (nvjpegCreateSimple, nvjpegJpegStateCreate, nvjpegDecode).
class GpuJpegDecoder {
 public:
  /// Throws OptionError("decode", why) when the device is not CUDA, this build has no CUDA, torch
  /// sees no CUDA device, or nvJPEG cannot be loaded or started.
  explicit GpuJpegDecoder(const torch::Device& device);
  ~GpuJpegDecoder();
  GpuJpegDecoder(const GpuJpegDecoder&) = delete;
  GpuJpegDecoder& operator=(const GpuJpegDecoder&) = delete;

  /// One decoding thread's state and CUDA stream (nvJPEG's decoding state is per thread).
  class Session {
   public:
    explicit Session(const GpuJpegDecoder& decoder);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    /// A JPEG file's bytes (its header read: `width` x `height`) -> its pixels, uint8 [H, W, 3]
    /// RGB on the device, complete when this returns. Throws carseg::Error naming `name` when
    /// nvJPEG refuses it.
    [[nodiscard]] torch::Tensor decode(std::span<const std::uint8_t> jpeg, int width, int height,
                                       const std::string& name);

   private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
  };

  [[nodiscard]] const torch::Device& device() const { return device_; }
  /// nvJPEG's library, loaded once for the process and checked for the functions used: its
  /// path. Throws OptionError("decode", what was tried) where it cannot be; needs no GPU.
  static const std::string& load_library();

 private:
  struct Impl;
  torch::Device device_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace carseg::detail
