// carseg_infer: photos in, car masks and cutouts out (infer); latency and throughput (bench).
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/predictor.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kExitOk = 0;
constexpr int kExitSomeFailed = 1;
constexpr int kExitUsage = 2;

/// Bad usage or an unusable model/output: exit 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr const char* kMainHelp = R"(usage: carseg_infer <command> [options]

commands:
  infer   segment photos: NAME_mask.png and a cutout per input, at the input's resolution
  bench   latency (p50/p90/p99) and throughput per batch size; end to end with --input

Run `carseg_infer <command> --help` for its options.
exit status: 0 all inputs ok, 1 some inputs failed, 2 bad usage or a model it cannot load
)";

constexpr const char* kInferHelp = R"(usage: carseg_infer infer --model DIR --input PATH... --output DIR [options]

  --model DIR          artifact folder (manifest.json + model files from `python -m export`)
  --input PATH...      image files and/or folders (JPEG, PNG, GIF, BMP); several allowed
  --output DIR         where NAME_mask.png and NAME_cutout.{jpg,png} are written (created)
  --device D           cpu (default), cuda or cuda:N
  --precision P        fp32 (default) or fp16 (CUDA only)
  --batch N            images per forward pass (default 8)
  --threshold T        mask threshold in (0, 1) (default: manifest's output.threshold)
  --cutout MODE        white (JPEG, default), transparent (PNG with alpha) or none
  --workers N          decode/encode threads, each side (default 2)
  --report FILE.json   per-input results and errors as JSON
  --backend B          auto (default), torchscript or aoti
  --threads N          torch intra-op threads (default: torch's choice / OMP_NUM_THREADS)
  --no-graphs          do not capture CUDA graphs
  --exact              CPU: pre/post-processing op for op as the Python reference: masks
                       bit-identical to carseg.inference's (default: fused kernels, faster)
  --onednn-fusion      CPU, TorchScript: oneDNN Graph fusion (faster at batch 1 and small
                       sizes, slower at larger batches and sizes; not bit-identical)
  -h, --help           this help

example: carseg_infer infer --model artifacts --input photos/ --output out --report out/report.json
exit status: 0 all inputs ok, 1 some inputs failed (listed on stderr and in the report),
             2 bad usage, a model it cannot load or an output folder it cannot write
)";

constexpr const char* kBenchHelp = R"(usage: carseg_infer bench --model DIR [options]

  --model DIR          artifact folder
  --device D           cpu (default), cuda or cuda:N
  --precision P        fp32 (default) or fp16 (CUDA only)
  --batch LIST         batch sizes, comma-separated (default 1,8,32)
  --size N             square input size, a multiple of 32 (default: the model's own)
  --iters N            timed iterations per batch size (default 50)
  --warmup N           untimed iterations first (default 5)
  --no-graphs          CUDA: only eager (default: report with and without CUDA graphs)
  --backend B          auto (default), torchscript or aoti
  --threads N          torch intra-op threads
  --exact              CPU: op-for-op pre/post-processing (see infer --help)
  --onednn-fusion      CPU, TorchScript: oneDNN Graph fusion (see infer --help)
  --optimize           TorchScript optimize_for_inference (faster on CPU, not bit-identical)
  --input DIR          also run end to end (decode, infer, encode) over DIR's images, img/s
  --json FILE          write the results as JSON
  -h, --help           this help

example: carseg_infer bench --model artifacts --batch 1,8 --iters 100 --json bench.json
)";

// ---------------------------------------------------------------------------- argument parsing

class Args {
 public:
  Args(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
        const auto eq = a.find('=');
        items_.push_back(a.substr(0, eq));
        items_.push_back(a.substr(eq + 1));
      } else {
        items_.push_back(std::move(a));
      }
    }
  }
  [[nodiscard]] bool done() const { return pos_ >= items_.size(); }
  std::string next() { return items_[pos_++]; }
  std::string value(const std::string& flag) {
    if (done() || (items_[pos_].rfind("--", 0) == 0 && items_[pos_].size() > 2)) {
      throw UsageError(flag + " needs a value");
    }
    return next();
  }
  // Values up to the next option.
  std::vector<std::string> values(const std::string& flag) {
    std::vector<std::string> out;
    while (!done() && items_[pos_].rfind("--", 0) != 0) out.push_back(next());
    if (out.empty()) throw UsageError(flag + " needs at least one value");
    return out;
  }

 private:
  std::vector<std::string> items_;
  std::size_t pos_ = 0;
};

long parse_int(const std::string& flag, const std::string& s, long lo, long hi) {
  try {
    std::size_t n = 0;
    const long v = std::stol(s, &n);
    if (n == s.size() && v >= lo && v <= hi) return v;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + ": expected an integer in [" + std::to_string(lo) + ", " +
                   std::to_string(hi) + "], got \"" + s + "\"");
}

double parse_threshold(const std::string& s) {
  try {
    std::size_t n = 0;
    const double v = std::stod(s, &n);
    if (n == s.size() && v > 0 && v < 1) return v;
  } catch (const std::exception&) {
  }
  throw UsageError("--threshold: expected a number in (0, 1), got \"" + s + "\"");
}

struct CommonArgs {
  fs::path model;
  carseg::PredictorOptions options = fast_defaults();
  int threads = 0;

  // The tool's default on the CPU: fused pre/post-processing (faster at every size; masks
  // agree with the reference to IoU >= 0.999, see the tests). --exact restores the library's
  // op-for-op default. oneDNN Graph fusion stays opt-in (--onednn-fusion): on the 2-core CPU
  // it took TorchScript batch 1 at 256 px from 41 to 36 ms, but batch 4 from 135 to 193 ms
  // and batch 1 at 512 px from 154 to 195 ms.
  static carseg::PredictorOptions fast_defaults() {
    carseg::PredictorOptions o;
    o.exact = false;
    return o;
  }
};

// Options both subcommands take; returns false when `flag` is not one of them.
bool parse_common(const std::string& flag, Args& args, CommonArgs& c) {
  if (flag == "--model") {
    c.model = args.value(flag);
  } else if (flag == "--device") {
    c.options.device = args.value(flag);
  } else if (flag == "--precision") {
    try {
      c.options.precision = carseg::parse_precision(args.value(flag));
    } catch (const carseg::Error& e) {
      throw UsageError(e.what());
    }
  } else if (flag == "--backend") {
    try {
      c.options.backend = carseg::parse_backend(args.value(flag));
    } catch (const carseg::Error& e) {
      throw UsageError(e.what());
    }
  } else if (flag == "--threads") {
    c.threads = static_cast<int>(parse_int(flag, args.value(flag), 1, 1024));
  } else if (flag == "--no-graphs") {
    c.options.use_cuda_graphs = false;
  } else if (flag == "--exact") {
    c.options.exact = true;
  } else if (flag == "--onednn-fusion") {
    c.options.onednn_fusion = true;
  } else {
    return false;
  }
  return true;
}

carseg::Predictor load_predictor(const CommonArgs& c) {
  if (c.model.empty()) throw UsageError("--model is required");
  if (c.threads > 0) at::set_num_threads(c.threads);
  try {
    return carseg::Predictor(c.model, c.options);
  } catch (const carseg::Error& e) {
    throw UsageError(e.what());
  } catch (const c10::Error& e) {
    throw UsageError(c.model.string() + ": cannot load the model: " + e.what_without_backtrace());
  }
}

// ---------------------------------------------------------------------------- pipeline

template <class T>
class BoundedQueue {
 public:
  explicit BoundedQueue(std::size_t capacity) : capacity_(std::max<std::size_t>(1, capacity)) {}
  // Waits for room; returns false (dropping the item) once the queue is closed, so that a
  // producer blocked on a full queue wakes up when the consumer gives up.
  bool push(T item) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock, [&] { return items_.size() < capacity_ || closed_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }
  // Waits for at least one item; returns up to `max` items, none once closed and drained.
  std::vector<T> pop_up_to(std::size_t max) {
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] { return !items_.empty() || closed_; });
    std::vector<T> out;
    while (!items_.empty() && out.size() < max) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    not_full_.notify_all();
    return out;
  }
  void close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<T> items_;
  std::size_t capacity_;
  bool closed_ = false;
};

struct Item {
  std::size_t index = 0;
  carseg::Image image;
  torch::Tensor mask;
};

struct Result {
  bool ok = false;
  std::string error;
  int width = 0, height = 0;
  fs::path mask, cutout;
  double foreground = 0;
};

struct PipelineConfig {
  std::vector<fs::path> inputs;
  fs::path output;
  int batch = 8;
  int workers = 2;
  carseg::CutoutMode cutout = carseg::CutoutMode::kWhiteJpeg;
  bool write = true;  // false: encode to memory only (bench end to end)
  std::vector<std::string> refused;  // per input: why it is not processed ("" = it is)
  bool progress = false;
};

std::string message_for(const fs::path& input, const std::exception& e) {
  const std::string what = e.what();
  const std::string name = input.string();
  return what.rfind(name, 0) == 0 ? what : name + ": " + what;
}

// Pixel buffers of photos that are done, for the next decode: same-sized photos then decode
// into memory that is already mapped instead of fresh pages the kernel must fault in and zero
// (7 MB a 1918x1280 photo).
class BufferPool {
 public:
  explicit BufferPool(std::size_t capacity) : capacity_(capacity) {}
  std::vector<std::uint8_t> take() {
    std::lock_guard lock(mu_);
    if (free_.empty()) return {};
    std::vector<std::uint8_t> b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void give(std::vector<std::uint8_t>&& b) {
    std::lock_guard lock(mu_);
    if (free_.size() < capacity_) free_.push_back(std::move(b));
  }

 private:
  std::mutex mu_;
  std::vector<std::vector<std::uint8_t>> free_;
  std::size_t capacity_;
};

// Decode on worker threads, infer in batches on this thread, encode on worker threads; the
// bounded queues keep memory flat while the three stages overlap.
std::vector<Result> run_pipeline(const carseg::Predictor& predictor, const PipelineConfig& cfg) {
  const std::size_t n = cfg.inputs.size();
  std::vector<Result> results(n);
  BoundedQueue<Item> decoded(static_cast<std::size_t>(cfg.batch) * 2);
  BoundedQueue<Item> inferred(static_cast<std::size_t>(cfg.batch) * 2);
  std::atomic<std::size_t> next{0}, finished{0}, failed{0};
  std::atomic<int> decoders_left{cfg.workers};
  BufferPool buffers(static_cast<std::size_t>(cfg.workers) * 2);
  const auto start = std::chrono::steady_clock::now();

  auto fail = [&](std::size_t i, const std::exception& e) {
    results[i].ok = false;
    results[i].error = message_for(cfg.inputs[i], e);
    ++failed;
    ++finished;
  };

  std::vector<std::thread> threads;
  for (int w = 0; w < cfg.workers; ++w) {
    threads.emplace_back([&] {
      for (std::size_t i; (i = next++) < n;) {
        try {
          if (i < cfg.refused.size() && !cfg.refused[i].empty()) {
            throw std::runtime_error(cfg.refused[i]);
          }
          Item item;
          item.index = i;
          item.image = carseg::read_image(cfg.inputs[i], buffers.take());
          if (!decoded.push(std::move(item))) return;  // the run was abandoned
        } catch (const std::exception& e) {
          fail(i, e);
        }
      }
      if (--decoders_left == 0) decoded.close();
    });
  }
  for (int w = 0; w < cfg.workers; ++w) {
    threads.emplace_back([&] {
      for (;;) {
        std::vector<Item> items = inferred.pop_up_to(1);
        if (items.empty()) return;
        Item& item = items[0];
        const std::size_t i = item.index;
        try {
          const fs::path& in = cfg.inputs[i];
          const torch::Tensor mask = item.mask.contiguous();
          const auto* m = mask.data_ptr<std::uint8_t>();
          Result& r = results[i];
          r.width = item.image.width;
          r.height = item.image.height;
          const auto car = std::count_if(m, m + mask.numel(), [](std::uint8_t v) { return v != 0; });
          r.foreground = static_cast<double>(car) /
                         static_cast<double>(std::max<int64_t>(1, mask.numel()));
          const std::string stem = in.stem().string();
          r.mask = cfg.output / (stem + "_mask.png");
          if (cfg.write) {
            carseg::write_mask_png(r.mask, m, r.width, r.height);
          } else {
            (void)carseg::encode_mask_png(m, r.width, r.height);
          }
          if (cfg.cutout != carseg::CutoutMode::kNone) {
            r.cutout = cfg.output / (stem + (cfg.cutout == carseg::CutoutMode::kWhiteJpeg
                                                 ? "_cutout.jpg" : "_cutout.png"));
            // Last use of the photo: the white background is painted into its own pixels.
            if (cfg.write) {
              carseg::write_cutout_in_place(r.cutout, item.image, m, cfg.cutout);
            } else {
              (void)carseg::encode_cutout_in_place(item.image, m, cfg.cutout);
            }
          }
          buffers.give(std::move(item.image.pixels));
          r.ok = true;
          ++finished;
        } catch (const std::exception& e) {
          fail(i, e);
        }
      }
    });
  }

  // Whatever leaves this function (a throw included), the workers are told to stop and are
  // joined: a joinable std::thread at destruction would terminate the process.
  struct Joiner {
    BoundedQueue<Item>& decoded;
    BoundedQueue<Item>& inferred;
    std::vector<std::thread>& threads;
    ~Joiner() {
      decoded.close();
      inferred.close();
      for (auto& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } joiner{decoded, inferred, threads};

  auto show_progress = [&](bool last) {
    if (!cfg.progress) return;
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "\rcarseg_infer: %zu/%zu images, %zu failed, %.1f img/s%s",
                 finished.load(), n, failed.load(), secs > 0 ? finished.load() / secs : 0.0,
                 last ? "\n" : "");
    std::fflush(stderr);
  };

  for (;;) {
    std::vector<Item> batch = decoded.pop_up_to(static_cast<std::size_t>(cfg.batch));
    if (batch.empty()) break;
    std::vector<torch::Tensor> images;
    images.reserve(batch.size());
    for (Item& it : batch) {
      images.push_back(torch::from_blob(it.image.pixels.data(),
                                        {it.image.height, it.image.width, 3}, torch::kUInt8));
    }
    try {
      std::vector<torch::Tensor> masks = predictor.predict_batch(images);
      for (std::size_t k = 0; k < batch.size(); ++k) {
        batch[k].mask = std::move(masks[k]);
        inferred.push(std::move(batch[k]));
      }
    } catch (const std::exception& e) {
      for (const Item& it : batch) fail(it.index, e);
    }
    show_progress(false);
  }
  inferred.close();
  for (auto& t : threads) t.join();
  show_progress(true);
  return results;
}

bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".gif" || ext == ".bmp";
}

// Folders give their image files (sorted, not recursive); files are taken as named, so a bad
// file gets its own error.
std::vector<fs::path> collect_inputs(const std::vector<std::string>& args) {
  std::vector<fs::path> out;
  for (const auto& a : args) {
    const fs::path p(a);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> found;
      for (const auto& entry : fs::directory_iterator(p, ec)) {
        if (entry.is_regular_file(ec) && is_image_name(entry.path())) found.push_back(entry.path());
      }
      if (ec) throw UsageError(a + ": cannot list the folder: " + ec.message());
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      out.push_back(p);
    }
  }
  return out;
}

void ensure_writable_folder(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    throw UsageError(dir.string() + ": cannot create the output folder: " +
                     (ec ? ec.message() : std::string("a file is in the way")));
  }
  const fs::path probe = dir / ".carseg_write_probe";
  try {
    carseg::write_file_atomic(probe, {});
  } catch (const carseg::Error& e) {
    throw UsageError(dir.string() + ": cannot write to the output folder: " + e.reason());
  }
  fs::remove(probe, ec);
}

void write_json(const fs::path& path, const json& j) {
  const std::string text = j.dump(2) + "\n";
  try {
    carseg::write_file_atomic(path, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
  } catch (const carseg::Error& e) {
    throw UsageError(e.what());
  }
}

std::string precision_name(carseg::Precision p) {
  return p == carseg::Precision::kFp16 ? "fp16" : "fp32";
}

// ---------------------------------------------------------------------------- infer

int cmd_infer(int argc, char** argv) {
  Args args(argc, argv, 2);
  CommonArgs common;
  std::vector<std::string> inputs;
  fs::path output;
  std::optional<fs::path> report;
  PipelineConfig cfg;
  while (!args.done()) {
    const std::string flag = args.next();
    if (flag == "-h" || flag == "--help") {
      std::cout << kInferHelp;
      return kExitOk;
    }
    if (parse_common(flag, args, common)) continue;
    if (flag == "--input") {
      const auto v = args.values(flag);
      inputs.insert(inputs.end(), v.begin(), v.end());
    } else if (flag == "--output") {
      output = args.value(flag);
    } else if (flag == "--batch") {
      cfg.batch = static_cast<int>(parse_int(flag, args.value(flag), 1, 4096));
    } else if (flag == "--threshold") {
      common.options.threshold = parse_threshold(args.value(flag));
    } else if (flag == "--cutout") {
      const std::string m = args.value(flag);
      if (m == "white") cfg.cutout = carseg::CutoutMode::kWhiteJpeg;
      else if (m == "transparent") cfg.cutout = carseg::CutoutMode::kTransparentPng;
      else if (m == "none") cfg.cutout = carseg::CutoutMode::kNone;
      else throw UsageError("--cutout: expected white, transparent or none, got \"" + m + "\"");
    } else if (flag == "--workers") {
      cfg.workers = static_cast<int>(parse_int(flag, args.value(flag), 1, 256));
    } else if (flag == "--report") {
      report = fs::path(args.value(flag));
    } else {
      throw UsageError("infer: unknown option " + flag + " (see carseg_infer infer --help)");
    }
  }
  if (common.model.empty()) throw UsageError("infer: --model is required");
  if (inputs.empty()) throw UsageError("infer: --input is required");
  if (output.empty()) throw UsageError("infer: --output is required");
  cfg.inputs = collect_inputs(inputs);
  if (cfg.inputs.empty()) throw UsageError("infer: no images (.jpg .jpeg .png .gif .bmp) in the inputs");
  ensure_writable_folder(output);
  // Two inputs with one stem (a.jpg, a.png) would write the same a_mask.png: the later one is
  // refused, by name, instead of silently overwriting the first one's results.
  {
    std::map<std::string, fs::path> seen;
    cfg.refused.assign(cfg.inputs.size(), std::string());
    for (std::size_t i = 0; i < cfg.inputs.size(); ++i) {
      const auto [it, fresh] = seen.emplace(cfg.inputs[i].stem().string(), cfg.inputs[i]);
      if (!fresh) {
        cfg.refused[i] = cfg.inputs[i].string() + ": same name as " + it->second.string() +
                         "; its outputs would overwrite that one's";
      }
    }
  }
  if (report) {  // before any work: an unwritable report must not cost a whole run
    ensure_writable_folder(report->has_parent_path() ? report->parent_path() : fs::path("."));
  }
  cfg.output = output;
  cfg.progress = ::isatty(STDERR_FILENO) != 0;

  const carseg::Predictor predictor = load_predictor(common);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<Result> results = run_pipeline(predictor, cfg);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::size_t failed = 0;
  json items = json::array(), errors = json::array();
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    const std::string in = cfg.inputs[i].string();
    if (r.ok) {
      json item = {{"input", in}, {"ok", true}, {"width", r.width}, {"height", r.height},
                   {"mask", r.mask.string()}, {"foreground_fraction", r.foreground}};
      item["cutout"] = r.cutout.empty() ? json(nullptr) : json(r.cutout.string());
      items.push_back(item);
    } else {
      ++failed;
      std::cerr << "carseg_infer: error: " << r.error << "\n";
      items.push_back({{"input", in}, {"ok", false}, {"error", r.error}});
      errors.push_back({{"file", in}, {"error", r.error}});
    }
  }
  const std::size_t ok = results.size() - failed;
  std::cerr << "carseg_infer: " << ok << " of " << results.size() << " images segmented in "
            << std::fixed << std::setprecision(2) << seconds << " s ("
            << std::setprecision(1) << (seconds > 0 ? ok / seconds : 0.0) << " img/s) -> "
            << output.string() << "\n";
  if (report) {
    json j = {{"command", "infer"},
              {"model", common.model.string()},
              {"backend", predictor.backend_name()},
              {"device", predictor.device().str()},
              {"precision", precision_name(common.options.precision)},
              {"threshold", predictor.threshold()},
              {"batch", cfg.batch},
              {"inputs", results.size()},
              {"succeeded", ok},
              {"failed", failed},
              {"seconds", seconds},
              {"images_per_second", seconds > 0 ? ok / seconds : 0.0},
              {"results", items},
              {"errors", errors}};
    write_json(*report, j);
  }
  return failed == 0 ? kExitOk : kExitSomeFailed;
}

// ---------------------------------------------------------------------------- bench

struct Stats {
  double p50 = 0, p90 = 0, p99 = 0, mean = 0;
};

Stats stats_of(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double q) {  // nearest rank
    const std::size_t k = static_cast<std::size_t>(std::ceil(q * ms.size()));
    return ms[std::min(ms.size() - 1, k == 0 ? 0 : k - 1)];
  };
  Stats s;
  s.p50 = pct(0.50);
  s.p90 = pct(0.90);
  s.p99 = pct(0.99);
  for (const double v : ms) s.mean += v;
  s.mean /= static_cast<double>(ms.size());
  return s;
}

int cmd_bench(int argc, char** argv) {
  Args args(argc, argv, 2);
  CommonArgs common;
  std::vector<int> batches = {1, 8, 32};
  int iters = 50, warmup = 5;
  std::optional<fs::path> json_path, input;
  std::optional<int> size;
  while (!args.done()) {
    const std::string flag = args.next();
    if (flag == "-h" || flag == "--help") {
      std::cout << kBenchHelp;
      return kExitOk;
    }
    if (parse_common(flag, args, common)) continue;
    if (flag == "--batch") {
      batches.clear();
      std::stringstream ss(args.value(flag));
      for (std::string part; std::getline(ss, part, ',');) {
        batches.push_back(static_cast<int>(parse_int(flag, part, 1, 4096)));
      }
      if (batches.empty()) throw UsageError("--batch: expected sizes like 1,8,32");
    } else if (flag == "--iters") {
      iters = static_cast<int>(parse_int(flag, args.value(flag), 1, 1000000));
    } else if (flag == "--warmup") {
      warmup = static_cast<int>(parse_int(flag, args.value(flag), 0, 1000000));
    } else if (flag == "--json") {
      json_path = fs::path(args.value(flag));
    } else if (flag == "--input") {
      input = fs::path(args.value(flag));
    } else if (flag == "--optimize") {
      common.options.optimize_for_inference = true;
    } else if (flag == "--size") {
      size = static_cast<int>(parse_int(flag, args.value(flag), 32, 8192));
      if (*size % 32 != 0) throw UsageError("--size: expected a multiple of 32, got " +
                                            std::to_string(*size));
    } else {
      throw UsageError("bench: unknown option " + flag + " (see carseg_infer bench --help)");
    }
  }
  if (common.model.empty()) throw UsageError("bench: --model is required");
  const carseg::Predictor predictor = load_predictor(common);
  // The model's own size by default; --size times the (spatially dynamic) model at another,
  // to compare with other backends at one resolution.
  const int s = size.value_or(predictor.input_size());
  const bool cuda = predictor.device().is_cuda();
  std::vector<bool> graph_modes = {false};
  if (cuda && common.options.use_cuda_graphs) graph_modes = {true, false};

  std::cout << "carseg_infer bench: backend " << predictor.backend_name() << ", device "
            << predictor.device().str() << ", " << precision_name(common.options.precision)
            << ", input " << s << "x" << s << ", " << at::get_num_threads() << " threads, "
            << iters << " iterations after " << warmup << " warm-up\n";
  std::cout << "batch  graphs   p50 ms    p90 ms    p99 ms     img/s\n";
  json rows = json::array();
  for (const int n : batches) {
    torch::Tensor x;
    {
      c10::InferenceMode guard;
      x = torch::randn({n, 3, s, s}, torch::TensorOptions().device(predictor.device()));
    }
    for (const bool graphs : graph_modes) {
      for (int i = 0; i < warmup; ++i) (void)predictor.forward(x, graphs);
      std::vector<double> ms;
      ms.reserve(static_cast<std::size_t>(iters));
      for (int i = 0; i < iters; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        (void)predictor.forward(x, graphs);  // synchronizes its stream on CUDA
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                         .count());
      }
      const Stats st = stats_of(ms);
      const double ips = n * 1000.0 / st.mean;
      std::cout << std::setw(5) << n << "  " << std::setw(6) << (graphs ? "yes" : "no") << std::fixed
                << std::setprecision(3) << std::setw(9) << st.p50 << " " << std::setw(9) << st.p90
                << " " << std::setw(9) << st.p99 << " " << std::setprecision(1) << std::setw(9)
                << ips << "\n";
      rows.push_back({{"batch", n}, {"cuda_graphs", graphs}, {"p50_ms", st.p50},
                      {"p90_ms", st.p90}, {"p99_ms", st.p99}, {"mean_ms", st.mean},
                      {"images_per_second", ips}, {"iters", iters}});
    }
  }
  json j = {{"command", "bench"},
            {"model", common.model.string()},
            {"backend", predictor.backend_name()},
            {"device", predictor.device().str()},
            {"precision", precision_name(common.options.precision)},
            {"threads", at::get_num_threads()},
            {"input_size", s},
            {"optimize_for_inference", common.options.optimize_for_inference},
            {"exact", common.options.exact},
            {"onednn_fusion", common.options.onednn_fusion && !cuda &&
                                  predictor.backend_name() == "torchscript"},
            {"results", rows}};
  if (input) {
    PipelineConfig cfg;
    cfg.inputs = collect_inputs({input->string()});
    if (cfg.inputs.empty()) throw UsageError(input->string() + ": no images in the folder");
    cfg.batch = batches.front();
    cfg.write = false;
    cfg.cutout = carseg::CutoutMode::kWhiteJpeg;
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<Result> results = run_pipeline(predictor, cfg);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto ok = std::count_if(results.begin(), results.end(), [](const Result& r) { return r.ok; });
    const double ips = ok / secs;
    std::cout << "end to end (decode, infer, encode white JPEG cutout + mask PNG, no writes): "
              << ok << " images in " << std::setprecision(2) << secs << " s = "
              << std::setprecision(1) << ips << " img/s (batch " << cfg.batch << ")\n";
    j["end_to_end"] = {{"input", input->string()}, {"images", ok}, {"seconds", secs},
                       {"images_per_second", ips}, {"batch", cfg.batch}};
  }
  if (json_path) write_json(*json_path, j);
  return kExitOk;
}

// libgomp, torch's OpenMP, reads its spin-wait setting once, when it is loaded, before main: a
// thread waiting at a barrier spins 300,000 times before it sleeps. While decode and encode
// threads share the cores with the model, that spinning took 17% of the CPU time of a folder
// run (perf, 2-core CPU). GOMP_SPINCOUNT=30000 gave 11% more images per second end to end and
// the same batch-1 latency, measured side by side. Setting it means starting again, once; a
// user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY is left as it is.
void restart_with_shorter_openmp_spin(char** argv) {
  if (std::getenv("GOMP_SPINCOUNT") != nullptr || std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (::setenv("GOMP_SPINCOUNT", "30000", /*overwrite=*/0) != 0) return;
  ::execv("/proc/self/exe", argv);
  ::unsetenv("GOMP_SPINCOUNT");  // no /proc: go on with the default
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && (std::string_view(argv[1]) == "infer" || std::string_view(argv[1]) == "bench")) {
    restart_with_shorter_openmp_spin(argv);
  }
#if defined(M_MMAP_THRESHOLD)
  // Every photo allocates and frees buffers of megabytes (pixels, masks, tensors). glibc would
  // map and unmap each one from the kernel, and the page faults of touching fresh pages cost
  // more than the copies themselves; kept in the heap, they are reused from image to image.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's ceiling on 64-bit
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // One arena: per-thread arenas are capped at 64 MiB heaps, so photo-sized buffers freed on
  // one thread and needed on another kept mapping fresh memory (measured: a third fewer page
  // faults over 64 photos, 5-7% more images per second).
  mallopt(M_ARENA_MAX, 1);
#endif
  try {
    if (argc < 2) {
      std::cerr << kMainHelp;
      return kExitUsage;
    }
    const std::string cmd = argv[1];
    if (cmd == "-h" || cmd == "--help") {
      std::cout << kMainHelp;
      return kExitOk;
    }
    if (cmd == "infer") return cmd_infer(argc, argv);
    if (cmd == "bench") return cmd_bench(argc, argv);
    throw UsageError("unknown command \"" + cmd + "\" (expected infer or bench; see --help)");
  } catch (const UsageError& e) {
    std::cerr << "carseg_infer: error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const carseg::Error& e) {
    std::cerr << "carseg_infer: error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "carseg_infer: error: " << e.what() << "\n";
    return kExitUsage;
  }
}
