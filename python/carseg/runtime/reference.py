"""The reference predictor: an exported artifact folder in, masks at the photo's size out.

Everything between pixels and the model goes through carseg.runtime.preprocess (the contract in
docs/manifest.md), so this is what the C++ runtime's parity tests compare against:

    predictor = ReferencePredictor("artifacts", backend="torchscript")
    mask = predictor.predict(read_rgb("car.jpg"))        # uint8 [H, W] in {0, 1}

It reads manifest.json, refuses a model file whose sha256 differs from the manifest's, and
loads the file with the backend's own loader: torch.jit.load, onnxruntime, or
torch._inductor.aoti_load_package.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carseg.errors import CarsegError
from carseg.runtime import refine
from carseg.runtime.manifest import INT8_NAME, auto_precision, load_manifest, model_bytes
from carseg.runtime.preprocess import mask_from_logits, postprocess_logits, preprocess_batch
from carseg.runtime.refine import RefineSpec

log = logging.getLogger(__name__)

BACKENDS = ("torchscript", "onnx", "aoti")
_DTYPES = {"float32": torch.float32, "float16": torch.float16}

Runner = Callable[[torch.Tensor], torch.Tensor]


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CarsegError(f"device {device}: no CUDA device here (torch.cuda.is_available() "
                          f"is False)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected cpu or cuda, got {device!r}")
    return dev


def load_backend(path: str | Path, backend: str, device: str | torch.device = "cpu",
                 compiled_for: str = "cpu", data: bytes | None = None) -> Runner:
    """A function float [N,3,H,W] (on `device`, the artifact's dtype) -> logits [N,1,H,W].

    `compiled_for` is the manifest's artifact device: an AOTInductor package runs only there.
    `data`: the file's bytes, already read and checked (model_bytes): the model is loaded from
    them, and `path` only names it.
    """
    path = Path(path)
    dev = _device(device)
    if data is None and not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    if backend == "torchscript":
        try:
            with warnings.catch_warnings():  # torch 2.14 calls TorchScript deprecated
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(io.BytesIO(data) if data is not None else str(path),
                                        map_location=dev)
        except Exception as e:
            raise CarsegError(f"{path}: cannot load as TorchScript ({_first_line(e)})") from None
        module.eval()

        def run_ts(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return run_ts
    if backend == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise CarsegError(f"{path}: onnxruntime is not installed ({e}); pip install "
                              f"onnxruntime (CPU) or onnxruntime-gpu (CUDA)") from None
        providers = ["CPUExecutionProvider"]
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise CarsegError(f"{path}: onnxruntime here has no CUDA provider (install "
                                  f"onnxruntime-gpu instead of onnxruntime)")
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(data if data is not None else str(path), opts,
                                           providers=providers)
        except Exception as e:
            raise CarsegError(f"{path}: onnxruntime cannot load it ({_first_line(e)})") from None
        in_name = session.get_inputs()[0].name
        out_name = session.get_outputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            y = session.run([out_name], {in_name: x.detach().cpu().numpy()})[0]
            return torch.from_numpy(y).to(x.device)

        return run_onnx
    if backend == "aoti":
        if torch.device(compiled_for).type != dev.type:
            raise CarsegError(f"{path}: compiled for {compiled_for}, cannot run on {dev}; "
                              f"export it again with --device {dev.type}")
        try:
            with _private_copy(path, data) as package:
                runner = torch._inductor.aoti_load_package(str(package))
        except CarsegError:
            raise
        except Exception as e:
            raise CarsegError(f"{path}: cannot load as an AOTInductor package "
                              f"({_first_line(e)})") from None

        def run_aoti(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                y = runner(x)
            return y[0] if isinstance(y, (list, tuple)) else y

        return run_aoti
    raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")


@contextlib.contextmanager
def _private_copy(path: Path, data: bytes | None) -> Iterator[Path]:
    """`data` as a file in a fresh private folder (mode 0700), for a loader that takes a path:
    the path it opens holds exactly the bytes that were checked. Removed once loaded."""
    if data is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="carseg-aoti-") as folder:
        copy = Path(folder) / "model.pt2"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield copy


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ReferencePredictor:
    """An artifact folder (manifest.json + model files) as a Python predictor."""

    def __init__(self, model_dir: str | Path, backend: str = "torchscript",
                 device: str | torch.device = "cpu", threshold: float | None = None,
                 refine: bool = True, softness: float | None = None,
                 precision: str | None = None) -> None:
        """`refine`: apply the manifest's output.refine (where it has one); False gives the
        model's mask resized. `softness` overrides the refinement's soft-edge width.
        `precision`: None or the folder's own runs the backend's artifact; "int8" runs the
        statically quantized ONNX model (artifacts.onnx_int8, `python -m export int8`) on ONNX
        Runtime (backend "onnx"); "auto" the int8 model where auto_precision takes it, else
        the backend's artifact."""
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
        self.model_dir = Path(model_dir)
        self.manifest = load_manifest(self.model_dir)
        source = str(self.model_dir / "manifest.json")
        if precision == "auto":
            precision = "int8" if auto_precision(self.manifest, backend, str(device)) == "int8" \
                else None
        if precision == "int8" and backend != "onnx":
            raise ValueError(f"precision int8: the quantized model runs on ONNX Runtime; "
                             f"use backend 'onnx', not {backend!r}")
        name = INT8_NAME if precision == "int8" else backend
        self.artifact: dict[str, Any] = self.manifest.artifact(name, source=source)
        if precision not in (None, "int8", self.artifact["precision"]):
            raise ValueError(f"precision {precision}: {source} has {backend} in "
                             f"{self.artifact['precision']}; export a {precision} folder, or "
                             f"use int8 with backend onnx")
        self.precision: str = self.artifact["precision"]
        self.backend = backend
        self.device = _device(device)
        self.spec = self.manifest.spec
        self.threshold = self.manifest.threshold if threshold is None else float(threshold)
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        self.dtype = _DTYPES.get(self.manifest.input["dtype"])
        if self.dtype is None:
            raise ValueError(f"{source}: input.dtype: expected one of {sorted(_DTYPES)}, got "
                             f"{self.manifest.input['dtype']!r}")
        self.path, data = model_bytes(self.model_dir, self.manifest, name)
        self._run = load_backend(self.path, backend, self.device, self.artifact["device"],
                                 data=data)
        self.dynamic_batch = bool(self.artifact["dynamic"]["batch"])
        spec = self.manifest.refine if refine else None
        self.refine: RefineSpec | None = (spec.with_softness(softness)
                                          if spec is not None and softness is not None else spec)

    def __repr__(self) -> str:
        return (f"ReferencePredictor({str(self.model_dir)!r}, backend={self.backend!r}, "
                f"precision={self.precision!r}, device={str(self.device)!r}, "
                f"threshold={self.threshold}, "
                f"refine={self.refine is not None})")

    # ---- the model alone --------------------------------------------------------------------
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalized float [N,3,S,S] -> float32 logits [N,1,S,S], exactly what the file gives."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"batch: expected shape [N, 3, H, W], got {list(batch.shape)}")
        x = batch.to(device=self.device, dtype=self.dtype)
        if self.dynamic_batch or x.shape[0] == 1:
            y = self._run(x)
        else:
            y = torch.cat([self._run(x[i:i + 1]) for i in range(x.shape[0])])
        return y.float()

    # ---- photos ------------------------------------------------------------------------------
    @staticmethod
    def _as_tensor(image: Any) -> tuple[torch.Tensor, bool]:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise ValueError(f"image: expected dtype uint8, got {image.dtype}")
            if not image.flags.writeable:  # torch warns about (and may write to) read-only
                image = image.copy()
            return torch.from_numpy(np.ascontiguousarray(image)), True
        if isinstance(image, torch.Tensor):
            return image, False
        raise TypeError(f"image: expected a numpy array or a torch tensor, got "
                        f"{type(image).__name__}")

    def _forward(self, images: Sequence[Any]) -> list[tuple[torch.Tensor, torch.Tensor, bool,
                                                              torch.device]]:
        """Photos -> (photo on self.device, the model's logits [1,S,S], was numpy, device)."""
        tensors = [self._as_tensor(im) for im in images]
        on_device = [t.to(self.device) for t, _ in tensors]
        logits = self.run(preprocess_batch(on_device, self.spec))
        return [(im, lg, was_numpy, t.device)
                for (t, was_numpy), lg, im in zip(tensors, logits, on_device, strict=True)]

    def _fit(self, image: torch.Tensor, lg: torch.Tensor, spec: RefineSpec) -> refine.Fit:
        small, _ = spec.grid(int(image.shape[0]), int(image.shape[1]), self.spec.size)
        return refine.fit(image, postprocess_logits(lg, small, self.spec), spec, self.threshold,
                          self.spec.size)

    def _plain_mask(self, image: torch.Tensor, lg: torch.Tensor) -> torch.Tensor:
        """The model's mask at the photo's size, without refinement."""
        hw = (int(image.shape[0]), int(image.shape[1]))
        return mask_from_logits(postprocess_logits(lg, hw, self.spec), self.threshold)

    def _mask(self, image: torch.Tensor, lg: torch.Tensor) -> torch.Tensor:
        if self.refine is None:
            return self._plain_mask(image, lg)
        return refine.matte(image, self._fit(image, lg, self.refine))[0]

    @staticmethod
    def _give_back(t: torch.Tensor, was_numpy: bool, device: torch.device) -> Any:
        return t.cpu().numpy() if was_numpy else t.to(device)

    def predict_logits(self, image: Any) -> Any:
        """uint8 [H,W,3] RGB (numpy or tensor) -> float32 logits [H,W] at the photo's size: the
        model's own, resized, before any refinement.

        Numpy in, numpy out; a tensor in gives a tensor on the input's device.
        """
        im, lg, was_numpy, dev = self._forward([image])[0]
        hw = (int(im.shape[0]), int(im.shape[1]))
        return self._give_back(postprocess_logits(lg, hw, self.spec), was_numpy, dev)

    def predict(self, image: Any) -> Any:
        """uint8 [H,W,3] RGB -> uint8 mask [H,W] in {0,1}: the refined probability (or, without
        refinement, sigmoid(logits)) > threshold."""
        im, lg, was_numpy, dev = self._forward([image])[0]
        return self._give_back(self._mask(im, lg), was_numpy, dev)

    def predict_batch(self, images: Sequence[Any]) -> list[Any]:
        """Photos of any sizes, run as one batch -> one mask per photo, at its own size."""
        if len(images) == 0:
            raise ValueError("images: expected at least one image, got an empty list")
        return [self._give_back(self._mask(im, lg), was_numpy, dev)
                for im, lg, was_numpy, dev in self._forward(list(images))]

    def predict_matte(self, image: Any) -> tuple[Any, Any]:
        """uint8 [H,W,3] RGB -> (mask uint8 [H,W] in {0,1}, alpha uint8 [H,W] in 0..255). The
        alpha matte is the refinement's soft edge; without refinement it is the mask * 255."""
        im, lg, was_numpy, dev = self._forward([image])[0]
        mask, alpha, _ = self._render(im, lg, None, False)
        return self._give_back(mask, was_numpy, dev), self._give_back(alpha, was_numpy, dev)

    def cutout(self, image: Any, backdrop: Any = (255, 255, 255)) -> tuple[Any, Any]:
        """uint8 [H,W,3] RGB -> (cutout, mask): the car on `backdrop` (an RGB colour, or a uint8
        [H,W,3] image of the photo's size) as uint8 [H,W,3], or as uint8 [H,W,4] RGBA where
        backdrop is None. With refinement the edge is soft and decontaminated
        (refine.composite_soft); without, the mask's hard edge."""
        im, lg, was_numpy, dev = self._forward([image])[0]
        mask, _, out = self._render(im, lg, backdrop, True)
        return self._give_back(out, was_numpy, dev), self._give_back(mask, was_numpy, dev)

    def _render(self, im: torch.Tensor, lg: torch.Tensor, backdrop: Any, want_cutout: bool,
                refined: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.refine is None or not refined:
            mask = self._plain_mask(im, lg)
            alpha = mask * 255
            out = hard_composite(im, mask, backdrop) if want_cutout else None
            return mask, alpha, out
        f = self._fit(im, lg, self.refine)
        mask, a = refine.matte(im, f)
        out = None
        if want_cutout:
            back = None if backdrop is None else torch.as_tensor(
                np.asarray(backdrop, dtype=np.uint8)).to(im.device)
            out = refine.composite_soft(im, a, f, back)
        return mask, refine.alpha_u8(a, mask), out

    def render(self, image: Any, background: Any = "white", crop: int | None = None,
               refine: bool = True) -> dict[str, Any]:
        """Everything a front end writes for one photo, from one forward pass: {"mask": uint8
        [H,W] in {0,1}, "alpha": uint8 [H,W] 0..255, "cutout": uint8 [h,w,3|4] or None} (numpy).
        background: white, transparent, #RRGGBB, an image file's path (or a parsed
        carseg.io.encode.Backdrop), or None (no cutout);
        crop=MARGIN: the cutout cropped to the car's box grown by MARGIN pixels (crop_box);
        refine=False: this call without the refinement."""
        from carseg.io.encode import Backdrop, crop_box

        if crop is not None and crop < 0:
            raise ValueError(f"crop: expected a margin >= 0 pixels, got {crop}")
        rgb, _ = self._as_tensor(image)
        im = rgb.to(self.device)
        h, w = int(im.shape[0]), int(im.shape[1])
        bd = (background if isinstance(background, Backdrop) or background is None
              else Backdrop.parse(background))
        _, lg, _, _ = self._forward([im])[0]
        mask, alpha, out = self._render(im, lg, None if bd is None else bd.behind(h, w),
                                        bd is not None, refine)
        result = {"mask": mask.cpu().numpy(), "alpha": alpha.cpu().numpy(), "cutout": None}
        if out is not None:
            cut = out.cpu().numpy()
            if crop is not None:
                x0, y0, x1, y1 = crop_box(result["alpha"], crop)
                cut = np.ascontiguousarray(cut[y0:y1, x0:x1])
            result["cutout"] = cut
        return result


def hard_composite(image: torch.Tensor, mask: torch.Tensor, backdrop: Any) -> torch.Tensor:
    """The car where mask is set, `backdrop` (RGB colour or image) elsewhere; RGBA with the
    mask as alpha where backdrop is None."""
    car = mask.bool()[..., None]
    if backdrop is None:
        return torch.cat([image, car.to(torch.uint8) * 255], dim=2)
    back = torch.as_tensor(np.asarray(backdrop, dtype=np.uint8)).to(image.device)
    return torch.where(car, image, back.expand_as(image))
