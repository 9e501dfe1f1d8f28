#include <ATen/autocast_mode.h>
#include <torch/csrc/jit/codegen/onednn/interface.h>
#include <torch/script.h>

#include <mutex>
#include <sstream>

#include "detail/backend.h"
#include "carseg/error.h"

namespace carseg::detail {
namespace {

// The oneDNN Graph (LLGA) fuser is a process-wide TorchScript pass: once on, frozen CPU graphs
// get conv + bias + ReLU (+ add) fused into oneDNN partitions. It changes nothing on CUDA.
void enable_onednn_fusion() {
  static std::once_flag once;
  std::call_once(once, [] { torch::jit::RegisterLlgaFuseGraph::setEnabled(true); });
}

class TorchScriptBackend final : public Backend {
 public:
  TorchScriptBackend(const std::vector<std::uint8_t>& bytes, const std::filesystem::path& file,
                     const torch::Device& device, const TorchScriptOptions& options)
      : device_(device), options_(options) {
    try {
      std::istringstream in(std::string(bytes.begin(), bytes.end()));
      module_ = torch::jit::load(in, device);
    } catch (const std::exception& e) {
      throw library_error(file.string(), "cannot load TorchScript", e);
    }
    module_.eval();
    if (options_.onednn_fusion && !device_.is_cuda()) {
      enable_onednn_fusion();
    }
    if (options_.optimize_for_inference) {
      try {
        module_ = torch::jit::optimize_for_inference(module_);
      } catch (const std::exception& e) {
        throw library_error(file.string(), "optimize_for_inference failed", e);
      }
    }
  }

  torch::Tensor forward(const torch::Tensor& input) override {
    // Autocast state is thread-local: set it around this call only.
    // Turns fp16 autocast on for this forward and puts back all three settings it changes.
    struct AutocastScope {
      bool on;
      bool was_enabled = false;
      bool was_cache = true;
      at::ScalarType was_dtype = at::kHalf;
      explicit AutocastScope(bool enable) : on(enable) {
        if (!on) return;
        was_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
        was_cache = at::autocast::is_autocast_cache_enabled();
        was_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
        at::autocast::set_autocast_enabled(at::kCUDA, true);
        at::autocast::set_autocast_dtype(at::kCUDA, at::kHalf);
        // Weight casts must be re-done inside a CUDA graph capture, not served from a cache.
        at::autocast::set_autocast_cache_enabled(false);
      }
      ~AutocastScope() {
        if (!on) return;
        at::autocast::set_autocast_enabled(at::kCUDA, was_enabled);
        at::autocast::set_autocast_dtype(at::kCUDA, was_dtype);
        at::autocast::set_autocast_cache_enabled(was_cache);
      }
      AutocastScope(const AutocastScope&) = delete;
      AutocastScope& operator=(const AutocastScope&) = delete;
    } scope(options_.autocast_fp16 && device_.is_cuda());
    torch::IValue out = module_.forward({input});
    torch::Tensor logits;
    if (out.isTensor()) {
      logits = out.toTensor();
    } else if (out.isTuple() && !out.toTupleRef().elements().empty() &&
               out.toTupleRef().elements()[0].isTensor()) {
      logits = out.toTupleRef().elements()[0].toTensor();
    } else {
      throw Error("torchscript", "expected the model to return a tensor, got " + out.tagKind());
    }
    return logits;
  }

  std::string name() const override { return "torchscript"; }
  torch::ScalarType input_dtype() const override { return options_.file_dtype; }

 private:
  torch::jit::Module module_;
  torch::Device device_;
  TorchScriptOptions options_;
};

}  // namespace

std::unique_ptr<Backend> make_torchscript_backend(const std::vector<std::uint8_t>& bytes,
                                                  const std::filesystem::path& file,
                                                  const torch::Device& device,
                                                  const TorchScriptOptions& options) {
  return std::make_unique<TorchScriptBackend>(bytes, file, device, options);
}

}  // namespace carseg::detail
