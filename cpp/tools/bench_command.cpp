// carseg_infer bench: latency and throughput of the model alone, and end to end over a folder.
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include "carseg/bench.h"
#include "carseg/pipeline.h"
#include "cli.h"

namespace carseg::cli {
namespace {

constexpr const char* kBenchHelp = R"(usage: carseg_infer bench --model DIR [options]

  --model DIR          artifact folder
  --device D           cpu (default), cuda or cuda:N
  --precision P        auto (default), fp32, fp16 (CUDA only) or int8 (CPU: the folder's
                       model.int8.onnx from `python -m export int8`, through ONNX Runtime).
                       auto: int8 on the CPU where the manifest has an int8 model whose
                       verify passed (mask IoU against fp32 on real photos), else fp32
  --batch LIST         batch sizes, comma-separated (default 1,8,32)
  --size N|HxW         input size, multiples of 32: N for N x N, or e.g. 1280x1920
                       (default: the model's own square)
  --iters N            timed iterations per batch size (default 50)
  --warmup N           untimed iterations first (default 5)
  --no-graphs          CUDA: only eager (default: report with and without CUDA graphs)
  --backend B          auto (default), torchscript, aoti or onnx (ONNX Runtime, CPU)
  --threads LIST       intra-op threads, comma-separated to sweep them (default: OMP_NUM_THREADS
                       if set, else the CPUs this process may use); a row per count
  --exact              CPU: op-for-op pre/post-processing (see infer --help)
  --onednn-fusion      CPU, TorchScript: oneDNN Graph fusion (see infer --help)
  --optimize           TorchScript optimize_for_inference (faster on CPU, not bit-identical)
  --input DIR          also run end to end (decode, infer, encode) over DIR's images, img/s
  --json FILE          write the results as JSON
  -v, --verbose        errors in full (torch's C++ backtrace), not one line
  -h, --help           this help

example: carseg_infer bench --model artifacts --batch 1,8 --iters 100 --json bench.json
)";

}  // namespace

int cmd_bench(int argc, char** argv) {
  Args args(argc, argv);
  Common common;
  std::vector<int> batches = {1, 8, 32};
  int iters = 50, warmup = 5, height = 0, width = 0;
  std::optional<fs::path> json_path, input;
  const bool run = parse_flags(args, common, "bench", kBenchHelp, [&](const std::string& flag) {
    if (flag == "--batch") {
      batches.clear();
      std::stringstream ss(args.value(flag));
      for (std::string part; std::getline(ss, part, ',');) {
        batches.push_back(static_cast<int>(Args::parse_int(flag, part, 1, 4096)));
      }
      if (batches.empty()) throw UsageError("--batch: expected sizes like 1,8,32");
    } else if (flag == "--iters") {
      iters = static_cast<int>(args.integer(flag, 1, 1000000));
    } else if (flag == "--warmup") {
      warmup = static_cast<int>(args.integer(flag, 0, 1000000));
    } else if (flag == "--json") {
      json_path = fs::path(args.value(flag));
    } else if (flag == "--input") {
      input = fs::path(args.value(flag));
    } else if (flag == "--optimize") {
      common.options.optimize_for_inference = true;
    } else if (flag == "--size") {  // N (square) or HxW, multiples of 32
      const std::string v = args.value(flag);
      const auto x = v.find('x');
      height = static_cast<int>(Args::parse_int(flag, v.substr(0, x), 32, 8192));
      width = x == std::string::npos ? height
                                     : static_cast<int>(Args::parse_int(flag, v.substr(x + 1), 32, 8192));
      if (height % 32 != 0 || width % 32 != 0) {
        throw UsageError("--size: expected multiples of 32 (N or HxW), got " + v);
      }
    } else {
      return false;
    }
    return true;
  });
  if (!run) return kExitOk;
  const std::vector<int> thread_counts =
      common.threads.empty() ? std::vector<int>{Common::default_threads()} : common.threads;
  json rows = json::array();
  std::optional<carseg::Predictor> loaded;
  int h = 0, w = 0;
  bool cuda = false;
  for (const int n_threads : thread_counts) {
    // Loaded again for each count: ONNX Runtime fixes its threads when a session is made.
    loaded.reset();
    loaded.emplace(common.load("bench", n_threads));
    const carseg::Predictor& predictor = *loaded;
    // The model's own size by default; --size times the (spatially dynamic) model at another,
    // to compare with other backends at one resolution.
    h = height > 0 ? height : predictor.input_size();
    w = width > 0 ? width : predictor.input_size();
    cuda = predictor.device().is_cuda();
    std::vector<bool> graph_modes = {false};
    if (cuda && common.options.use_cuda_graphs) graph_modes = {true, false};

    std::cout << "carseg_infer bench: backend " << predictor.backend_name() << ", device "
              << predictor.device().str() << ", " << carseg::to_string(predictor.precision())
              << ", input " << h << "x" << w << ", " << at::get_num_threads() << " threads, "
              << iters << " iterations after " << warmup << " warm-up\n"
              << "batch  graphs   p50 ms    p90 ms    p99 ms     img/s\n";
    for (const int n : batches) {
      for (const bool graphs : graph_modes) {
        const carseg::LatencyStats st =
            carseg::time_forward(predictor, n, h, w, iters, warmup, graphs);
        std::cout << std::setw(5) << n << "  " << std::setw(6) << (graphs ? "yes" : "no")
                  << std::fixed << std::setprecision(3) << std::setw(9) << st.p50 << " "
                  << std::setw(9) << st.p90 << " " << std::setw(9) << st.p99 << " "
                  << std::setprecision(1) << std::setw(9) << st.images_per_second << "\n";
        rows.push_back({{"batch", n}, {"cuda_graphs", graphs}, {"threads", n_threads},
                        {"p50_ms", st.p50}, {"p90_ms", st.p90}, {"p99_ms", st.p99},
                        {"mean_ms", st.mean}, {"images_per_second", st.images_per_second},
                        {"iters", iters}});
      }
    }
  }
  const carseg::Predictor& predictor = *loaded;  // the last count's, for the end-to-end run
  json j = common.describe(predictor);
  const json size = h == w ? json(h) : json(std::to_string(h) + "x" + std::to_string(w));
  j.update({{"command", "bench"}, {"threads", thread_counts.size() == 1 ? json(thread_counts[0])
                                                                         : json(thread_counts)},
            {"input_size", size},
            {"input_height", h}, {"input_width", w},
            {"optimize_for_inference", common.options.optimize_for_inference},
            {"exact", common.options.exact},
            {"onednn_fusion", common.options.onednn_fusion && !cuda &&
                                  predictor.backend_name() == "torchscript"},
            {"results", rows}});
  if (input) {
    const std::vector<fs::path> photos = carseg::collect_photos({*input});
    if (photos.empty()) throw UsageError(input->string() + ": no images in the folder");
    carseg::PipelineOptions opt;
    opt.batch = batches.front();
    opt.write = false;
    const carseg::PipelineReport r = carseg::Pipeline(predictor, opt).run(photos, {});
    std::cout << "end to end (decode, infer, encode white JPEG cutout + mask PNG, no writes): "
              << r.succeeded() << " images in " << std::setprecision(2) << r.seconds << " s = "
              << std::setprecision(1) << r.images_per_second() << " img/s (batch " << opt.batch << ")\n";
    j["end_to_end"] = {{"input", input->string()}, {"images", r.succeeded()}, {"seconds", r.seconds},
                       {"images_per_second", r.images_per_second()}, {"batch", opt.batch}};
  }
  if (json_path) write_json(*json_path, j);
  return kExitOk;
}

}  // namespace carseg::cli
