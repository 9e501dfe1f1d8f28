#include "carseg/predictor.h"

#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>

#include <iostream>
#include <map>
#include <mutex>
#include <sstream>

#include "carseg/backend.h"
#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/preprocess.h"

#if defined(CARSEG_WITH_CUDA)
#include <ATen/Context.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace carseg {
namespace {

std::string shape_of(c10::IntArrayRef sizes) {
  std::ostringstream ss;
  ss << sizes;
  return ss.str();
}

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

}  // namespace

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::kFp32;
  if (s == "fp16") return Precision::kFp16;
  throw Error("--precision", "expected fp32 or fp16, got \"" + s + "\"");
}

BackendKind parse_backend(const std::string& s) {
  if (s == "auto") return BackendKind::kAuto;
  if (s == "torchscript") return BackendKind::kTorchScript;
  if (s == "aoti") return BackendKind::kAoti;
  throw Error("--backend", "expected auto, torchscript or aoti, got \"" + s + "\"");
}

Background parse_background(const std::string& s) {
  if (s == "white") return Background::kWhite;
  if (s == "transparent") return Background::kTransparent;
  throw Error("background", "expected white or transparent, got \"" + s + "\"");
}

std::string to_string(Precision precision) {
  return precision == Precision::kFp16 ? "fp16" : "fp32";
}

bool cuda_available() { return torch::cuda::is_available(); }

torch::Tensor composite_cutout(const torch::Tensor& image, const torch::Tensor& mask,
                               Background background) {
  check_image(image);
  if (mask.dim() != 2 || mask.size(0) != image.size(0) || mask.size(1) != image.size(1)) {
    throw Error("mask", "expected shape [" + std::to_string(image.size(0)) + ", " +
                            std::to_string(image.size(1)) + "] (the image's), got " +
                            shape_of(mask.sizes()));
  }
  c10::InferenceMode guard;
  const torch::Tensor rgb = image.to(torch::kCPU);
  const torch::Tensor car = mask.to(torch::kCPU).ne(0).unsqueeze(-1);  // [H, W, 1] bool
  if (background == Background::kWhite) {
    return torch::where(car, rgb, torch::full({}, 255, rgb.options())).contiguous();
  }
  return torch::cat({rgb, car.to(torch::kUInt8).mul_(255)}, /*dim=*/-1);
}

struct Predictor::Impl {
  Manifest manifest;
  PredictorOptions options;
  torch::Device device{torch::kCPU};
  double threshold = 0.5;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Preprocessor> pre;
  torch::ScalarType run_dtype = torch::kFloat32;
  bool channels_last = false;
  mutable std::mutex mu;

#if defined(CARSEG_WITH_CUDA)
  struct Graph {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    torch::Tensor in;
    torch::Tensor out;
  };
  std::optional<c10::cuda::CUDAStream> stream;
  torch::Tensor pinned;                       // uint8 host staging buffer (page-locked)
  std::unique_ptr<at::cuda::CUDAEvent> staging_done;  // last H2D copy out of `pinned` finished
  std::map<std::vector<int64_t>, std::unique_ptr<Graph>> graphs;  // nullptr: capture failed

  // Ends a capture that a throwing forward left open, so the stream is usable again.
  void abort_capture() const {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream->stream(), &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(stream->stream(), &g);
      if (g) cudaGraphDestroy(g);
    }
    (void)cudaGetLastError();
  }

  Graph* graph_for(const torch::Tensor& x) {
    const std::vector<int64_t> key = x.sizes().vec();
    if (const auto it = graphs.find(key); it != graphs.end()) return it->second.get();
    auto g = std::make_unique<Graph>();
    try {
      g->in = torch::empty_like(x);
      g->in.copy_(x);
      // Warm up on this stream first: cuDNN autotuning, JIT profiling runs and lazy
      // allocations must not happen inside the capture.
      for (int i = 0; i < 3; ++i) (void)backend->forward(g->in);
      stream->synchronize();
      g->graph = std::make_unique<at::cuda::CUDAGraph>();
      g->graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      try {
        g->out = backend->forward(g->in);
      } catch (...) {
        abort_capture();
        throw;
      }
      g->graph->capture_end();
      stream->synchronize();
      log_line("captured a CUDA graph for input " + shape_of(key));
    } catch (const std::exception& e) {
      abort_capture();
      log_line("CUDA graph capture failed for input " + shape_of(key) + ", running eager: " +
               e.what());
      graphs.emplace(key, nullptr);
      return nullptr;
    }
    return graphs.emplace(key, std::move(g)).first->second.get();
  }

  // Copies CPU images into the pinned buffer, then one async copy to the device on our stream.
  std::vector<torch::Tensor> upload(const std::vector<torch::Tensor>& images) {
    int64_t total = 0;
    for (const auto& im : images) {
      if (!im.is_cuda()) total += im.numel();
    }
    std::vector<torch::Tensor> out(images.size());
    if (total == 0) {
      for (std::size_t i = 0; i < images.size(); ++i) out[i] = images[i].to(device);
      return out;
    }
    staging_done->synchronize();  // the previous copy has finished reading the buffer
    if (!pinned.defined() || pinned.numel() < total) {
      pinned = torch::empty({total}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
    }
    int64_t offset = 0;
    std::vector<std::pair<int64_t, int64_t>> spans(images.size());
    for (std::size_t i = 0; i < images.size(); ++i) {
      if (images[i].is_cuda()) continue;
      const int64_t n = images[i].numel();
      pinned.narrow(0, offset, n).view(images[i].sizes()).copy_(images[i]);
      spans[i] = {offset, n};
      offset += n;
    }
    const torch::Tensor dev = pinned.narrow(0, 0, total).to(device, /*non_blocking=*/true);
    staging_done->record(*stream);
    for (std::size_t i = 0; i < images.size(); ++i) {
      out[i] = images[i].is_cuda() ? images[i].to(device)
                                   : dev.narrow(0, spans[i].first, spans[i].second)
                                         .view(images[i].sizes());
    }
    return out;
  }
#endif

  // Model only, with the lock held; may return a CUDA graph's static output (valid until the
  // next call).
  torch::Tensor forward_locked(const torch::Tensor& batch, bool allow_graphs) {
    torch::Tensor x = batch.to(device, run_dtype, /*non_blocking=*/true);
    if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    torch::Tensor logits;
#if defined(CARSEG_WITH_CUDA)
    if (device.is_cuda()) {
      if (options.use_cuda_graphs && allow_graphs) {
        if (Graph* g = graph_for(x)) {
          g->in.copy_(x, /*non_blocking=*/true);
          g->graph->replay();
          logits = g->out;
        }
      }
    }
#endif
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

  // Per image: logits [H, W] at its own size -> what the caller returns (on the CPU).
  using Finish = torch::Tensor (*)(const torch::Tensor& logits_hw, double threshold);

  // Images -> finish(logits [H, W]) each, on the CPU. On the CPU only the forward pass holds
  // the lock, so that one call's pre/post-processing overlaps another call's forward; on CUDA
  // the whole call holds it (stream, pinned buffer and graphs are shared, and a graph's output
  // is only valid until the next replay).
  std::vector<torch::Tensor> run(const std::vector<torch::Tensor>& images, Finish finish) {
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
    const bool fused = !options.exact && device.is_cpu();
    auto postprocess = [&](const torch::Tensor& logits) {
      std::vector<torch::Tensor> out;
      out.reserve(images.size());
      for (std::size_t i = 0; i < images.size(); ++i) {
        const int h = static_cast<int>(images[i].size(0)), w = static_cast<int>(images[i].size(1));
        if (fused && finish == &Preprocessor::mask_from_logits) {
          out.push_back(pre->mask_fused(logits[static_cast<int64_t>(i)], h, w, threshold));
          continue;
        }
        const torch::Tensor hw = pre->postprocess_logits(logits[static_cast<int64_t>(i)], h, w);
        // Threshold on the device, then copy only the result back.
        out.push_back(finish(hw, threshold).to(torch::kCPU));
      }
      return out;
    };
#if defined(CARSEG_WITH_CUDA)
    if (device.is_cuda()) {
      std::lock_guard lock(mu);
      c10::cuda::CUDAStreamGuard stream_guard(*stream);
      const torch::Tensor batch = pre->preprocess_batch(upload(images));
      return postprocess(forward_locked(batch, true));
    }
#endif
    bool cpu_images = true;
    for (const auto& im : images) cpu_images = cpu_images && im.device().is_cpu();
    const torch::Tensor batch = fused && cpu_images ? pre->preprocess_batch_fused(images)
                                                    : pre->preprocess_batch(images);
    torch::Tensor logits;
    {
      std::lock_guard lock(mu);
      logits = forward_locked(batch, true);
    }
    return postprocess(logits);
  }
};

Predictor::Predictor(const std::filesystem::path& artifacts, PredictorOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.options = options;
  m.manifest = Manifest::load(artifacts);
  try {
    m.device = torch::Device(options.device);
  } catch (const c10::Error&) {
    throw Error("--device", "expected cpu, cuda or cuda:N, got \"" + options.device + "\"");
  }
  if (m.device.is_cuda() && !cuda_available()) {
    throw Error("", "CUDA requested but not available (torch sees no CUDA device)");
  }
  if (!m.device.is_cpu() && !m.device.is_cuda()) {
    throw Error("--device", "expected cpu, cuda or cuda:N, got \"" + options.device + "\"");
  }
  if (options.precision == Precision::kFp16 && !m.device.is_cuda()) {
    throw Error("--precision", "fp16 needs a CUDA device; use fp32 on the CPU");
  }
  m.threshold = options.threshold.value_or(m.manifest.threshold());
  if (!(m.threshold > 0 && m.threshold < 1)) {
    throw Error("--threshold", "expected a value in (0, 1), got " + std::to_string(m.threshold));
  }
  const std::string want_precision = options.precision == Precision::kFp16 ? "fp16" : "fp32";
  const std::string device_type = m.device.is_cuda() ? "cuda" : "cpu";

  // AOTI first when asked for (or on auto when the manifest has a package for this device).
  const std::string aoti_name = pick_artifact(m.manifest, "aoti", want_precision, device_type);
  const bool aoti_fits = !aoti_name.empty() && m.manifest.artifact(aoti_name).device == device_type;
  if (options.backend == BackendKind::kAoti ||
      (options.backend == BackendKind::kAuto && aoti_fits && aoti_available())) {
    if (aoti_name.empty()) {
      throw Error(m.manifest.path().string(), "no AOTInductor artifact (format \"aoti\") to load");
    }
    const ArtifactEntry& a = m.manifest.artifact(aoti_name);
    m.manifest.verify_artifact(aoti_name);
    const auto dtype = a.precision == "fp16" ? torch::kHalf : torch::kFloat32;
    try {
      m.backend = make_aoti_backend(m.manifest.artifact_path(aoti_name), m.device, dtype);
    } catch (const Error& e) {
      if (options.backend == BackendKind::kAoti) throw;
      log_line(std::string(e.what()) + "; falling back to TorchScript");
    }
    if (m.backend && options.precision == Precision::kFp16 && a.precision != "fp16") {
      log_line("the AOTInductor package is " + a.precision + ": running it in " + a.precision);
    }
  }
  if (!m.backend) {
    const std::string ts = pick_artifact(m.manifest, "torchscript", want_precision, device_type);
    if (ts.empty()) {
      throw Error(m.manifest.path().string(), "no TorchScript artifact (format \"torchscript\")");
    }
    const ArtifactEntry& a = m.manifest.artifact(ts);
    m.manifest.verify_artifact(ts);
    if (a.precision == "fp16" && !m.device.is_cuda()) {
      throw Error(m.manifest.artifact_path(ts).string(),
                  "an fp16 artifact needs a CUDA device; export an fp32 folder for the CPU");
    }
    if (a.precision == "fp16" && options.precision == Precision::kFp32) {
      log_line("the TorchScript artifact is fp16 (the folder's precision): running fp16");
    }
    TorchScriptOptions ts_options;
    ts_options.file_dtype = a.precision == "fp16" ? torch::kHalf : torch::kFloat32;
    ts_options.autocast_fp16 = options.precision == Precision::kFp16 && a.precision != "fp16";
    ts_options.optimize_for_inference = options.optimize_for_inference;
    ts_options.onednn_fusion = options.onednn_fusion;
    m.backend = make_torchscript_backend(m.manifest.artifact_path(ts), m.device, ts_options);
  }
  m.run_dtype = m.backend->input_dtype();
  m.channels_last = m.device.is_cuda() && options.precision == Precision::kFp16;
  m.pre = std::make_unique<Preprocessor>(m.manifest.preprocessing(), m.device);

  c10::InferenceMode guard;
#if defined(CARSEG_WITH_CUDA)
  std::optional<c10::cuda::CUDAStreamGuard> stream_guard;
  if (m.device.is_cuda()) {
    at::globalContext().setBenchmarkCuDNN(true);
    m.stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, m.device.index());
    m.staging_done = std::make_unique<at::cuda::CUDAEvent>();
    stream_guard.emplace(*m.stream);
  }
#endif
  const int s = m.pre->spec().size;
  const torch::Tensor zeros = torch::zeros({1, 3, s, s}, torch::TensorOptions().device(m.device));
  for (int i = 0; i < options.warmup_iters; ++i) (void)m.forward_locked(zeros, true);
  synchronize();
}

Predictor::~Predictor() = default;
Predictor::Predictor(Predictor&&) noexcept = default;
Predictor& Predictor::operator=(Predictor&&) noexcept = default;

torch::Tensor Predictor::predict(const torch::Tensor& image) const {
  return predict_batch({image})[0];
}

std::vector<torch::Tensor> Predictor::predict_logits(const std::vector<torch::Tensor>& images) const {
  return impl_->run(images, [](const torch::Tensor& logits, double) { return logits; });
}

std::vector<torch::Tensor> Predictor::predict_probabilities(
    const std::vector<torch::Tensor>& images) const {
  return impl_->run(images,
                    [](const torch::Tensor& logits, double) { return torch::sigmoid(logits); });
}

std::vector<torch::Tensor> Predictor::predict_batch(const std::vector<torch::Tensor>& images) const {
  return impl_->run(images, &Preprocessor::mask_from_logits);
}

torch::Tensor Predictor::cutout(const torch::Tensor& image, Background background) const {
  const torch::Tensor mask = predict(image);
  return composite_cutout(image, mask, background);
}

torch::Tensor Predictor::forward(const torch::Tensor& batch, bool allow_graphs) const {
  c10::InferenceMode guard;
  std::lock_guard lock(impl_->mu);
  if (batch.dim() != 4 || batch.size(1) != 3) {
    throw Error("batch", "expected shape [N, 3, S, S], got " + shape_of(batch.sizes()));
  }
#if defined(CARSEG_WITH_CUDA)
  std::optional<c10::cuda::CUDAStreamGuard> stream_guard;
  if (impl_->stream) stream_guard.emplace(*impl_->stream);
  if (impl_->stream) {
    // The result may be a graph's static output and lives on our stream: hand back a copy that
    // is complete when we return.
    torch::Tensor out = impl_->forward_locked(batch, allow_graphs).clone();
    impl_->stream->synchronize();
    return out;
  }
#endif
  return impl_->forward_locked(batch, allow_graphs);
}

void Predictor::synchronize() const {
#if defined(CARSEG_WITH_CUDA)
  if (impl_->stream) impl_->stream->synchronize();
#endif
}

const Manifest& Predictor::manifest() const { return impl_->manifest; }
torch::Device Predictor::device() const { return impl_->device; }
double Predictor::threshold() const { return impl_->threshold; }
Precision Predictor::precision() const { return impl_->options.precision; }
std::string Predictor::backend_name() const { return impl_->backend->name(); }
int Predictor::input_size() const { return impl_->pre->spec().size; }

std::vector<int64_t> Predictor::captured_batch_sizes() const {
  std::vector<int64_t> out;
#if defined(CARSEG_WITH_CUDA)
  std::lock_guard lock(impl_->mu);
  for (const auto& [key, g] : impl_->graphs) {
    if (g) out.push_back(key[0]);
  }
#endif
  return out;
}

}  // namespace carseg
