// carseg_infer infer: photos in, a mask and a cutout per photo out (carseg::Pipeline).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <optional>

#include "carseg/pipeline.h"
#include "cli.h"

namespace carseg::cli {
namespace {

constexpr const char* kInferHelp = R"(usage: carseg_infer infer --model DIR --input PATH... --output DIR [options]

  --model DIR          artifact folder (manifest.json + model files from `python -m export`)
  --input PATH...      image files and/or folders (JPEG, PNG, GIF, BMP); several allowed
  --output DIR         where NAME_mask.png and NAME_cutout.{jpg,png} are written (created)
  --device D           cpu (default), cuda or cuda:N
  --precision P        auto (default), fp32, fp16 (CUDA only) or int8 (CPU: the folder's
                       model.int8.onnx from `python -m export int8`, through ONNX Runtime).
                       auto: int8 on the CPU where the manifest has an int8 model whose
                       verify passed (mask IoU against fp32 on real photos), else fp32
  --batch N            images per forward pass (default 8)
  --decode D           where the workers decode JPEG photos: cpu (default, libjpeg-turbo) or
                       gpu (CUDA: nvJPEG; the photos stay on the GPU for the model)
  --threshold T        mask threshold in (0, 1) (default: manifest's output.threshold)
  --cutout MODE        white (JPEG, default), transparent (PNG with alpha) or none
  --background B       what is behind the car in the cutout: white (default), transparent
                       (PNG), #RRGGBB, or an image file (resized to each photo)
  --crop MARGIN        crop the cutout to the car's box grown by MARGIN pixels a side
  --matte              also write NAME_alpha.png, the alpha matte (0 background, 255 car)
  --quality Q          JPEG quality of the cutouts, 1-100 (default 95)
  --no-refine          the model's mask resized, without the manifest's full-resolution
                       refinement (output.refine; on by default where the manifest has it)
  --softness S         width of the matte's soft edge in (0, 1] (default: the manifest's)
  --workers N          decode/encode threads, each side (default: the CPUs this process may
                       use, 1 to 8)
  --report FILE.json   per-input results and errors as JSON
  --backend B          auto (default), torchscript, aoti or onnx (ONNX Runtime, CPU)
  --threads N          intra-op threads of the model (default: OMP_NUM_THREADS if set,
                       else the CPUs this process may use)
  --no-graphs          do not capture CUDA graphs
  --overwrite          replace outputs already in the output folder (default: a photo whose
                       outputs exist is refused, and nothing there is replaced)
  --max-memory MB      decoded photos held at once, in MiB (default 1024)
  --exact              CPU: pre/post-processing op for op as the Python reference: masks
                       bit-identical to carseg.runtime.reference's (default: fused kernels)
  --onednn-fusion      CPU, TorchScript: oneDNN Graph fusion (faster at batch 1 and small
                       sizes, slower at larger batches and sizes; not bit-identical)
  -v, --verbose        errors in full (torch's C++ backtrace), not one line
  -h, --help           this help

example: carseg_infer infer --model artifacts --input photos/ --output out --report out/report.json
exit status: 0 all inputs ok, 1 some inputs failed (listed on stderr and in the report),
             2 bad usage, a model it cannot load or an output folder it cannot write
)";

}  // namespace

int cmd_infer(int argc, char** argv) {
  Args args(argc, argv);
  Common common;
  std::vector<fs::path> inputs;
  fs::path output;
  std::optional<fs::path> report;
  carseg::PipelineOptions opt;
  opt.workers = std::clamp(carseg::available_cpus(), 1, 8);  // --workers overrides it
  const bool run = parse_flags(args, common, "infer", kInferHelp, [&](const std::string& flag) {
    if (flag == "--input") {
      for (const auto& v : args.values(flag, /*many=*/true)) inputs.emplace_back(v);
    } else if (flag == "--output") {
      output = args.value(flag);
    } else if (flag == "--batch") {
      opt.batch = static_cast<int>(args.integer(flag, 1, 4096));
    } else if (flag == "--decode") {
      opt.gpu_decode = carseg::parse_decode(args.value(flag));
    } else if (flag == "--threshold") {
      const std::string v = args.value(flag);
      char* end = nullptr;
      const double t = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(t > 0 && t < 1)) {
        throw UsageError("--threshold: expected a number in (0, 1), got \"" + v + "\"");
      }
      common.options.threshold = t;
    } else if (flag == "--cutout") {
      const std::string m = args.value(flag);
      if (m == "none") opt.cutout.reset();
      else if (m == "white" || m == "transparent") opt.cutout = carseg::Backdrop::parse(m);
      else throw UsageError("--cutout: expected white, transparent or none, got \"" + m + "\"");
    } else if (flag == "--background") {
      opt.cutout = carseg::Backdrop::parse(args.value(flag));
    } else if (flag == "--crop") {
      opt.crop_margin = static_cast<int>(args.integer(flag, 0, 1 << 20));
    } else if (flag == "--matte") {
      opt.matte = true;
    } else if (flag == "--quality") {
      opt.jpeg_quality = static_cast<int>(args.integer(flag, 1, 100));
    } else if (flag == "--workers") {
      opt.workers = static_cast<int>(args.integer(flag, 1, 256));
    } else if (flag == "--report") {
      report = fs::path(args.value(flag));
    } else if (flag == "--overwrite") {
      opt.overwrite = true;
    } else if (flag == "--max-memory") {
      opt.max_bytes_in_flight = args.integer(flag, 16, 1 << 20) << 20;
    } else {
      return false;
    }
    return true;
  });
  if (!run) return kExitOk;
  if (common.model.empty()) throw UsageError("infer: --model is required");
  if (common.threads.size() > 1) throw UsageError("infer: --threads takes one number");
  if (inputs.empty()) throw UsageError("infer: --input is required");
  if (output.empty()) throw UsageError("infer: --output is required");
  if (opt.gpu_decode && common.options.device.rfind("cuda", 0) != 0) {
    throw UsageError("--decode gpu needs --device cuda (got --device " + common.options.device + ")");
  }
  const std::vector<fs::path> photos = carseg::collect_photos(inputs, output);
  if (photos.empty()) throw UsageError("infer: no images (.jpg .jpeg .png .gif .bmp) in the inputs");
  carseg::prepare_output_folder(output);
  // Before any work: an unwritable report must not cost a whole run.
  if (report) carseg::prepare_output_folder(report->has_parent_path() ? report->parent_path() : ".");
  if (::isatty(STDERR_FILENO)) {
    const auto t0 = std::chrono::steady_clock::now();
    opt.progress = [t0](std::size_t done, std::size_t total, std::size_t failed, bool last) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "\rcarseg_infer: %zu/%zu images, %zu failed, %.1f img/s%s", done, total,
                   failed, s > 0 ? static_cast<double>(done) / s : 0.0, last ? "\n" : "");
    };
  }

  // The report is written whatever happens from here on: a model that cannot be loaded or a
  // run that stops is a report with its error.
  std::optional<carseg::Predictor> predictor;
  carseg::PipelineReport r;
  try {
    predictor.emplace(common.load("infer"));
    const auto& rs = predictor->refine();
    std::cerr << "carseg_infer: " << predictor->device().str() << " " << carseg::to_string(predictor->precision())
              << " " << predictor->backend_name() << ", " << at::get_num_threads()
              << " threads, " << opt.workers << "+" << opt.workers << " decode+encode workers, JPEG decoding on the "
              << (opt.gpu_decode ? "GPU" : "CPU") << ", refinement "
              << (rs ? "on (radius " + std::to_string(rs->radius).substr(0, 4) + " model px)" : "off")
              << ", cutout " << (opt.cutout ? opt.cutout->describe() : "none") << "\n";
    r = carseg::Pipeline(*predictor, opt).run(photos, output);
  } catch (const std::exception& e) {
    if (report) {
      json j = {{"command", "infer"}, {"model", common.model.string()}, {"ok", false},
                {"error", e.what()}, {"inputs", photos.size()}, {"succeeded", 0}};
      write_json(*report, j);
    }
    throw;
  }
  json items = json::array(), errors = json::array();
  for (const carseg::PhotoResult& p : r.results) {
    if (p.ok) {
      items.push_back({{"input", p.input.string()}, {"ok", true}, {"width", p.width},
                       {"height", p.height}, {"mask", p.mask.string()},
                       {"foreground_fraction", p.foreground},
                       {"cutout", p.cutout.empty() ? json(nullptr) : json(p.cutout.string())},
                       {"matte", p.matte.empty() ? json(nullptr) : json(p.matte.string())}});
    } else {
      std::cerr << "carseg_infer: error: " << p.error << "\n";
      items.push_back({{"input", p.input.string()}, {"ok", false}, {"error", p.error}});
      errors.push_back({{"file", p.input.string()}, {"error", p.error}});
    }
  }
  std::cerr << "carseg_infer: " << r.succeeded() << " of " << r.results.size()
            << " images segmented in " << std::fixed << std::setprecision(2) << r.seconds << " s ("
            << std::setprecision(1) << r.images_per_second() << " img/s) -> " << output.string()
            << "\n";
  const carseg::StageSeconds& st = r.stages;
  std::cerr << "carseg_infer: busy seconds (summed over threads): decode " << std::setprecision(2)
            << st.decode << " on " << r.workers << ", model " << st.infer << " (waited " << st.infer_wait
            << " for photos, " << st.infer_blocked << " for the encoders), encode " << st.encode << " on "
            << r.workers << "\n";
  if (report) {
    json j = common.describe(*predictor);
    for (const auto& [name, seconds] : st.named()) j["stages"][name] = seconds;
    j["stages"]["workers"] = r.workers;
    j.update({{"command", "infer"}, {"ok", r.failed() == 0}, {"threshold", predictor->threshold()},
              {"batch", opt.batch}, {"decode", opt.gpu_decode ? "gpu" : "cpu"},
              {"background", opt.cutout ? json(opt.cutout->describe()) : json(nullptr)},
              {"inputs", r.results.size()}, {"succeeded", r.succeeded()}, {"failed", r.failed()},
              {"seconds", r.seconds}, {"images_per_second", r.images_per_second()},
              {"results", items}, {"errors", errors}});
    write_json(*report, j);
  }
  return r.failed() == 0 ? kExitOk : kExitSomeFailed;
}

}  // namespace carseg::cli
