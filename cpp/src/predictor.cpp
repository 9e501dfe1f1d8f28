#include "carseg/predictor.h"

#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>

#include <iostream>
#include <map>
#include <mutex>
#include <sstream>

#include "carseg/backend.h"
#include "carseg/error.h"
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

bool cuda_available() { return torch::cuda::is_available(); }

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
    const int64_t s = pre->spec().size;
    if (logits.dim() != 4 || logits.size(0) != batch.size(0) || logits.size(1) != 1 ||
        logits.size(2) != s || logits.size(3) != s) {
      throw Error(manifest.path().string(),
                  "expected the model to return logits [" + std::to_string(batch.size(0)) + ", 1, " +
                      std::to_string(s) + ", " + std::to_string(s) + "], got " +
                      shape_of(logits.sizes()));
    }
    return logits;
  }

  // Images -> logits [H, W] each, on the device.
  std::vector<torch::Tensor> run(const std::vector<torch::Tensor>& images) {
    if (images.empty()) throw Error("images", "expected at least one image, got an empty list");
    for (const auto& im : images) check_image(im);
    std::vector<torch::Tensor> on_device = images;
#if defined(CARSEG_WITH_CUDA)
    if (device.is_cuda()) on_device = upload(images);
#endif
    const torch::Tensor batch = pre->preprocess_batch(on_device);
    const torch::Tensor logits = forward_locked(batch, true);
    std::vector<torch::Tensor> out;
    out.reserve(images.size());
    for (std::size_t i = 0; i < images.size(); ++i) {
      out.push_back(pre->postprocess_logits(logits[static_cast<int64_t>(i)],
                                            static_cast<int>(images[i].size(0)),
                                            static_cast<int>(images[i].size(1))));
    }
    return out;
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
  c10::InferenceMode guard;
  std::lock_guard lock(impl_->mu);
#if defined(CARSEG_WITH_CUDA)
  std::optional<c10::cuda::CUDAStreamGuard> stream_guard;
  if (impl_->stream) stream_guard.emplace(*impl_->stream);
#endif
  std::vector<torch::Tensor> out = impl_->run(images);
  for (auto& t : out) t = t.to(torch::kCPU);
  return out;
}

std::vector<torch::Tensor> Predictor::predict_probabilities(
    const std::vector<torch::Tensor>& images) const {
  std::vector<torch::Tensor> out = predict_logits(images);
  c10::InferenceMode guard;
  for (auto& t : out) t = torch::sigmoid(t);
  return out;
}

std::vector<torch::Tensor> Predictor::predict_batch(const std::vector<torch::Tensor>& images) const {
  c10::InferenceMode guard;
  std::lock_guard lock(impl_->mu);
#if defined(CARSEG_WITH_CUDA)
  std::optional<c10::cuda::CUDAStreamGuard> stream_guard;
  if (impl_->stream) stream_guard.emplace(*impl_->stream);
#endif
  std::vector<torch::Tensor> logits = impl_->run(images);
  std::vector<torch::Tensor> masks;
  masks.reserve(logits.size());
  // Threshold on the device, then copy only the uint8 masks back.
  for (const auto& l : logits) {
    masks.push_back(Preprocessor::mask_from_logits(l, impl_->threshold).to(torch::kCPU));
  }
  return masks;
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
