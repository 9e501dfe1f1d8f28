// CUDA specifics of the Predictor, kept apart so that predictor.cpp reads the same on every
// build. Compiled with CARSEG_WITH_CUDA where torch has CUDA; elsewhere a stub that refuses.
#include "detail/cuda_executor.h"

#include "carseg/error.h"
#include "detail/backend.h"

#if defined(CARSEG_WITH_CUDA)
#include <ATen/Context.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#endif

namespace carseg::detail {

#if defined(CARSEG_WITH_CUDA)
namespace {

std::string shape_of(c10::IntArrayRef sizes) {
  std::ostringstream ss;
  ss << sizes;
  return ss.str();
}

void log_line(const std::string& line) { std::cerr << "carseg: " << line << std::endl; }

}  // namespace

struct CudaExecutor::Impl {
  struct Graph {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    torch::Tensor in;
    torch::Tensor out;
  };

  Backend& backend;
  torch::Device device;
  c10::cuda::CUDAStream stream;
  std::optional<c10::cuda::CUDAStream> caller;  // current when on_stream was last called
  torch::Tensor pinned;                      // uint8 host staging buffer (page-locked)
  at::cuda::CUDAEvent inputs_done;           // the last upload has read the caller's pinned images
  at::cuda::CUDAEvent staging_done;          // the last upload out of `pinned` has finished
  std::map<std::vector<int64_t>, std::unique_ptr<Graph>> graphs;  // nullptr: capture failed

  Impl(Backend& b, const torch::Device& d)
      : backend(b),
        device(d),
        stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, d.index())) {}

  // Ends a capture that a throwing forward left open, so the stream is usable again.
  void abort_capture() const {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream.stream(), &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(stream.stream(), &g);
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
      for (int i = 0; i < 3; ++i) (void)backend.forward(g->in);
      stream.synchronize();
      g->graph = std::make_unique<at::cuda::CUDAGraph>();
      g->graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      try {
        g->out = backend.forward(g->in);
      } catch (...) {
        abort_capture();
        throw;
      }
      g->graph->capture_end();
      stream.synchronize();
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
};

CudaExecutor::CudaExecutor(Backend& backend, const torch::Device& device)
    : impl_(std::make_unique<Impl>(backend, device)) {
  at::globalContext().setBenchmarkCuDNN(true);
}

CudaExecutor::~CudaExecutor() = default;

void CudaExecutor::on_stream(const std::function<void()>& f) {
  impl_->caller = c10::cuda::getCurrentCUDAStream(impl_->device.index());
  c10::cuda::CUDAStreamGuard guard(impl_->stream);
  f();
}

std::vector<torch::Tensor> CudaExecutor::upload(const std::vector<torch::Tensor>& images) {
  Impl& m = *impl_;
  int64_t total = 0;  // bytes to stage
  bool on_device = false;
  std::vector<bool> direct(images.size(), false);  // pinned already: uploaded from where it is
  for (std::size_t i = 0; i < images.size(); ++i) {
    const torch::Tensor& im = images[i];
    direct[i] = !im.is_cuda() && im.is_pinned() && im.is_contiguous();
    if (!im.is_cuda() && !direct[i]) total += im.numel();
    on_device = on_device || im.device() == m.device;
  }
  if (on_device) {
    at::cuda::CUDAEvent written;
    written.record(m.caller.value_or(m.stream));
    written.block(m.stream);
    for (const auto& im : images) {
      if (im.device() == m.device) im.record_stream(m.stream);
    }
  }
  std::vector<torch::Tensor> out(images.size());
  bool any_direct = false;
  for (std::size_t i = 0; i < images.size(); ++i) {
    if (direct[i]) {
      out[i] = images[i].to(m.device, /*non_blocking=*/true);
      any_direct = true;
    }
  }
  if (any_direct) m.inputs_done.record(m.stream);
  if (total == 0) {
    for (std::size_t i = 0; i < images.size(); ++i) {
      if (!direct[i]) out[i] = images[i].to(m.device);
    }
    return out;
  }
  m.staging_done.synchronize();  // the previous upload has finished reading the buffer
  if (!m.pinned.defined() || m.pinned.numel() < total) {
    m.pinned = torch::empty({total}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
  }
  int64_t offset = 0;
  std::vector<std::pair<int64_t, int64_t>> spans(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    if (images[i].is_cuda() || direct[i]) continue;
    const int64_t n = images[i].numel();
    m.pinned.narrow(0, offset, n).view(images[i].sizes()).copy_(images[i]);
    spans[i] = {offset, n};
    offset += n;
  }
  const torch::Tensor dev = m.pinned.narrow(0, 0, total).to(m.device, /*non_blocking=*/true);
  m.staging_done.record(m.stream);
  for (std::size_t i = 0; i < images.size(); ++i) {
    if (direct[i]) continue;
    out[i] = images[i].is_cuda()
                 ? images[i].to(m.device)
                 : dev.narrow(0, spans[i].first, spans[i].second).view(images[i].sizes());
  }
  return out;
}

void CudaExecutor::inputs_read() { impl_->inputs_done.synchronize(); }

void CudaExecutor::to_host(const std::vector<torch::Tensor*>& slots) {
  bool copied = false;
  for (torch::Tensor* t : slots) {
    if (!t->defined() || !t->is_cuda()) continue;
    torch::Tensor host = torch::empty(t->sizes(), t->options().device(torch::kCPU).pinned_memory(true));
    host.copy_(*t, /*non_blocking=*/true);
    *t = std::move(host);
    copied = true;
  }
  if (copied) impl_->stream.synchronize();
}

torch::Tensor CudaExecutor::replay(const torch::Tensor& x) {
  Impl::Graph* g = impl_->graph_for(x);
  if (g == nullptr) return {};
  g->in.copy_(x, /*non_blocking=*/true);
  g->graph->replay();
  return g->out;
}

void CudaExecutor::hand_over(const std::vector<torch::Tensor*>& results) {
  Impl& m = *impl_;
  if (!m.caller || *m.caller == m.stream) return;
  at::cuda::CUDAEvent made;
  made.record(m.stream);
  made.block(*m.caller);
  for (const torch::Tensor* t : results) {
    if (t->defined() && t->device() == m.device) t->record_stream(*m.caller);
  }
}

void CudaExecutor::synchronize() { impl_->stream.synchronize(); }

std::vector<int64_t> CudaExecutor::captured_batch_sizes() const {
  std::vector<int64_t> out;
  for (const auto& [key, g] : impl_->graphs) {
    if (g) out.push_back(key[0]);
  }
  return out;
}

#else  // no CUDA in this build

struct CudaExecutor::Impl {};

CudaExecutor::CudaExecutor(Backend&, const torch::Device& device) {
  throw Error("device", "this build of libcarseg has no CUDA support (torch without CUDA); got \"" +
                            device.str() + "\"");
}
CudaExecutor::~CudaExecutor() = default;
void CudaExecutor::on_stream(const std::function<void()>& f) { f(); }
std::vector<torch::Tensor> CudaExecutor::upload(const std::vector<torch::Tensor>& images) {
  return images;
}
void CudaExecutor::hand_over(const std::vector<torch::Tensor*>&) {}
void CudaExecutor::inputs_read() {}
void CudaExecutor::to_host(const std::vector<torch::Tensor*>&) {}
torch::Tensor CudaExecutor::replay(const torch::Tensor&) { return {}; }
void CudaExecutor::synchronize() {}
std::vector<int64_t> CudaExecutor::captured_batch_sizes() const { return {}; }

#endif

}  // namespace carseg::detail
