#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "carseg/cutout.h"
#include "carseg/predictor.h"

namespace carseg {
namespace detail {
class GpuJpegDecoder;
}

// ---- output names: what a run writes for each photo, in every front end -----------------------

/// OUTPUT/NAME_mask.png for the photo NAME.ext.
[[nodiscard]] std::filesystem::path mask_path(const std::filesystem::path& output,
                                              const std::filesystem::path& photo);
/// OUTPUT/NAME_cutout.jpg (white) or OUTPUT/NAME_cutout.png (transparent).
[[nodiscard]] std::filesystem::path cutout_path(const std::filesystem::path& output,
                                                const std::filesystem::path& photo,
                                                Background background);
/// OUTPUT/NAME_cutout.jpg, or .png for a transparent backdrop.
[[nodiscard]] std::filesystem::path cutout_path(const std::filesystem::path& output,
                                                const std::filesystem::path& photo,
                                                const Backdrop& backdrop);
/// OUTPUT/NAME_alpha.png: the alpha matte (0..255).
[[nodiscard]] std::filesystem::path matte_path(const std::filesystem::path& output,
                                               const std::filesystem::path& photo);
/// Whether a file name is one a run writes (NAME_mask.*, NAME_cutout.*, NAME_alpha.*).
[[nodiscard]] bool is_output_name(const std::filesystem::path& path);
/// Whether the extension is one of the photos a run reads (.jpg .jpeg .png .gif .bmp).
[[nodiscard]] bool is_photo_name(const std::filesystem::path& path);

/// Files as named (a bad one gets its own error later) and the photos in folders (sorted, not
/// recursive). In a folder that is also `output`, the run's own outputs are not photos, so a
/// second run does not segment the first run's cutouts. Throws carseg::Error for a folder that
/// cannot be listed.
[[nodiscard]] std::vector<std::filesystem::path> collect_photos(
    const std::vector<std::filesystem::path>& inputs, const std::filesystem::path& output = {});

/// "cpu" -> false, "gpu" -> true (PipelineOptions::gpu_decode); throws OptionError("decode", ...)
/// on anything else.
[[nodiscard]] bool parse_decode(const std::string& s);

/// Creates `dir` if needed and proves it writable, before any slow step; throws carseg::Error.
void prepare_output_folder(const std::filesystem::path& dir);

// ---- the folder pipeline --------------------------------------------------------------------

struct PipelineOptions {
  int batch = 8;    // photos per forward pass
  int workers = 2;  // decode threads, and as many encode threads
  std::optional<Backdrop> cutout = Backdrop();  // white by default; nullopt: masks only
  bool matte = false;    // also write NAME_alpha.png, the alpha matte
  int crop_margin = -1;  // >= 0: crop the cutout to the car's box grown by this many pixels
  int jpeg_quality = 95;
  bool write = true;  // false: encode in memory only, write nothing (benchmarks)
  /// false: a photo whose output names are taken is refused, and nothing already in the output
  /// folder is ever replaced; true: outputs replace what is there.
  bool overwrite = false;
  /// Bytes of decoded photos (and their masks) held at once, however many photos are queued.
  std::int64_t max_bytes_in_flight = 1LL << 30;
  std::int64_t max_pixels = kDefaultMaxPixels;  // per photo
  /// CUDA predictors: the decode workers decode JPEG photos on the GPU (nvJPEG,
  /// detail/gpu_jpeg.h; each worker its own nvJPEG state and CUDA stream), and the model reads
  /// them there in place. Other formats, CMYK JPEGs, JPEGs cut short, and any JPEG nvJPEG
  /// refuses (which then gets the CPU decoder's verdict) are decoded on the CPU. A photo whose
  /// cutout is wanted is copied back to the CPU for compositing and encoding.
  bool gpu_decode = false;
  /// Called on the inferring thread after each batch and once at the end (last = true).
  std::function<void(std::size_t done, std::size_t total, std::size_t failed, bool last)> progress;
};

/// What happened to one photo.
struct PhotoResult {
  std::filesystem::path input;
  bool ok = false;
  std::string error;  // "<file>: <reason>" when !ok
  int width = 0;
  int height = 0;
  std::filesystem::path mask;    // written (or, with write = false, encoded) output
  std::filesystem::path cutout;  // empty when PipelineOptions::cutout is nullopt
  std::filesystem::path matte;   // empty unless PipelineOptions::matte
  double foreground = 0;         // share of the photo's pixels that are car
};

/// Where a run's time went, in seconds summed over the threads of each stage: reading and
/// decoding (decode workers), the model and, on CUDA, the matte (the calling thread), matte on
/// the CPU, encoding and writing (encode workers); and how long the model's thread waited for
/// decoded photos (infer_wait) and for room in the encoders' queue (infer_blocked). A run
/// whose infer_wait is most of its time is bound by decoding; by encoding, infer_blocked.
struct StageSeconds {
  double decode = 0;
  double infer = 0;
  double infer_wait = 0;
  double infer_blocked = 0;
  double encode = 0;
  /// The stages under the names every report uses ("decode_s", ...), in this order.
  [[nodiscard]] std::vector<std::pair<std::string, double>> named() const {
    return {{"decode_s", decode}, {"infer_s", infer}, {"infer_wait_s", infer_wait},
            {"infer_blocked_s", infer_blocked}, {"encode_s", encode}};
  }
};

struct PipelineReport {
  std::vector<PhotoResult> results;  // in the order of the inputs
  double seconds = 0;
  StageSeconds stages;
  int workers = 0;  // decode workers, and as many encode workers
  [[nodiscard]] std::size_t succeeded() const;
  [[nodiscard]] std::size_t failed() const { return results.size() - succeeded(); }
  [[nodiscard]] double images_per_second() const;
};

/// Photos in, a mask (and a cutout) per photo out, at the photo's own resolution: decoding on
/// worker threads, inference in batches on the calling thread, encoding and writing on worker
/// threads, all overlapped. Bounded queues and a recycled pool of pixel buffers keep memory
/// flat however many photos there are (max_bytes_in_flight). Each output is written under a
/// temporary name and renamed, so a file that exists is whole. A photo that cannot be read,
/// predicted or written is that photo's error; the others go on. Refused before anything of it
/// is written: a photo whose name (stem) repeats an earlier one's (its outputs would overwrite
/// that one's), one whose outputs exist (unless overwrite), one too large for a JPEG cutout.
class Pipeline {
 public:
  Pipeline(const Predictor& predictor, PipelineOptions options);
  ~Pipeline();
  Pipeline(Pipeline&&) noexcept;
  /// Throws carseg::Error only when `output` cannot be created or written (write = true).
  [[nodiscard]] PipelineReport run(const std::vector<std::filesystem::path>& photos,
                                   const std::filesystem::path& output) const;
  [[nodiscard]] const PipelineOptions& options() const { return options_; }

 private:
  const Predictor& predictor_;
  PipelineOptions options_;
  std::unique_ptr<const detail::GpuJpegDecoder> gpu_jpeg_;  // with options.gpu_decode
};

}  // namespace carseg
