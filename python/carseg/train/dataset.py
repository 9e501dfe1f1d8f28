"""The training data set: CSV rows of (image, mask) paths, through albumentations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from carseg.datasets.prepare import read_csv
from carseg.errors import DataError
from carseg.io.images import image_size, read_mask, read_rgb


class SegmentationDataset(Dataset):
    """Yields {"features": float32 [3,H,W], "targets": float32 [1,H,W] in [0,1], "image": path}.

    `transforms` is an albumentations Compose taking image= and mask=; it must end with
    ToTensorV2. Each failure names the file and the reason.

    `cache`: keep each photo as its first transform (FitLongestSide, which has no randomness)
    leaves it, so that it is decoded and shrunk once, not once an epoch: about 10 ms a 960x640
    photo, about a quarter of a CPU epoch's time at 128 px. The cache lives in the process that
    loads (a DataLoader's persistent worker); at 128 px it holds about 80 KB a photo.
    """

    def __init__(self, csv_path: str | Path,
                 transforms: Callable[..., dict[str, Any]] | None = None,
                 verify: bool = True, cache: bool = False) -> None:
        self.csv_path = Path(csv_path)
        self.rows = read_csv(self.csv_path)
        self.transforms = transforms
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        if cache:
            self._first, self._rest = _split_resize(transforms)
            self._cache = {}
        if verify:
            self.verify()

    def verify(self) -> None:
        """Check every row before training starts: files exist, are images, sizes agree.

        Reads headers only (about a millisecond a file); a file corrupt past its header is
        still reported, by name, when it is loaded.
        """
        problems = []
        for image_path, mask_path in self.rows:
            try:
                sizes = [image_size(image_path), image_size(mask_path)]
            except (OSError, DataError) as e:
                problems.append(str(e))
                continue
            if sizes[0] != sizes[1]:
                problems.append(f"{mask_path}: mask is {sizes[1][0]}x{sizes[1][1]} but its image "
                                f"{image_path} is {sizes[0][0]}x{sizes[0][1]}")
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DataError(f"{self.csv_path}: {len(problems)} bad row(s):\n  {shown}{more}")

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw photo (HxWx3 uint8 RGB) and mask (HxW uint8 {0,1}) of row `index`."""
        image_path, mask_path = self.rows[index]
        image = read_rgb(image_path)
        mask = read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{image_path} is {image.shape[1]}x{image.shape[0]}")
        return image, mask

    def _resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._cache is not None
        if index not in self._cache:
            image, mask = self.load(index)
            out = self._first(image=image, mask=mask)
            self._cache[index] = (out["image"], out["mask"])
        return self._cache[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._cache is not None:  # the first transform already applied, once
            (image, mask), transforms = self._resized(index), self._rest
        else:
            (image, mask), transforms = self.load(index), self.transforms
        if transforms is not None:
            out = transforms(image=image, mask=mask)
            image_t, mask_t = out["image"], out["mask"]
        else:
            image_t = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
            mask_t = torch.from_numpy(mask)
        if not isinstance(image_t, torch.Tensor):
            raise DataError(f"{self.csv_path}: transforms must end with ToTensorV2, "
                            f"got {type(image_t).__name__}")
        mask_t = torch.as_tensor(mask_t).float()
        if mask_t.ndim == 2:
            mask_t = mask_t.unsqueeze(0)
        return {"features": image_t.float(), "targets": mask_t,
                "image": str(self.rows[index][0])}


def _split_resize(transforms: Any) -> tuple[Any, Any]:
    """An albumentations Compose whose first step is FitLongestSide -> (that step alone, the
    rest), each a Compose; anything else is refused: only a step without randomness may be
    cached."""
    import albumentations as A

    from carseg.train.transforms import FitLongestSide

    steps = list(getattr(transforms, "transforms", []))
    if not isinstance(transforms, A.Compose) or not steps or not isinstance(
            steps[0], FitLongestSide):
        raise DataError("cache: true needs transforms that start with FitLongestSide (those of "
                        "carseg.train.transforms.build_transforms)")
    return A.Compose(steps[:1]), A.Compose(steps[1:])
