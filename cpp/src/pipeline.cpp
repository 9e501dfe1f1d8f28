#include "carseg/pipeline.h"

#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "detail/gpu_jpeg.h"
#include "detail/queues.h"

namespace carseg {
namespace fs = std::filesystem;

namespace {

std::string lower_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string message_for(const fs::path& input, const std::exception& e) {
  const std::string what = e.what();
  const std::string name = input.string();
  return what.rfind(name, 0) == 0 ? what : name + ": " + what;
}

bool same_folder(const fs::path& a, const fs::path& b) {
  if (b.empty()) return false;
  std::error_code ec;
  return fs::equivalent(a, b, ec);
}

// A decoded photo on its way through the stages, and the bytes it holds of the budget.
struct Item {
  std::size_t index = 0;
  Image image;             // without pixels when the photo was decoded on the GPU
  torch::Tensor on_gpu;    // uint8 [H, W, 3] on the device (gpu_decode)
  torch::Tensor pinned;    // uint8 [H, W, 3] in pinned memory: the photo for a CUDA predictor,
                           // copied there by its decode worker, uploaded with no copy on the
                           // model's thread
  Matte matte;
  torch::Tensor logits;  // the model's, when the matte is made on an encode thread (CPU)
  std::int64_t reserved = 0;
};

// Whether a JPEG file ends with its end-of-image marker. One cut short goes to the CPU decoder,
// which says what is wrong with it; nvJPEG may decode what it has without a word.
bool ends_whole(const std::vector<std::uint8_t>& jpeg) {
  return jpeg.size() >= 4 && jpeg[jpeg.size() - 2] == 0xFF && jpeg[jpeg.size() - 1] == 0xD9;
}

bool name_taken(const fs::path& p) {  // by anything, a dangling link included
  std::error_code ec;
  return fs::symlink_status(p, ec).type() != fs::file_type::not_found && !ec;
}

}  // namespace

fs::path mask_path(const fs::path& output, const fs::path& photo) {
  return output / (photo.stem().string() + "_mask.png");
}

fs::path cutout_path(const fs::path& output, const fs::path& photo, Background background) {
  return output / (photo.stem().string() + "_cutout" + cutout_suffix(background));
}

fs::path cutout_path(const fs::path& output, const fs::path& photo, const Backdrop& backdrop) {
  return output / (photo.stem().string() + "_cutout" + backdrop.suffix());
}

fs::path matte_path(const fs::path& output, const fs::path& photo) {
  return output / (photo.stem().string() + "_alpha.png");
}

bool is_output_name(const fs::path& path) {
  const std::string stem = path.stem().string();
  return ends_with(stem, "_mask") || ends_with(stem, "_cutout") || ends_with(stem, "_alpha");
}

bool is_photo_name(const fs::path& path) {
  const std::string ext = lower_extension(path);
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".gif" || ext == ".bmp";
}

std::vector<fs::path> collect_photos(const std::vector<fs::path>& inputs, const fs::path& output) {
  std::vector<fs::path> out;
  for (const fs::path& p : inputs) {
    std::error_code ec;
    if (!fs::is_directory(p, ec)) {
      out.push_back(p);
      continue;
    }
    const bool ours = same_folder(p, output);
    std::vector<fs::path> found;
    for (const auto& entry : fs::directory_iterator(p, ec)) {
      const fs::path& f = entry.path();
      if (entry.is_regular_file(ec) && is_photo_name(f) && !(ours && is_output_name(f))) {
        found.push_back(f);
      }
    }
    if (ec) throw Error(p.string(), "cannot list the folder: " + ec.message());
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

bool parse_decode(const std::string& s) {
  if (s != "cpu" && s != "gpu") throw OptionError("decode", "expected cpu or gpu, got \"" + s + "\"");
  return s == "gpu";
}

void prepare_output_folder(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    throw Error(dir.string(), "cannot create the output folder: " +
                                  (ec ? ec.message() : std::string("a file is in the way")));
  }
  const fs::path probe = dir / ".carseg_write_probe";
  try {
    write_file_atomic(probe, {});
  } catch (const Error& e) {
    throw Error(dir.string(), "cannot write to the output folder: " + e.reason());
  }
  fs::remove(probe, ec);
}

std::size_t PipelineReport::succeeded() const {
  return static_cast<std::size_t>(
      std::count_if(results.begin(), results.end(), [](const PhotoResult& r) { return r.ok; }));
}

double PipelineReport::images_per_second() const {
  return seconds > 0 ? static_cast<double>(succeeded()) / seconds : 0.0;
}

Pipeline::Pipeline(const Predictor& predictor, PipelineOptions options)
    : predictor_(predictor), options_(std::move(options)) {
  if (options_.batch < 1) throw OptionError("batch", "expected at least 1, got " + std::to_string(options_.batch));
  if (options_.workers < 1) {
    throw OptionError("workers", "expected at least 1, got " + std::to_string(options_.workers));
  }
  if (options_.jpeg_quality < 1 || options_.jpeg_quality > 100) {
    throw OptionError("jpeg_quality", "expected 1 to 100, got " + std::to_string(options_.jpeg_quality));
  }
  if (options_.gpu_decode) gpu_jpeg_ = std::make_unique<detail::GpuJpegDecoder>(predictor_.device());
}

Pipeline::~Pipeline() = default;
Pipeline::Pipeline(Pipeline&&) noexcept = default;

// Decode on worker threads, infer in batches on this thread, encode on worker threads; the
// bounded queues keep memory flat while the three stages overlap.
PipelineReport Pipeline::run(const std::vector<fs::path>& photos, const fs::path& output) const {
  const PipelineOptions& opt = options_;
  if (opt.write) prepare_output_folder(output);
  const auto start = std::chrono::steady_clock::now();
  const std::size_t n = photos.size();
  PipelineReport report;
  report.results.resize(n);

  // Two photos with one stem (a.jpg, a.png) would write the same a_mask.png: the later one is
  // refused, by name, instead of silently overwriting the first one's results.
  std::vector<std::string> refused(n);
  std::map<std::string, fs::path> seen;
  for (std::size_t i = 0; i < n; ++i) {
    report.results[i].input = photos[i];
    const auto [it, fresh] = seen.emplace(photos[i].stem().string(), photos[i]);
    if (!fresh) {
      refused[i] = photos[i].string() + ": same name as " + it->second.string() +
                   "; its outputs would overwrite that one's";
    }
  }

  const auto batch = static_cast<std::size_t>(opt.batch);
  detail::BoundedQueue<Item> decoded(batch * 2);
  detail::BoundedQueue<Item> inferred(batch * 2);
  detail::BufferPool buffers(static_cast<std::size_t>(opt.workers) * 2);
  detail::ByteBudget budget(opt.max_bytes_in_flight);
  std::atomic<std::size_t> next{0}, finished{0}, failed{0};
  std::atomic<int> decoders_left{opt.workers};
  // Busy time per stage, in nanoseconds summed over its threads (PipelineReport::stages).
  std::atomic<std::int64_t> decode_ns{0}, encode_ns{0};
  std::int64_t infer_ns = 0, infer_wait_ns = 0, infer_blocked_ns = 0;
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t0) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
  };

  auto fail = [&](std::size_t i, const std::exception& e) {
    report.results[i].ok = false;
    report.results[i].error = message_for(photos[i], e);
    ++failed;
    ++finished;
  };

  // Everything that refuses a photo is checked before any byte of it is decoded or written.
  auto refuse_early = [&](std::size_t i, const ImageInfo& info) {
    const std::string name = photos[i].string();
    if (opt.cutout && !opt.cutout->transparent() && std::max(info.width, info.height) > kMaxJpegSide) {
      throw Error(name, "is " + std::to_string(info.width) + "x" + std::to_string(info.height) +
                            ": too large for a JPEG cutout (JPEG's sides are at most " +
                            std::to_string(kMaxJpegSide) + " pixels); use a transparent (PNG) cutout");
    }
    if (opt.write && !opt.overwrite) {
      for (const fs::path& out : {mask_path(output, photos[i]),
                                  opt.cutout ? cutout_path(output, photos[i], *opt.cutout) : fs::path(),
                                  opt.matte ? matte_path(output, photos[i]) : fs::path()}) {
        if (!out.empty() && name_taken(out)) {
          throw Error(name, out.string() + " exists, and this run did not write it; not "
                                           "replaced (remove it, write elsewhere, or overwrite)");
        }
      }
    }
  };

  const bool stage_pinned = predictor_.device().is_cuda();
  auto decode = [&] {
    std::optional<detail::GpuJpegDecoder::Session> gpu;
    if (gpu_jpeg_) {
      try {
        gpu.emplace(*gpu_jpeg_);
      } catch (const std::exception& e) {  // this worker decodes on the CPU
        std::fprintf(stderr, "carseg: GPU decoding off on one worker: %s\n", e.what());
      }
    }
    for (std::size_t i; (i = next++) < n;) {
      std::int64_t reserved = 0;
      try {
        if (!refused[i].empty()) throw std::runtime_error(refused[i]);
        auto t0 = Clock::now();
        const std::vector<std::uint8_t> bytes = read_file(photos[i]);
        const ImageInfo info = peek_image(bytes, photos[i].string(), opt.max_pixels);
        refuse_early(i, info);
        decode_ns += since(t0);
        // The photo's pixels, its mask and its matte: 5 bytes a pixel, reserved before decoding;
        // 3 more for a CUDA predictor's pinned copy.
        const std::int64_t need = (stage_pinned ? 8LL : 5LL) * info.width * info.height;
        if (!budget.acquire(need)) return;  // the run was abandoned
        reserved = need;
        Item item;
        item.index = i;
        item.reserved = need;
        t0 = Clock::now();
        if (gpu && info.format == "jpeg" && !info.cmyk && ends_whole(bytes)) {
          try {
            item.on_gpu = gpu->decode(bytes, info.width, info.height, photos[i].string());
            item.image.width = info.width;
            item.image.height = info.height;
          } catch (const std::exception&) {  // refused: the CPU decoder's verdict instead
          }
        }
        if (!item.on_gpu.defined()) {
          item.image = decode_image(bytes, photos[i].string(), opt.max_pixels, buffers.take());
          if (stage_pinned) {
            item.pinned = torch::empty({item.image.height, item.image.width, 3},
                                       torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
            std::memcpy(item.pinned.data_ptr(), item.image.pixels.data(), item.image.pixels.size());
          }
        }
        decode_ns += since(t0);
        reserved = 0;  // the item carries it now
        if (!decoded.push(std::move(item))) return;  // the run was abandoned
      } catch (const std::exception& e) {
        if (reserved) budget.release(reserved);
        fail(i, e);
      }
    }
    if (--decoders_left == 0) decoded.close();
  };

  auto encode = [&] {
    for (;;) {
      std::vector<Item> items = inferred.pop_up_to(1);
      if (items.empty()) return;
      Item& item = items[0];
      const std::size_t i = item.index;
      const auto t0 = Clock::now();
      try {
        if (item.on_gpu.defined()) {  // decoded on the GPU: the photo back for the cutout, here
          Image& im = item.image;     // (a copy per photo, spread over the encode workers)
          im.pixels = buffers.take();
          im.pixels.resize(static_cast<std::size_t>(im.width) * im.height * 3);
          torch::from_blob(im.pixels.data(), {im.height, im.width, 3}, torch::kUInt8).copy_(item.on_gpu);
          item.on_gpu = torch::Tensor();
        }
        if (item.logits.defined()) {  // refinement and resizing here, beside the next forward pass
          const torch::Tensor photo = torch::from_blob(item.image.pixels.data(),
                                                       {item.image.height, item.image.width, 3}, torch::kUInt8);
          item.matte = predictor_.matte_from_logits(item.logits, photo);
          item.logits = torch::Tensor();
        }
        const torch::Tensor mask = item.matte.mask.contiguous();
        const torch::Tensor alpha = item.matte.alpha.contiguous();
        const auto* m = mask.data_ptr<std::uint8_t>();
        const auto* a = alpha.data_ptr<std::uint8_t>();
        PhotoResult& r = report.results[i];
        r.width = item.image.width;
        r.height = item.image.height;
        const auto car = std::count_if(m, m + mask.numel(), [](std::uint8_t v) { return v != 0; });
        r.foreground = static_cast<double>(car) / static_cast<double>(std::max<int64_t>(1, mask.numel()));
        r.mask = mask_path(output, photos[i]);
        // Everything is encoded before anything is written.
        const std::vector<std::uint8_t> png = encode_mask_png(m, r.width, r.height);
        std::vector<std::uint8_t> matte_png, cut;
        if (opt.matte) {
          r.matte = matte_path(output, photos[i]);
          matte_png = encode_png(a, r.width, r.height, 1);
        }
        if (opt.cutout) {
          r.cutout = cutout_path(output, photos[i], *opt.cutout);
          const Rect rect = opt.crop_margin >= 0 ? crop_box(a, r.width, r.height, opt.crop_margin)
                                                 : Rect{0, 0, r.width, r.height};
          // Last use of the photo: a JPEG cutout is painted into its own pixels.
          cut = encode_matte_cutout(item.image, a, item.matte.fit.get(), *opt.cutout, rect,
                                    opt.jpeg_quality, /*in_place=*/true);
        }
        if (opt.write) {
          write_file_atomic(r.mask, png, opt.overwrite);
          if (opt.matte) write_file_atomic(r.matte, matte_png, opt.overwrite);
          if (opt.cutout) write_file_atomic(r.cutout, cut, opt.overwrite);
        }
        buffers.give(std::move(item.image.pixels));
        budget.release(item.reserved);
        r.ok = true;
        ++finished;
      } catch (const std::exception& e) {
        budget.release(item.reserved);
        fail(i, e);
      }
      encode_ns += since(t0);
    }
  };

  std::vector<std::thread> threads;
  // Whatever leaves this function (a throw included), the workers are told to stop and are
  // joined: a joinable std::thread at destruction would terminate the process.
  struct Joiner {
    detail::BoundedQueue<Item>& decoded;
    detail::BoundedQueue<Item>& inferred;
    detail::ByteBudget& budget;
    std::vector<std::thread>& threads;
    ~Joiner() {
      decoded.close();
      inferred.close();
      budget.close();
      for (auto& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } joiner{decoded, inferred, budget, threads};
  for (int w = 0; w < opt.workers; ++w) threads.emplace_back(decode);
  for (int w = 0; w < opt.workers; ++w) threads.emplace_back(encode);

  for (;;) {
    auto t0 = Clock::now();
    std::vector<Item> items = decoded.pop_up_to(batch);
    infer_wait_ns += since(t0);
    if (items.empty()) break;
    t0 = Clock::now();
    std::vector<torch::Tensor> images;
    images.reserve(items.size());
    for (Item& it : items) {
      images.push_back(it.on_gpu.defined()   ? it.on_gpu
                       : it.pinned.defined() ? it.pinned
                                             : torch::from_blob(it.image.pixels.data(),
                                                                {it.image.height, it.image.width, 3}, torch::kUInt8));
    }
    try {
      // On the CPU the matte (resize, refinement) is made on the encode threads, so that it
      // overlaps the next batch's forward pass; on CUDA it is made here, on the device.
      std::vector<Matte> mattes;
      std::vector<torch::Tensor> logits;
      if (predictor_.device().is_cpu()) {
        logits = predictor_.predict_model_logits(images);
      } else {
        mattes = predictor_.predict_mattes(images);
      }
      for (std::size_t k = 0; k < items.size(); ++k) {
        if (logits.empty()) {
          items[k].matte = std::move(mattes[k]);
        } else {
          items[k].logits = std::move(logits[k]);
        }
        // The cutout is composited on the CPU: a photo decoded on the GPU goes back there on an
        // encode worker; without a cutout it is not needed. The pinned copy has been read.
        if (!opt.cutout) items[k].on_gpu = torch::Tensor();
        items[k].pinned = torch::Tensor();
      }
      infer_ns += since(t0);
      t0 = Clock::now();
      for (Item& it : items) inferred.push(std::move(it));
      infer_blocked_ns += since(t0);
    } catch (const std::exception& e) {
      infer_ns += since(t0);
      for (const Item& it : items) {
        budget.release(it.reserved);
        fail(it.index, e);
      }
    }
    if (opt.progress) opt.progress(finished.load(), n, failed.load(), false);
  }
  inferred.close();
  for (auto& t : threads) t.join();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.workers = opt.workers;
  auto secs = [](std::int64_t ns) { return static_cast<double>(ns) * 1e-9; };
  report.stages = {secs(decode_ns.load()), secs(infer_ns), secs(infer_wait_ns), secs(infer_blocked_ns),
                   secs(encode_ns.load())};
  if (opt.progress) opt.progress(finished.load(), n, failed.load(), true);
  return report;
}

}  // namespace carseg
