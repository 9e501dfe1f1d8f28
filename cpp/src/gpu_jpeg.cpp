// nvJPEG, loaded at run time (detail/gpu_jpeg.h). Compiled with CARSEG_WITH_CUDA where torch has
// CUDA; elsewhere the decoder refuses to be made.
#include "detail/gpu_jpeg.h"

#include "carseg/error.h"

#if defined(CARSEG_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <torch/cuda.h>

#include <cstdlib>
#include <mutex>
#include <vector>
#endif

#ifndef CARSEG_NVJPEG_LIBRARY
#define CARSEG_NVJPEG_LIBRARY ""
#endif

namespace carseg::detail {

#if defined(CARSEG_WITH_CUDA)
namespace {

// nvJPEG's C API, the part used here, as its documentation declares it.
using Handle = struct NvjpegHandle*;
using State = struct NvjpegJpegState*;
using Status = int;  // nvjpegStatus_t: 0 is NVJPEG_STATUS_SUCCESS
constexpr Status kSuccess = 0;
constexpr int kOutputRgbInterleaved = 5;  // nvjpegOutputFormat_t NVJPEG_OUTPUT_RGBI
constexpr int kMaxComponent = 4;          // NVJPEG_MAX_COMPONENT
struct Image {                            // nvjpegImage_t
  unsigned char* channel[kMaxComponent];
  std::size_t pitch[kMaxComponent];
};

struct Api {
  Status (*create_simple)(Handle*) = nullptr;
  Status (*destroy)(Handle) = nullptr;
  Status (*state_create)(Handle, State*) = nullptr;
  Status (*state_destroy)(State) = nullptr;
  Status (*decode)(Handle, State, const unsigned char*, std::size_t, int, Image*, cudaStream_t) = nullptr;
};

std::vector<std::string> candidates() {
  std::vector<std::string> out;
  const char* env = std::getenv("CARSEG_NVJPEG_LIBRARY");
  if (env != nullptr && *env != '\0') return {env};
  if (CARSEG_NVJPEG_LIBRARY[0] != '\0') out.emplace_back(CARSEG_NVJPEG_LIBRARY);
  for (const char* name : {"libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so"}) out.emplace_back(name);
  return out;
}

template <class F>
void bind(void* lib, const char* name, F& f, std::string& missing) {
  f = reinterpret_cast<F>(::dlsym(lib, name));
  if (f == nullptr) missing += std::string(missing.empty() ? "" : ", ") + name;
}

std::string status_text(Status s) {
  switch (s) {
    case 1: return "not initialized";
    case 2: return "invalid parameter";
    case 3: return "bad JPEG";
    case 4: return "JPEG not supported";
    case 5: return "allocator failure";
    case 6: return "execution failed";
    case 7: return "architecture mismatch";
    case 8: return "internal error";
    case 9: return "implementation not supported";
    case 10: return "incomplete bitstream";
    default: return "status " + std::to_string(s);
  }
}

// The library and its functions, loaded once for the process (and never unloaded).
struct Library {
  std::string path;
  std::string error;  // empty when loaded
  Api api;
};

const Library& library_once() {
  static Library found;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = nullptr;
    std::string tried;
    for (const std::string& path : candidates()) {
      lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) {
        found.path = path;
        break;
      }
      const char* why = ::dlerror();
      tried += "\n  " + path + ": " + (why ? why : "dlopen failed");
    }
    if (lib == nullptr) {
      found.error = "nvJPEG could not be loaded (set CARSEG_NVJPEG_LIBRARY to libnvjpeg.so):" + tried;
      return;
    }
    Api& a = found.api;
    std::string missing;
    bind(lib, "nvjpegCreateSimple", a.create_simple, missing);
    bind(lib, "nvjpegDestroy", a.destroy, missing);
    bind(lib, "nvjpegJpegStateCreate", a.state_create, missing);
    bind(lib, "nvjpegJpegStateDestroy", a.state_destroy, missing);
    bind(lib, "nvjpegDecode", a.decode, missing);
    if (!missing.empty()) found.error = found.path + " is not nvJPEG: it lacks " + missing;
  });
  return found;
}

}  // namespace

struct GpuJpegDecoder::Impl {
  const Api& api;
  Handle handle = nullptr;
  explicit Impl(const Api& a) : api(a) {}
  ~Impl() {
    if (handle != nullptr) api.destroy(handle);
  }
};

const std::string& GpuJpegDecoder::load_library() {
  const Library& lib = library_once();
  if (!lib.error.empty()) throw OptionError("decode", "GPU decoding needs nvJPEG: " + lib.error);
  return lib.path;
}

GpuJpegDecoder::GpuJpegDecoder(const torch::Device& device) : device_(device) {
  if (!device.is_cuda()) {
    throw OptionError("decode", "GPU decoding needs a CUDA device, got \"" + device.str() + "\"");
  }
  const std::string& path = load_library();
  if (!torch::cuda::is_available()) {
    throw OptionError("decode", "GPU decoding needs a CUDA device, and torch sees none");
  }
  impl_ = std::make_unique<Impl>(library_once().api);
  const c10::cuda::CUDAGuard guard(device);
  if (const Status s = impl_->api.create_simple(&impl_->handle); s != kSuccess) {
    impl_->handle = nullptr;
    throw OptionError("decode", "nvJPEG (" + path + ") did not start: " + status_text(s));
  }
}

GpuJpegDecoder::~GpuJpegDecoder() = default;

struct GpuJpegDecoder::Session::Impl {
  const GpuJpegDecoder& decoder;
  c10::cuda::CUDAStream stream;
  State state = nullptr;
  explicit Impl(const GpuJpegDecoder& d)
      : decoder(d), stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, d.device().index())) {}
  ~Impl() {
    if (state != nullptr) decoder.impl_->api.state_destroy(state);
  }
};

GpuJpegDecoder::Session::Session(const GpuJpegDecoder& decoder) : impl_(std::make_unique<Impl>(decoder)) {
  const Api& a = decoder.impl_->api;
  if (const Status s = a.state_create(decoder.impl_->handle, &impl_->state); s != kSuccess) {
    impl_->state = nullptr;
    throw Error("nvJPEG", "cannot create a decoding state: " + status_text(s));
  }
}

GpuJpegDecoder::Session::~Session() = default;

torch::Tensor GpuJpegDecoder::Session::decode(std::span<const std::uint8_t> jpeg, int width, int height,
                                              const std::string& name) {
  Impl& m = *impl_;
  const GpuJpegDecoder& d = m.decoder;
  // Allocated on this session's stream, which is where nvJPEG writes it.
  const c10::cuda::CUDAStreamGuard guard(m.stream);
  torch::Tensor out = torch::empty({height, width, 3}, torch::TensorOptions().dtype(torch::kUInt8).device(d.device_));
  Image dst{};
  dst.channel[0] = out.data_ptr<std::uint8_t>();
  dst.pitch[0] = static_cast<std::size_t>(width) * 3;
  const Status s = d.impl_->api.decode(d.impl_->handle, m.state, jpeg.data(), jpeg.size(),
                                       kOutputRgbInterleaved, &dst, m.stream.stream());
  m.stream.synchronize();
  if (s != kSuccess) throw Error(name, "nvJPEG could not decode it: " + status_text(s));
  return out;
}

#else  // no CUDA in this build

struct GpuJpegDecoder::Impl {};
struct GpuJpegDecoder::Session::Impl {};

const std::string& GpuJpegDecoder::load_library() {
  throw OptionError("decode", "GPU decoding needs a libcarseg built with CUDA (torch with CUDA)");
}
GpuJpegDecoder::GpuJpegDecoder(const torch::Device& device) : device_(device) {
  if (!device.is_cuda()) {
    throw OptionError("decode", "GPU decoding needs a CUDA device, got \"" + device.str() + "\"");
  }
  (void)load_library();
}
GpuJpegDecoder::~GpuJpegDecoder() = default;
GpuJpegDecoder::Session::Session(const GpuJpegDecoder&) {}
GpuJpegDecoder::Session::~Session() = default;
torch::Tensor GpuJpegDecoder::Session::decode(std::span<const std::uint8_t>, int, int, const std::string& name) {
  throw Error(name, "GPU decoding is not in this build");
}

#endif

}  // namespace carseg::detail
