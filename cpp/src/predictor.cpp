#include "carseg/predictor.h"

#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/preprocess.h"
#include "carseg/refine.h"
#include "detail/backend.h"
#include "detail/cuda_executor.h"

namespace carseg {
namespace {

std::string shape_of(c10::IntArrayRef sizes) {
  std::ostringstream ss;
  ss << sizes;
  return ss.str();
}

torch::Device parse_device(const std::string& name) {
  std::optional<torch::Device> device;
  try {
    device.emplace(name);
  } catch (const c10::Error&) {
  }
  if (!device || (!device->is_cpu() && !device->is_cuda())) {
    throw OptionError("device", "expected cpu, cuda or cuda:N, got \"" + name + "\"");
  }
  if (device->is_cuda() && !cuda_available()) {
    throw OptionError("device", "CUDA requested but not available (torch sees no CUDA device)");
  }
  if (device->is_cuda() && device->has_index() && device->index() >= torch::cuda::device_count()) {
    throw OptionError("device", "\"" + name + "\": torch sees " + std::to_string(torch::cuda::device_count()) +
                                    " CUDA device(s)");
  }
  // "cuda" names the current device: resolved to cuda:N here, so that a caller's tensor on
  // that device is recognised as already there (the stream ordering depends on it).
  if (device->is_cuda() && !device->has_index()) return torch::empty({0}, torch::TensorOptions().device(*device)).device();
  return *device;
}

}  // namespace

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::kFp32;
  if (s == "fp16") return Precision::kFp16;
  if (s == "int8") return Precision::kInt8;
  if (s == "auto") return Precision::kAuto;
  throw OptionError("precision", "expected auto, fp32, fp16 or int8, got \"" + s + "\"");
}

BackendKind parse_backend(const std::string& s) {
  if (s == "auto") return BackendKind::kAuto;
  if (s == "torchscript") return BackendKind::kTorchScript;
  if (s == "aoti") return BackendKind::kAoti;
  if (s == "onnx") return BackendKind::kOnnx;
  throw OptionError("backend", "expected auto, torchscript, aoti or onnx, got \"" + s + "\"");
}

std::string to_string(Precision precision) {
  switch (precision) {
    case Precision::kFp16: return "fp16";
    case Precision::kInt8: return "int8";
    case Precision::kAuto: return "auto";
    default: return "fp32";
  }
}

bool cuda_available() { return torch::cuda::is_available(); }

int available_cpus() {
  int cpus = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  // cgroup v2: "max 100000" is no limit; "200000 100000" is two CPUs' worth of time.
  std::ifstream f("/sys/fs/cgroup/cpu.max");
  std::string quota;
  double period = 0;
  if (f >> quota >> period && quota != "max" && period > 0) {
    char* end = nullptr;
    const double q = std::strtod(quota.c_str(), &end);
    if (end != quota.c_str() && q > 0) {
      cpus = std::min(cpus, std::max(1, static_cast<int>(std::ceil(q / period))));
    }
  }
  return cpus;
}

struct Predictor::Impl {
  Manifest manifest;
  PredictorOptions options;
  torch::Device device{torch::kCPU};
  double threshold = 0.5;
  std::unique_ptr<detail::Backend> backend;
  std::unique_ptr<detail::CudaExecutor> cuda;  // after backend: destroyed before it; null on CPU
  std::unique_ptr<Preprocessor> pre;
  std::optional<RefineSpec> refine;  // the manifest's, unless options.refine is false
  torch::ScalarType run_dtype = torch::kFloat32;
  bool channels_last = false;
  mutable std::mutex mu;

  // Model only, with the lock held; may return a CUDA graph's static output (valid until the
  // next call).
  torch::Tensor forward_locked(const torch::Tensor& batch, bool allow_graphs) {
    torch::Tensor x = batch.to(device, run_dtype, /*non_blocking=*/true);
    if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    torch::Tensor logits;
    if (cuda && options.use_cuda_graphs && allow_graphs) logits = cuda->replay(x);
    if (!logits.defined()) logits = backend->forward(x);
    // One logit a pixel of whatever came in (the predictor feeds size x size; bench may feed
    // another multiple of 32 to a spatially dynamic model).
    const int64_t h = batch.size(2), w = batch.size(3);
    if (logits.dim() != 4 || logits.size(0) != batch.size(0) || logits.size(1) != 1 ||
        logits.size(2) != h || logits.size(3) != w) {
      throw Error(manifest.path().string(),
                  "expected the model to return logits [" + std::to_string(batch.size(0)) + ", 1, " +
                      std::to_string(h) + ", " + std::to_string(w) + "], got " +
                      shape_of(logits.sizes()));
    }
    return logits;
  }

  // Where `output` puts a call's results.
  torch::Device output_device(Output output) const { return output == Output::kDevice ? device : torch::Device(torch::kCPU); }
  // Where a photo's result is made: on CUDA always on the device, and results asked for on the
  // CPU are copied back together at the end of the call (run_each).
  Output made_at(Output output) const { return cuda ? Output::kDevice : output; }

  // The tensors of a result: moved to the host together (CudaExecutor::to_host), or handed to
  // the caller's stream (CudaExecutor::hand_over). A fit is shared and const: the result gets
  // its own (shallow) copy, whose tensors can move.
  static void slots(torch::Tensor& t, std::vector<torch::Tensor*>& into) { into.push_back(&t); }
  static void slots(Matte& m, std::vector<torch::Tensor*>& into) {
    into.push_back(&m.mask);
    into.push_back(&m.alpha);
    if (m.fit) {
      auto own = std::make_shared<RefineFit>(*m.fit);
      for (torch::Tensor* t : {&own->a, &own->b, &own->fg, &own->bg}) into.push_back(t);
      m.fit = std::move(own);
    }
  }

  // Photos -> per(i, logits [1, S, S], photo) each, on the predictor's device. On the CPU only
  // the forward pass holds the lock, so that one call's pre/post-processing overlaps another
  // call's forward; on CUDA the whole call holds it (stream, pinned buffer and graphs are shared,
  // and a graph's output is only valid until the next replay).
  template <class T, class PerImage>
  std::vector<T> run_each(const std::vector<torch::Tensor>& images, PerImage per,
                          Output output = Output::kCpu) {
    c10::InferenceMode guard;
    if (images.empty()) throw Error("images", "expected at least one image, got an empty list");
    for (const auto& im : images) {
      check_image(im);
      if (im.size(0) * im.size(1) > kDefaultMaxPixels) {
        throw Error("image", "expected at most " + std::to_string(kDefaultMaxPixels) +
                                 " pixels, got " + std::to_string(im.size(0)) + "x" +
                                 std::to_string(im.size(1)));
      }
    }
    auto each = [&](const torch::Tensor& logits, const std::vector<torch::Tensor>& on_device) {
      std::vector<T> out;
      out.reserve(images.size());
      for (std::size_t i = 0; i < images.size(); ++i) {
        out.push_back(per(i, logits[static_cast<int64_t>(i)], on_device[i]));
      }
      return out;
    };
    if (cuda) {
      std::lock_guard lock(mu);
      std::vector<T> out;
      cuda->on_stream([&] {
        const std::vector<torch::Tensor> up = cuda->upload(images);
        out = each(forward_locked(pre->preprocess_batch(up), true), up);
        // Every result was made on the device (made_at): those asked for on the CPU come back
        // in one batch of asynchronous copies and one wait, not a blocking copy each.
        if (output == Output::kCpu) {
          std::vector<torch::Tensor*> to_move;
          for (T& o : out) slots(o, to_move);
          cuda->to_host(to_move);
        }
      });
      // Results copied to the CPU are complete; results left on the device are still being
      // made on our stream, and the caller's stream must wait for them. The caller's pinned
      // photos may be overwritten once this returns: they have been read.
      if (output == Output::kDevice) {
        std::vector<torch::Tensor*> made;
        for (T& o : out) slots(o, made);
        cuda->hand_over(made);
        cuda->inputs_read();
      }
      return out;
    }
    bool cpu_images = true;
    for (const auto& im : images) cpu_images = cpu_images && im.device().is_cpu();
    const bool fused = !options.exact && cpu_images;
    const torch::Tensor batch = fused ? pre->preprocess_batch_fused(images) : pre->preprocess_batch(images);
    torch::Tensor logits;
    {
      std::lock_guard lock(mu);
      logits = forward_locked(batch, true);
    }
    std::vector<torch::Tensor> on_cpu;
    on_cpu.reserve(images.size());
    for (const auto& im : images) on_cpu.push_back(im.to(torch::kCPU));
    return each(logits, on_cpu);
  }

  // Logits [1, S, S] of a photo -> its mask at its own size, on the CPU: the refinement where
  // there is one, else the resized logits thresholded.
  Matte matte(const torch::Tensor& logits, const torch::Tensor& image, bool refined = true,
              Output output = Output::kCpu) const {
    const int h = static_cast<int>(image.size(0)), w = static_cast<int>(image.size(1));
    const torch::Device to = output_device(output);
    Matte m;
    if (refine && refined) {
      const int size = pre->spec().size;
      const RefineSpec::Grid g = refine->grid(h, w, size);
      auto fit = std::make_shared<RefineFit>(fit_refinement(
          image, pre->postprocess_logits(logits, g.height, g.width), *refine, threshold, size));
      m = apply_refinement(image, fit);
      m.mask = m.mask.to(to);
      m.alpha = m.alpha.to(to);
      if (!fit->a.device().is_cpu() && to.is_cpu()) {  // cutouts decontaminate on the CPU: a small copy
        auto cpu = std::make_shared<RefineFit>(*fit);
        for (torch::Tensor* t : {&cpu->a, &cpu->b, &cpu->fg, &cpu->bg}) *t = t->to(torch::kCPU).contiguous();
        m.fit = std::move(cpu);
      }
      return m;
    }
    if (!options.exact && device.is_cpu()) {
      m.mask = pre->mask_fused(logits, h, w, threshold);
    } else {
      // Threshold on the device, then copy only the result back.
      m.mask = Preprocessor::mask_from_logits(pre->postprocess_logits(logits, h, w), threshold).to(to);
    }
    m.alpha = m.mask * 255;
    return m;
  }

  // Per photo, logits [H, W] at its own size -> finish(...), where `output` puts it.
  std::vector<torch::Tensor> run(const std::vector<torch::Tensor>& images,
                                 torch::Tensor (*finish)(const torch::Tensor&), Output output) {
    const torch::Device to = output_device(made_at(output));
    return run_each<torch::Tensor>(
        images,
        [&](std::size_t, const torch::Tensor& logits, const torch::Tensor& im) {
          return finish(pre->postprocess_logits(logits, static_cast<int>(im.size(0)), static_cast<int>(im.size(1))))
              .to(to);
        },
        output);
  }
};

Predictor::Predictor(const std::filesystem::path& artifacts, PredictorOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.manifest = Manifest::load(artifacts);
  m.device = parse_device(options.device);
  const bool auto_precision = options.precision == Precision::kAuto;
  options.precision = detail::resolve_precision(m.manifest, options, m.device);
  if (options.precision == Precision::kFp16 && !m.device.is_cuda()) {
    throw OptionError("precision", "fp16 needs a CUDA device; use fp32 on the CPU");
  }
  if (options.precision == Precision::kInt8 && m.device.is_cuda()) {
    throw OptionError("precision", "int8 runs on the CPU (ONNX Runtime); use fp16 on CUDA");
  }
  m.threshold = options.threshold.value_or(m.manifest.threshold());
  if (!(m.threshold > 0 && m.threshold < 1)) {
    throw OptionError("threshold", "expected a value in (0, 1), got " + std::to_string(m.threshold));
  }
  try {
    m.backend = detail::load_backend(m.manifest, options, m.device);
  } catch (const Error& e) {
    // Precision auto's int8 pick that does not load (a damaged file, a library that refuses
    // it) falls back to fp32, saying why; an int8 asked for by name does not.
    if (!auto_precision || options.precision != Precision::kInt8) throw;
    std::cerr << "carseg: " << e.what() << "; precision auto runs fp32 instead" << std::endl;
    options.precision = Precision::kFp32;
    m.backend = detail::load_backend(m.manifest, options, m.device);
  }
  m.options = options;
  m.run_dtype = m.backend->input_dtype();
  m.channels_last = m.device.is_cuda() && options.precision == Precision::kFp16;
  m.pre = std::make_unique<Preprocessor>(m.manifest.preprocessing(), m.device);
  if (options.refine && m.manifest.refine()) {
    m.refine = *m.manifest.refine();
    if (options.softness) m.refine->softness = *options.softness;
    m.refine->validate();
  }
  if (m.device.is_cuda()) m.cuda = std::make_unique<detail::CudaExecutor>(*m.backend, m.device);

  auto warm_up = [&] {
    c10::InferenceMode guard;
    const int s = m.pre->spec().size;
    const torch::Tensor zeros = torch::zeros({1, 3, s, s}, torch::TensorOptions().device(m.device));
    for (int i = 0; i < options.warmup_iters; ++i) (void)m.forward_locked(zeros, true);
  };
  if (m.cuda) {
    m.cuda->on_stream(warm_up);
  } else {
    warm_up();
  }
  synchronize();
}

Predictor::~Predictor() = default;
Predictor::Predictor(Predictor&&) noexcept = default;
Predictor& Predictor::operator=(Predictor&&) noexcept = default;

torch::Tensor Predictor::predict(const torch::Tensor& image, Output output) const {
  return predict_batch({image}, output)[0];
}

std::vector<torch::Tensor> Predictor::predict_logits(const std::vector<torch::Tensor>& images,
                                                     Output output) const {
  return impl_->run(images, [](const torch::Tensor& logits) { return logits; }, output);
}

std::vector<torch::Tensor> Predictor::predict_probabilities(const std::vector<torch::Tensor>& images,
                                                            Output output) const {
  return impl_->run(images, [](const torch::Tensor& logits) { return torch::sigmoid(logits); }, output);
}

std::vector<Matte> Predictor::predict_mattes(const std::vector<torch::Tensor>& images, bool refine,
                                             Output output) const {
  return impl_->run_each<Matte>(
      images,
      [&](std::size_t, const torch::Tensor& logits, const torch::Tensor& im) {
        return impl_->matte(logits, im, refine, impl_->made_at(output));
      },
      output);
}

std::vector<torch::Tensor> Predictor::predict_model_logits(const std::vector<torch::Tensor>& images) const {
  return impl_->run_each<torch::Tensor>(
      images, [&](std::size_t, const torch::Tensor& logits, const torch::Tensor&) { return logits.clone(); },
      Output::kDevice);
}

Matte Predictor::matte_from_logits(const torch::Tensor& logits, const torch::Tensor& image, bool refine) const {
  c10::InferenceMode guard;
  check_image(image);
  return impl_->matte(logits, image, refine);
}

std::vector<torch::Tensor> Predictor::predict_batch(const std::vector<torch::Tensor>& images,
                                                    Output output) const {
  return impl_->run_each<torch::Tensor>(
      images,
      [&](std::size_t, const torch::Tensor& logits, const torch::Tensor& im) {
        return impl_->matte(logits, im, true, impl_->made_at(output)).mask;
      },
      output);
}

torch::Tensor Predictor::cutout(const torch::Tensor& image, Background background) const {
  return cutout(image, Backdrop(background));
}

torch::Tensor Predictor::cutout(const torch::Tensor& image, const Backdrop& backdrop, int crop_margin) const {
  const Matte m = predict_mattes({image})[0];
  Rect rect;
  if (crop_margin >= 0) {
    const torch::Tensor alpha = m.alpha.contiguous();
    rect = crop_box(alpha.data_ptr<std::uint8_t>(), static_cast<int>(image.size(1)),
                    static_cast<int>(image.size(0)), crop_margin);
  }
  return composite_matte(image, m, backdrop, rect);
}

torch::Tensor Predictor::forward(const torch::Tensor& batch, bool allow_graphs) const {
  c10::InferenceMode guard;
  std::lock_guard lock(impl_->mu);
  if (batch.dim() != 4 || batch.size(1) != 3) {
    throw Error("batch", "expected shape [N, 3, S, S], got " + shape_of(batch.sizes()));
  }
  if (!impl_->cuda) return impl_->forward_locked(batch, allow_graphs);
  // The result may be a graph's static output and lives on our stream: hand back a copy that
  // is complete when we return.
  torch::Tensor out;
  impl_->cuda->on_stream([&] { out = impl_->forward_locked(batch, allow_graphs).clone(); });
  impl_->cuda->synchronize();
  return out;
}

void Predictor::synchronize() const {
  if (impl_->cuda) impl_->cuda->synchronize();
}

const Manifest& Predictor::manifest() const { return impl_->manifest; }
torch::Device Predictor::device() const { return impl_->device; }
double Predictor::threshold() const { return impl_->threshold; }
const std::optional<RefineSpec>& Predictor::refine() const { return impl_->refine; }
Precision Predictor::precision() const { return impl_->options.precision; }
std::string Predictor::backend_name() const { return impl_->backend->name(); }
int Predictor::input_size() const { return impl_->pre->spec().size; }

std::vector<int64_t> Predictor::captured_batch_sizes() const {
  std::lock_guard lock(impl_->mu);
  return impl_->cuda ? impl_->cuda->captured_batch_sizes() : std::vector<int64_t>{};
}

}  // namespace carseg
