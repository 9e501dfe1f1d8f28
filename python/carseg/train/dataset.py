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
    """Yields {"features": float32 [3,H,W], "targets": float32 [1,H,W] in {0,1}, "image": path}.

    `transforms` is an albumentations Compose taking image= and mask=; it must end with
    ToTensorV2. Each failure names the file and the reason.
    """

    def __init__(self, csv_path: str | Path,
                 transforms: Callable[..., dict[str, Any]] | None = None,
                 verify: bool = True) -> None:
        self.csv_path = Path(csv_path)
        self.rows = read_csv(self.csv_path)
        self.transforms = transforms
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

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load(index)
        if self.transforms is not None:
            out = self.transforms(image=image, mask=mask)
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
