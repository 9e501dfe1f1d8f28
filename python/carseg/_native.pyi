"""carseg's C++ core (libcarseg) for Python; use it as carseg.Predictor.

Built by the project's CMake (option CARSEG_BUILD_PYTHON, on under pip) from cpp/bindings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar, overload

import numpy as np
import numpy.typing as npt
import torch

import carseg.errors

MAX_PIXELS: int
"""Largest image (H * W) the core accepts: 80,000,000."""

class CarsegError(carseg.errors.CarsegError):
    """carseg::Error from the core: "<file>: <reason>". A carseg.CarsegError and a RuntimeError."""

def cuda_available() -> bool:
    """Whether this process can use a CUDA device (False on a CPU-only build or machine)."""

_U8 = npt.NDArray[np.uint8]
_F32 = npt.NDArray[np.float32]
_Image = TypeVar("_Image", _U8, torch.Tensor)  # numpy in, numpy out; a tensor in, a tensor out

class Predictor:
    """An exported artifact folder run by the C++ core (libcarseg).

    Images are uint8 [H, W, 3] RGB: a C-contiguous numpy array (shared, not copied) or a torch
    tensor on any device with any strides (shared; a CUDA tensor is read where it is, after the
    work queued on the current CUDA stream). Numpy in gives numpy out; a tensor in gives a CPU
    tensor out; on_device=True gives torch tensors left on the predictor's device (CUDA masks
    from a CUDA predictor, no copy back, ready for work queued next on the current CUDA stream).
    Wrong type: TypeError; wrong dtype, shape or an empty image: ValueError
    ("image: expected uint8 [H, W, 3], got float32 [10, 10, 3]"); what the core refuses (a bad
    model folder, sha256 mismatch, CUDA asked for and absent, an image over MAX_PIXELS):
    CarsegError. Other C++ errors (torch's) arrive as RuntimeError with their message.

    Thread safety: the GIL is released while the core works, and one Predictor may be called
    from several threads at once. The model's forward pass runs one at a time (on CUDA the whole
    call does); on the CPU one call's resize/normalize and resize-back/threshold overlap another
    call's forward pass. Do not modify an input array from another thread while a call reads it.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        device: str = "cpu",
        precision: Literal["auto", "fp32", "fp16", "int8"] = "auto",
        threshold: float | None = None,
        backend: Literal["auto", "torchscript", "aoti", "onnx"] = "auto",
        cuda_graphs: bool = True,
        *,
        exact: bool = True,
        onednn_fusion: bool = False,
        refine: bool = True,
        softness: float | None = None,
    ) -> None:
        """Load model_dir (manifest.json + model file), check its sha256 and warm it up.

        device "cpu", "cuda" or "cuda:N"; precision "auto" is int8 on the CPU where the
        manifest has an int8 model that passed verify, else fp32; "fp16" needs CUDA; threshold
        in (0, 1)
        overrides the manifest's; cuda_graphs: capture and replay a CUDA graph per batch shape
        (CUDA only). exact=False (CPU): fused pre/post-processing kernels, faster; masks may
        differ from the op-for-op reference where a logit is within float rounding of the
        threshold. onednn_fusion=True (CPU, TorchScript): oneDNN Graph fusion, faster at batch
        1; process-wide, it stays on for every TorchScript module in the process. refine=False:
        the model's mask resized, without the manifest's output.refine; softness overrides the
        refinement's soft-edge width. Raises CarsegError.
        """
    @overload
    def predict(self, image: _Image, *, on_device: Literal[False] = False) -> _Image: ...
    @overload
    def predict(self, image: _U8 | torch.Tensor, *, on_device: Literal[True]) -> torch.Tensor: ...
    def predict(self, image: _U8 | torch.Tensor, *, on_device: bool = False) -> Any:
        """uint8 [H, W, 3] RGB -> uint8 mask [H, W] in {0, 1}; on_device=True: a tensor on the
        predictor's device."""
    @overload
    def predict_proba(self, image: _U8, *, on_device: Literal[False] = False) -> _F32: ...
    @overload
    def predict_proba(self, image: torch.Tensor, *, on_device: bool = False) -> torch.Tensor: ...
    @overload
    def predict_proba(self, image: _U8, *, on_device: Literal[True]) -> torch.Tensor: ...
    def predict_proba(self, image: _U8 | torch.Tensor, *, on_device: bool = False) -> Any:
        """uint8 [H, W, 3] RGB -> float32 [H, W] car probability; predict is proba > threshold."""
    def predict_batch(self, images: Sequence[_U8 | torch.Tensor], *, on_device: bool = False
                      ) -> list[Any]:
        """Images of any sizes, run as one batch -> one mask each, at its image's size (numpy
        for a numpy image, a CPU tensor for a tensor, a tensor on the predictor's device with
        on_device=True)."""
    @overload
    def predict_matte(self, image: _Image, *, on_device: Literal[False] = False
                      ) -> tuple[_Image, _Image]: ...
    @overload
    def predict_matte(self, image: _U8 | torch.Tensor, *, on_device: Literal[True]
                      ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def predict_matte(self, image: _U8 | torch.Tensor, *, on_device: bool = False) -> Any:
        """uint8 [H, W, 3] RGB -> (mask uint8 [H, W] in {0, 1}, alpha uint8 [H, W] 0..255, above
        127 exactly where the mask is set)."""
    def cutout(self, image: _Image, background: str = "white", *, crop: int | None = None
               ) -> _Image:
        """The photo with its background removed: background "white", "#RRGGBB" or an image
        file's path gives uint8 [H, W, 3] (the car over it, its edge soft and decontaminated);
        "transparent" gives uint8 [H, W, 4] RGBA with the alpha matte. crop=MARGIN: the car's
        box grown by MARGIN pixels."""
    def render(self, image: _Image, background: str | None = "white", *,
               crop: int | None = None, refine: bool = True) -> dict[str, Any]:
        """{"mask", "alpha", "cutout" (None without a background)} as numpy arrays, from one
        forward pass; refine=False: this call without the refinement."""
    @property
    def refine(self) -> dict[str, Any] | None:
        """The refinement applied (output.refine, with any softness override), or None."""
    @property
    def input_size(self) -> int:
        """Side of the square the model sees (pixels)."""
    @property
    def arch(self) -> str:
        """Architecture from manifest.json (e.g. Unet)."""
    @property
    def encoder(self) -> str:
        """Encoder from manifest.json (e.g. resnet18)."""
    @property
    def device(self) -> str:
        """Device the model runs on: "cpu" or "cuda:N"."""
    @property
    def precision(self) -> str:
        """Precision it runs: "fp32", "fp16" or "int8" ("auto" resolved)."""
    @property
    def threshold(self) -> float:
        """Mask threshold on the probability."""
    @property
    def backend(self) -> str:
        """Runtime loaded: "torchscript" or "aoti"."""
    @property
    def manifest_path(self) -> Path:
        """manifest.json of the artifact folder."""
    @property
    def manifest(self) -> dict[str, Any]:
        """manifest.json as a dict (read from the file on each access)."""

class PhotoResult(TypedDict):
    input: str
    ok: bool
    error: str  # "<file>: <reason>" when not ok
    width: int
    height: int
    mask: str | None
    cutout: str | None
    matte: str | None  # NAME_alpha.png, with matte=True
    foreground: float  # share of the photo's pixels that are car

class StageSeconds(TypedDict):
    """Busy seconds summed over each stage's threads: where a run's time went."""
    decode_s: float  # reading and decoding, on `workers` threads
    infer_s: float  # the model (and on CUDA the matte), on the calling thread
    infer_wait_s: float  # the model's thread waiting for decoded photos
    infer_blocked_s: float  # the model's thread waiting for room in the encoders' queue
    encode_s: float  # matte on the CPU, encoding and writing, on `workers` threads
    workers: int

class PipelineReport(TypedDict):
    results: list[PhotoResult]  # one a photo, in the order given
    seconds: float
    succeeded: int
    failed: int
    stages: StageSeconds

class Pipeline:
    """libcarseg's folder pipeline over a Predictor: what carseg_infer runs.

    Photos are decoded on worker threads, predicted in batches, and their mask (NAME_mask.png)
    and cutout (NAME_cutout.jpg on white, NAME_cutout.png transparent, or none) encoded and
    written on worker threads, all overlapped, each file under a temporary name and then
    renamed. A photo that fails is that photo's error; the others go on. The GIL is released
    while it runs.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        batch: int = 8,
        workers: int = 2,
        cutout: str | None = "white",
        jpeg_quality: int = 95,
        overwrite: bool = False,
        max_bytes_in_flight: int = 1 << 30,
        progress: Callable[[int, int, int, bool], object] | None = None,
        matte: bool = False,
        crop: int | None = None,
        decode: Literal["cpu", "gpu"] = "cpu",
    ) -> None:
        """cutout: white, transparent, #RRGGBB, an image file's path, or None (masks only);
        matte: also NAME_alpha.png; crop=MARGIN: cutouts cropped to the car's box grown by
        MARGIN; decode="gpu" (a CUDA predictor): JPEGs decoded on the GPU with nvJPEG.
        progress(done, total, failed, last) is called after each batch and at the end.
        Raises CarsegError for a bad option ("batch: expected at least 1, got 0")."""
    def run(self, photos: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]
            ) -> PipelineReport:
        """Photos in, outputs in the folder `output` (created). Raises CarsegError only when
        `output` cannot be created or written."""
