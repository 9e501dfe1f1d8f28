// carseg._native: carseg::Predictor for Python. Converts, calls the core, converts back; the
// core does the work (and all checks beyond the type, dtype and shape of what Python hands in).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>  // torch::Tensor <-> torch.Tensor caster
#include <torch/csrc/utils/tensor_numpy.h>

#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "carseg/cutout.h"
#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/pipeline.h"
#include "carseg/predictor.h"

namespace py = pybind11;

namespace {

constexpr const char* kExpected = "image: expected uint8 [H, W, 3]";

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream ss;
  ss << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) ss << (i ? ", " : "") << shape[i];
  ss << ']';
  return ss.str();
}

// An image from Python: the tensor the core sees, and whether to hand numpy back.
struct Image {
  torch::Tensor tensor;
  bool numpy = false;
};

void check_layout(const std::string& dtype, const std::vector<int64_t>& shape) {
  const bool ok = dtype == "uint8" && shape.size() == 3 && shape[2] == 3;
  if (!ok) throw py::value_error(std::string(kExpected) + ", got " + dtype + " " + shape_text(shape));
  if (shape[0] < 1 || shape[1] < 1) {
    throw py::value_error(std::string(kExpected) + " with H, W >= 1, got an empty image " +
                          shape_text(shape));
  }
}

// numpy: dtype and shape checked here, then torch.from_numpy semantics (shares the buffer).
// torch.Tensor: any device and strides; shared as is.
Image to_image(const py::handle& obj) {
  if (THPVariable_Check(obj.ptr())) {
    torch::Tensor t = THPVariable_Unpack(obj.ptr());
    std::string dtype = py::str(obj.attr("dtype"));
    if (dtype.rfind("torch.", 0) == 0) dtype = dtype.substr(6);
    check_layout(dtype, t.sizes().vec());
    return {std::move(t), false};
  }
  if (py::isinstance<py::array>(obj)) {
    const auto a = py::reinterpret_borrow<py::array>(obj);
    const std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
    check_layout(py::str(a.dtype()), shape);
    if (!(a.flags() & py::array::c_style)) {
      std::vector<int64_t> strides(a.strides(), a.strides() + a.ndim());
      throw py::value_error(std::string(kExpected) + " C-contiguous (np.ascontiguousarray), got " +
                            "strides " + shape_text(strides));
    }
    // The core only reads the pixels: no warning for a read-only array.
    return {torch::utils::tensor_from_numpy(obj.ptr(), /*warn_if_not_writeable=*/false), true};
  }
  throw py::type_error("image: expected a numpy.ndarray or a torch.Tensor, got " +
                       std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
}

// numpy: the CPU tensor's memory shared as an array. Otherwise the tensor, where the core put it
// (the CPU, or the predictor's device when asked); one made under the core's InferenceMode is
// cloned (a mask: cheap; on CUDA, on the caller's stream, which the core has ordered after its
// own) so that callers may modify it in place like any other tensor.
py::object from_tensor(const torch::Tensor& t, bool numpy) {
  if (numpy) return py::reinterpret_steal<py::object>(torch::utils::tensor_to_numpy(t));
  return py::cast(t.is_inference() ? t.clone() : t);
}

std::vector<torch::Tensor> tensors_of(const std::vector<Image>& images) {
  std::vector<torch::Tensor> out;
  out.reserve(images.size());
  for (const auto& im : images) out.push_back(im.tensor);
  return out;
}

carseg::Output output_of(bool on_device) { return on_device ? carseg::Output::kDevice : carseg::Output::kCpu; }

// One image in: converted, `f(tensor, output)` run on the core without the GIL, the result
// converted back (numpy in, numpy out; on_device: a tensor on the predictor's device).
template <class F>
py::object on_image(const py::handle& image, bool on_device, F&& f) {
  const Image im = to_image(image);
  torch::Tensor out;
  {
    py::gil_scoped_release release;
    out = f(im.tensor, output_of(on_device));
  }
  return from_tensor(out, im.numpy && !on_device);
}

std::unique_ptr<carseg::Predictor> make_predictor(const std::filesystem::path& model_dir,
                                                  const std::string& device,
                                                  const std::string& precision,
                                                  std::optional<double> threshold,
                                                  const std::string& backend, bool cuda_graphs,
                                                  bool exact, bool onednn_fusion, bool refine,
                                                  std::optional<double> softness) {
  carseg::PredictorOptions options;
  options.refine = refine;
  options.softness = softness;
  options.exact = exact;
  options.onednn_fusion = onednn_fusion;
  options.device = device;
  options.precision = carseg::parse_precision(precision);
  options.threshold = threshold;
  options.backend = carseg::parse_backend(backend);
  options.use_cuda_graphs = cuda_graphs;
  py::gil_scoped_release release;  // loading, hashing and warming up the model take a while
  return std::make_unique<carseg::Predictor>(model_dir, options);
}

constexpr const char* kPredictorDoc = R"(An exported artifact folder run by the C++ core (libcarseg).

Images are uint8 [H, W, 3] RGB: a C-contiguous numpy array (shared, not copied) or a torch
tensor on any device with any strides (shared; a CUDA tensor is read where it is, after the work
queued on the current CUDA stream). Numpy in gives numpy out; a tensor in gives a CPU tensor out.
on_device=True (predict, predict_proba, predict_batch, predict_matte): torch tensors left on the
predictor's device instead (CUDA masks from a CUDA predictor, no copy back), ready for work
queued next on the current CUDA stream. Wrong type: TypeError; wrong dtype, shape or an empty image: ValueError; what
the core refuses (a bad model folder, sha256 mismatch, CUDA asked for and absent, an image over
80 million pixels): CarsegError (a carseg.CarsegError, a RuntimeError).

Thread safety: the GIL is released while the core works, and one Predictor may be called from
several threads at once. The model's forward pass runs one at a time (on CUDA the whole call
does); on the CPU one call's resize/normalize and resize-back/threshold overlap another call's
forward pass. Do not modify an input array from another thread while a call reads it.
)";

std::unique_ptr<carseg::Pipeline> make_pipeline(const carseg::Predictor& predictor, int batch,
                                                int workers, const std::optional<std::string>& cutout,
                                                int jpeg_quality, bool overwrite,
                                                std::int64_t max_bytes_in_flight,
                                                const py::object& progress, bool matte,
                                                std::optional<int> crop, const std::string& decode) {
  carseg::PipelineOptions options;
  options.batch = batch;
  options.workers = workers;
  options.overwrite = overwrite;
  options.max_bytes_in_flight = max_bytes_in_flight;
  options.cutout.reset();
  if (cutout) options.cutout = carseg::Backdrop::parse(*cutout);
  options.jpeg_quality = jpeg_quality;
  options.matte = matte;
  options.gpu_decode = carseg::parse_decode(decode);
  if (crop) {
    if (*crop < 0) throw carseg::OptionError("crop", "expected a margin >= 0 pixels, got " + std::to_string(*crop));
    options.crop_margin = *crop;
  }
  if (!progress.is_none()) {
    // Called on the thread that runs the pipeline, which has released the GIL. A display must
    // not stop the run: what the callback raises is reported by Python and dropped.
    options.progress = [progress](std::size_t done, std::size_t total, std::size_t failed, bool last) {
      py::gil_scoped_acquire gil;
      try {
        progress(done, total, failed, last);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("carseg pipeline progress callback");
      }
    };
  }
  return std::make_unique<carseg::Pipeline>(predictor, std::move(options));
}

// carseg.CarsegError's type object, kept alive by the module's attribute.
PyObject* carseg_error_type = nullptr;

// A str from bytes the way Python names files (os.fsdecode): a file name need not be UTF-8,
// and one that is not comes back as the same str that named it (surrogateescape).
py::str fs_str(const std::string& bytes) {
  return py::reinterpret_steal<py::str>(
      PyUnicode_DecodeFSDefaultAndSize(bytes.data(), static_cast<Py_ssize_t>(bytes.size())));
}

py::dict report_dict(const carseg::PipelineReport& report) {
  auto path_or_none = [](const std::filesystem::path& p) -> py::object {
    return p.empty() ? py::none() : py::object(fs_str(p.string()));
  };
  py::list results;
  for (const carseg::PhotoResult& r : report.results) {
    py::dict d;
    d["input"] = fs_str(r.input.string());
    d["ok"] = r.ok;
    d["error"] = fs_str(r.error);
    d["width"] = r.width;
    d["height"] = r.height;
    d["mask"] = path_or_none(r.mask);
    d["cutout"] = path_or_none(r.cutout);
    d["matte"] = path_or_none(r.matte);
    d["foreground"] = r.foreground;
    results.append(d);
  }
  py::dict out;
  out["results"] = results;
  out["seconds"] = report.seconds;
  out["succeeded"] = report.succeeded();
  out["failed"] = report.failed();
  py::dict stages;
  for (const auto& [name, seconds] : report.stages.named()) stages[py::str(name)] = seconds;
  stages["workers"] = report.workers;
  out["stages"] = stages;
  return out;
}

constexpr const char* kPipelineDoc = R"(libcarseg's folder pipeline over a Predictor: what carseg_infer runs.

Photos are decoded on worker threads, predicted in batches, and their mask (NAME_mask.png) and
cutout (NAME_cutout.jpg on white, NAME_cutout.png transparent, or none) encoded and written on
worker threads, all overlapped, each file under a temporary name and then renamed. A photo that
fails is that photo's error; the others go on.
)";

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "carseg's C++ core (libcarseg) for Python; use it as carseg.Predictor.";
  // torch's Python types must exist before its caster and numpy bridge are used.
  py::module_::import("torch");

  const py::object base = py::module_::import("carseg.errors").attr("CarsegError");
  carseg_error_type = py::register_local_exception<carseg::Error>(m, "CarsegError", base).ptr();
  // Registered after pybind11's own translator, so tried before it: the message decoded as
  // Python decodes file names, so that an error naming a file whose name is not UTF-8 is still
  // that error (a UTF-8 decode would fail on it).
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const carseg::Error& e) {
      PyErr_SetObject(carseg_error_type, fs_str(e.what()).ptr());
    }
  });
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::Error& e) {  // the message without the C++ backtrace
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });

  m.attr("MAX_PIXELS") = carseg::kDefaultMaxPixels;
  m.def("cuda_available", &carseg::cuda_available,
        "Whether this process can use a CUDA device (False on a CPU-only build or machine).");

  py::class_<carseg::Predictor>(m, "Predictor", kPredictorDoc)
      .def(py::init(&make_predictor), py::arg("model_dir"), py::arg("device") = "cpu", py::arg("precision") = "auto",
           py::arg("threshold") = py::none(), py::arg("backend") = "auto",
           py::arg("cuda_graphs") = true, py::kw_only(), py::arg("exact") = true,
           py::arg("onednn_fusion") = false, py::arg("refine") = true, py::arg("softness") = py::none(),
           R"(Load model_dir (manifest.json + model file), check its sha256 and warm it up.

device "cpu", "cuda" or "cuda:N"; precision "auto" (int8 on the CPU where the manifest has an
int8 model that passed verify, else fp32; the property precision says which), "fp32", "fp16"
(CUDA only) or "int8" (CPU, ONNX Runtime on model.int8.onnx); threshold in (0, 1)
overrides the manifest's; backend "auto", "torchscript", "aoti" or "onnx" (ONNX Runtime, CPU
only); cuda_graphs: capture and replay a CUDA graph per batch shape (CUDA only). exact=False (CPU): fused pre/post-processing
kernels, faster, masks may differ from the op-for-op reference where a logit is within float
rounding of the threshold. onednn_fusion=True (CPU, TorchScript): oneDNN Graph fusion, faster
at batch 1; it is process-wide and stays on for every TorchScript module in the process.
refine=False: the model's mask resized, without the manifest's full-resolution refinement
(output.refine); softness in (0, 1] overrides the refinement's soft-edge width.)")
      .def(
          "predict",
          [](const carseg::Predictor& self, const py::handle& image, bool on_device) {
            return on_image(image, on_device,
                            [&](const torch::Tensor& t, carseg::Output o) { return self.predict(t, o); });
          },
          py::arg("image"), py::kw_only(), py::arg("on_device") = false,
          "uint8 [H, W, 3] RGB -> uint8 mask [H, W] in {0, 1}; on_device=True: a tensor on the "
          "predictor's device.")
      .def(
          "predict_proba",
          [](const carseg::Predictor& self, const py::handle& image, bool on_device) {
            return on_image(image, on_device, [&](const torch::Tensor& t, carseg::Output o) {
              return self.predict_probabilities({t}, o)[0];
            });
          },
          py::arg("image"), py::kw_only(), py::arg("on_device") = false,
          "uint8 [H, W, 3] RGB -> float32 [H, W] car probability (sigmoid of the logits); "
          "predict is proba > threshold.")
      .def(
          "predict_batch",
          [](const carseg::Predictor& self, const py::sequence& images, bool on_device) {
            std::vector<Image> ims;
            ims.reserve(images.size());
            for (std::size_t i = 0; i < images.size(); ++i) {
              const py::object item = images[i];
              ims.push_back(to_image(item));
            }
            const std::vector<torch::Tensor> in = tensors_of(ims);
            std::vector<torch::Tensor> masks;
            {
              py::gil_scoped_release release;
              masks = self.predict_batch(in, output_of(on_device));
            }
            py::list out;
            for (std::size_t i = 0; i < masks.size(); ++i) {
              out.append(from_tensor(masks[i], ims[i].numpy && !on_device));
            }
            return out;
          },
          py::arg("images"), py::kw_only(), py::arg("on_device") = false,
          "A list of images of any sizes, run as one batch -> a list of masks, each at its "
          "image's size.")
      .def(
          "predict_matte",
          [](const carseg::Predictor& self, const py::handle& image, bool on_device) {
            const Image im = to_image(image);
            carseg::Matte m;
            {
              py::gil_scoped_release release;
              m = self.predict_mattes({im.tensor}, true, output_of(on_device))[0];
            }
            const bool numpy = im.numpy && !on_device;
            return py::make_tuple(from_tensor(m.mask, numpy), from_tensor(m.alpha, numpy));
          },
          py::arg("image"), py::kw_only(), py::arg("on_device") = false,
          "uint8 [H, W, 3] RGB -> (mask uint8 [H, W] in {0, 1}, alpha uint8 [H, W] in 0..255): "
          "the refinement's soft matte (without refinement, mask * 255).")
      .def(
          "render",
          [](const carseg::Predictor& self, const py::handle& image, const std::optional<std::string>& background,
             std::optional<int> crop, bool refine) {
            std::optional<carseg::Backdrop> bd;
            if (background) bd = carseg::Backdrop::parse(*background);
            if (crop && *crop < 0) throw carseg::OptionError("crop", "expected a margin >= 0 pixels, got " + std::to_string(*crop));
            const Image im = to_image(image);
            carseg::Matte m;
            torch::Tensor cut;
            {
              py::gil_scoped_release release;
              m = self.predict_mattes({im.tensor}, refine)[0];
              if (bd) {
                carseg::Rect rect;
                if (crop) {
                  rect = carseg::crop_box(m.alpha.contiguous().data_ptr<std::uint8_t>(),
                                          static_cast<int>(im.tensor.size(1)), static_cast<int>(im.tensor.size(0)), *crop);
                }
                cut = carseg::composite_matte(im.tensor, m, *bd, rect);
              }
            }
            py::dict d;
            d["mask"] = from_tensor(m.mask, true);
            d["alpha"] = from_tensor(m.alpha, true);
            d["cutout"] = bd ? from_tensor(cut, true) : py::object(py::none());
            return d;
          },
          py::arg("image"), py::arg("background") = "white", py::kw_only(), py::arg("crop") = py::none(),
          py::arg("refine") = true,
          R"(Everything a front end writes for one photo, from one forward pass: {"mask": uint8 [H, W]
in {0, 1}, "alpha": uint8 [H, W] 0..255, "cutout": uint8 [h, w, 3 or 4] or None} as numpy arrays.
background: white, transparent, #RRGGBB, an image file's path, or None (no cutout); crop=MARGIN:
the cutout cropped to the car's box grown by MARGIN pixels; refine=False: this call without the
refinement.)")
      .def(
          "cutout",
          [](const carseg::Predictor& self, const py::handle& image, const std::string& background,
             std::optional<int> crop) {
            const carseg::Backdrop bd = carseg::Backdrop::parse(background);
            if (crop && *crop < 0) throw carseg::OptionError("crop", "expected a margin >= 0 pixels, got " + std::to_string(*crop));
            return on_image(image, false, [&](const torch::Tensor& t, carseg::Output) {
              return self.cutout(t, bd, crop.value_or(-1));
            });
          },
          py::arg("image"), py::arg("background") = "white", py::kw_only(), py::arg("crop") = py::none(),
          R"(The photo with its background removed, at the photo's size (or cropped).

background "white", "#RRGGBB" or an image file's path: uint8 [H, W, 3], the car over it with the
refinement's soft, decontaminated edge; "transparent": uint8 [H, W, 4] RGBA with the alpha
matte. crop=MARGIN: only the car's box grown by MARGIN pixels a side.)")
      .def_property_readonly("input_size", &carseg::Predictor::input_size,
                             "Side of the square the model sees (pixels).")
      .def_property_readonly(
          "arch", [](const carseg::Predictor& self) { return self.manifest().arch(); },
          "Architecture from manifest.json (e.g. Unet).")
      .def_property_readonly(
          "encoder", [](const carseg::Predictor& self) { return self.manifest().encoder_name(); },
          "Encoder from manifest.json (e.g. resnet18).")
      .def_property_readonly(
          "device", [](const carseg::Predictor& self) { return self.device().str(); },
          "Device the model runs on: \"cpu\" or \"cuda:N\".")
      .def_property_readonly(
          "precision",
          [](const carseg::Predictor& self) { return carseg::to_string(self.precision()); },
          "Precision asked for: \"fp32\" or \"fp16\".")
      .def_property_readonly(
          "refine",
          [](const carseg::Predictor& self) -> py::object {
            if (!self.refine()) return py::none();
            const carseg::RefineSpec& r = *self.refine();
            py::dict d;
            d["method"] = "guided";
            d["radius"] = r.radius;
            d["eps"] = r.eps;
            d["subsample"] = r.subsample;
            d["softness"] = r.softness;
            return d;
          },
          "The refinement applied (output.refine, with any softness override), or None.")
      .def_property_readonly("threshold", &carseg::Predictor::threshold,
                             "Mask threshold on the probability.")
      .def_property_readonly("backend", &carseg::Predictor::backend_name,
                             "Runtime loaded: \"torchscript\" or \"aoti\".")
      .def_property_readonly(
          "manifest_path",
          [](const carseg::Predictor& self) { return self.manifest().path(); },
          "manifest.json of the artifact folder.")
      .def_property_readonly(
          "manifest",
          [](const carseg::Predictor& self) {
            const std::vector<std::uint8_t> bytes = carseg::read_file(self.manifest().path());
            const py::str text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
            return py::module_::import("json").attr("loads")(text);
          },
          "manifest.json as a dict (read from the file on each access).")
      .def("__repr__", [](const carseg::Predictor& self) {
        std::ostringstream ss;
        ss << "carseg.Predictor(" << self.manifest().dir() << ", device=\"" << self.device().str()
           << "\", precision=\"" << carseg::to_string(self.precision())
           << "\", threshold=" << self.threshold() << ", backend=\"" << self.backend_name()
           << "\", refine=" << (self.refine() ? "True" : "False") << ")";
        return ss.str();
      });

  py::class_<carseg::Pipeline>(m, "Pipeline", kPipelineDoc)
      .def(py::init(&make_pipeline), py::arg("predictor"), py::kw_only(), py::arg("batch") = 8,
           py::arg("workers") = 2, py::arg("cutout") = "white", py::arg("jpeg_quality") = 95,
           py::arg("overwrite") = false, py::arg("max_bytes_in_flight") = std::int64_t{1} << 30,
           py::arg("progress") = py::none(), py::arg("matte") = false, py::arg("crop") = py::none(),
           py::arg("decode") = "cpu", py::keep_alive<1, 2>(),  // the pipeline holds a reference to the predictor
           R"(batch: photos per forward pass; workers: decode threads and as many encode threads;
cutout "white", "transparent", "#RRGGBB", an image file's path, or None (masks only); matte:
also write NAME_alpha.png; crop=MARGIN: cutouts cropped to the car's box grown by MARGIN; decode="gpu" (CUDA predictor):
JPEGs decoded on the GPU with nvJPEG; overwrite: replace outputs already there (by
default a photo whose outputs exist is refused); max_bytes_in_flight: decoded photos held at
once; progress(done, total, failed, last), called after each batch and at the end.)")
      .def(
          "run",
          [](const carseg::Pipeline& self, const std::vector<std::filesystem::path>& photos,
             const std::filesystem::path& output) {
            carseg::PipelineReport report;
            {
              py::gil_scoped_release release;
              report = self.run(photos, output);
            }
            return report_dict(report);
          },
          py::arg("photos"), py::arg("output"),
          R"(Photos (paths) in, outputs in the folder `output` (created). Returns {"results": [one
dict a photo, in order: input, ok, error, width, height, mask, cutout, matte, foreground], "seconds",
"succeeded", "failed"}. Raises CarsegError only when `output` cannot be created or written.)");
}
