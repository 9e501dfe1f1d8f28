// The ONNX Runtime backend: model.onnx through ONNX Runtime's C++ API, on the CPU execution
// provider. The library is loaded with dlopen the first time a backend is made (the one the
// onnxruntime wheel ships, found at build time, or CARSEG_ONNXRUNTIME_LIBRARY), so a build with
// this backend runs the others where the library is absent.
#include <ATen/Parallel.h>

#include <cstdlib>
#include <mutex>

#include "carseg/error.h"
#include "detail/backend.h"

#if defined(CARSEG_WITH_ORT)
#include <dlfcn.h>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT
#endif

namespace carseg::detail {

#if defined(CARSEG_WITH_ORT)
namespace {

std::string library_path() {
  const char* env = std::getenv("CARSEG_ONNXRUNTIME_LIBRARY");
  if (env != nullptr && *env != '\0') return env;
  return CARSEG_ORT_LIBRARY[0] != '\0' ? CARSEG_ORT_LIBRARY : "libonnxruntime.so.1";
}

struct Runtime {
  std::string error;  // empty when the API was loaded
  std::unique_ptr<Ort::Env> env;
};

// The library, its API (ORT_API_VERSION, what the headers were written for) and one Env for
// the process; loaded once, kept for the process's life (ONNX Runtime is not made to unload).
Runtime& runtime() {
  static Runtime rt;
  static std::once_flag once;
  std::call_once(once, [] {
    const std::string path = library_path();
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      rt.error = "cannot load the ONNX Runtime library " + path + ": " + (why ? why : "dlopen failed");
      return;
    }
    using GetApiBase = const OrtApiBase* (*)();
    auto get = reinterpret_cast<GetApiBase>(::dlsym(handle, "OrtGetApiBase"));
    const OrtApiBase* base = get != nullptr ? get() : nullptr;
    if (base == nullptr) {
      rt.error = path + " is not an ONNX Runtime library (no OrtGetApiBase)";
      return;
    }
    const OrtApi* api = base->GetApi(ORT_API_VERSION);
    if (api == nullptr) {
      rt.error = std::string("ONNX Runtime ") + base->GetVersionString() + " (" + path +
                 ") lacks C API version " +
                 std::to_string(ORT_API_VERSION) + ", which libcarseg was built for";
      return;
    }
    Ort::InitApi(api);
    try {
      rt.env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "carseg");
    } catch (const Ort::Exception& e) {
      rt.error = std::string("ONNX Runtime: cannot create its environment: ") + e.what();
    }
  });
  return rt;
}

class OnnxBackend final : public Backend {
 public:
  OnnxBackend(const std::vector<std::uint8_t>& bytes, const std::filesystem::path& file,
              Runtime& rt)
      : file_(file.string()), memory_(Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator,
                                                                  OrtMemTypeDefault)) {
    try {
      Ort::SessionOptions options;
      // The same threads as libtorch's intra-op pool (carseg_infer --threads sets both).
      options.SetIntraOpNumThreads(at::get_num_threads());
      options.SetInterOpNumThreads(1);
      // Its pool's threads sleep between runs instead of spinning: in carseg_infer infer the
      // decode and encode workers share the cores, and spinning took their time (end to end
      // 5-12% more photos a second without it, in 3 alternated rounds of 256 photos on 2
      // cores; carseg_infer bench's batch-1 and batch-8 latency the same within noise).
      options.AddConfigEntry("session.intra_op.allow_spinning", "0");
      options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      session_ = Ort::Session(*rt.env, bytes.data(), bytes.size(), options);
    } catch (const Ort::Exception& e) {
      throw Error(file_, std::string("ONNX Runtime cannot load it: ") + e.what());
    }
    if (session_.GetInputCount() != 1 || session_.GetOutputCount() != 1) {
      throw Error(file_, "expected one input and one output, got " +
                             std::to_string(session_.GetInputCount()) + " and " +
                             std::to_string(session_.GetOutputCount()));
    }
    Ort::AllocatorWithDefaultOptions alloc;
    input_name_ = session_.GetInputNameAllocated(0, alloc).get();
    output_name_ = session_.GetOutputNameAllocated(0, alloc).get();
    const Ort::TypeInfo in_type = session_.GetInputTypeInfo(0);  // owns what in_info views
    const auto in_info = in_type.GetTensorTypeAndShapeInfo();
    if (in_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw Error(file_, "its input is not float32: the ONNX Runtime backend runs fp32 models");
    }
    if (in_info.GetShape().size() != 4) {
      throw Error(file_, "expected a 4-d input [N, 3, H, W], got " +
                             std::to_string(in_info.GetShape().size()) + " dimensions");
    }
  }

  torch::Tensor forward(const torch::Tensor& input) override {
    const torch::Tensor x = input.to(torch::kFloat32).contiguous();
    const std::array<std::int64_t, 4> in_shape{x.size(0), x.size(1), x.size(2), x.size(3)};
    torch::Tensor y = torch::empty({x.size(0), 1, x.size(2), x.size(3)}, x.options());
    const std::array<std::int64_t, 4> out_shape{y.size(0), 1, y.size(2), y.size(3)};
    Ort::Value in = Ort::Value::CreateTensor<float>(memory_, x.data_ptr<float>(),
                                                    static_cast<std::size_t>(x.numel()),
                                                    in_shape.data(), in_shape.size());
    Ort::Value out = Ort::Value::CreateTensor<float>(memory_, y.data_ptr<float>(),
                                                     static_cast<std::size_t>(y.numel()),
                                                     out_shape.data(), out_shape.size());
    const char* in_name = input_name_.c_str();
    const char* out_name = output_name_.c_str();
    try {
      session_.Run(Ort::RunOptions{nullptr}, &in_name, &in, 1, &out_name, &out, 1);
    } catch (const Ort::Exception& e) {
      throw Error(file_, std::string("ONNX Runtime failed to run it: ") + e.what());
    }
    return y;
  }

  std::string name() const override { return "onnx"; }
  torch::ScalarType input_dtype() const override { return torch::kFloat32; }

 private:
  std::string file_;
  Ort::MemoryInfo memory_;
  Ort::Session session_{nullptr};
  std::string input_name_, output_name_;
};

}  // namespace

bool onnx_available(std::string* why) {
  Runtime& rt = runtime();
  if (why != nullptr) *why = rt.error;
  return rt.error.empty();
}

std::unique_ptr<Backend> make_onnx_backend(const std::vector<std::uint8_t>& bytes,
                                           const std::filesystem::path& file,
                                           const torch::Device& device) {
  if (device.is_cuda()) {
    throw Error(file.string(), "the ONNX Runtime backend runs on the CPU only (this build has no "
                               "CUDA execution provider); use --backend torchscript or aoti on "
                               "CUDA");
  }
  std::string why;
  if (!onnx_available(&why)) throw Error(file.string(), why);
  return std::make_unique<OnnxBackend>(bytes, file, runtime());
}

#else

bool onnx_available(std::string* why) {
  if (why != nullptr) {
    *why = "this libcarseg was built without ONNX Runtime's headers "
           "(cmake/fetch-onnxruntime-headers.sh, then rebuild)";
  }
  return false;
}

std::unique_ptr<Backend> make_onnx_backend(const std::vector<std::uint8_t>&,
                                           const std::filesystem::path& file,
                                           const torch::Device&) {
  std::string why;
  (void)onnx_available(&why);
  throw Error(file.string(), why);
}

#endif

}  // namespace carseg::detail
