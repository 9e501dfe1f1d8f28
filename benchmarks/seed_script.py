"""The seed tutorial's background removal, as a user would write it in Python.

cv2.imread -> albumentations (longest side, pad, normalize, to tensor) -> TorchScript model
-> sigmoid > threshold -> mask cropped and resized back -> white background -> cv2.imwrite.
One photo at a time, no threads: the baseline that carseg_infer and `carseg cutout` beat.
Only the benchmark uses it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from carseg.train.transforms import build_transforms


def run(artifacts: Path, photos: list[Path], out: Path, device: str = "cpu"
        ) -> dict[str, float]:
    """The seed's loop over `photos`; on `device` "cuda" the model (only) runs on the GPU, as
    the tutorial's `.cuda()` did."""
    manifest = json.loads((artifacts / "manifest.json").read_text())
    size = manifest["preprocessing"]["size"]
    threshold = manifest["output"]["threshold"]
    model = torch.jit.load(str(artifacts / manifest["artifacts"]["torchscript"]["file"]),
                           map_location=device)
    transforms = build_transforms("infer", size, tuple(manifest["preprocessing"]["mean"]),
                                  tuple(manifest["preprocessing"]["std"]))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for path in photos:
        bgr = cv2.imread(str(path))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        x = transforms(image=rgb)["image"].unsqueeze(0).to(device)
        with torch.inference_mode():
            prob = torch.sigmoid(model(x))[0, 0].cpu().numpy()
        scale = size / max(h, w)
        nh, nw = round(h * scale), round(w * scale)
        prob = cv2.resize(prob[:nh, :nw], (w, h), interpolation=cv2.INTER_LINEAR)
        mask = (prob > threshold).astype(np.uint8)
        cutout = np.where(mask[..., None] > 0, bgr, 255).astype(np.uint8)
        cv2.imwrite(str(out / f"{path.stem}_mask.png"), mask * 255)
        cv2.imwrite(str(out / f"{path.stem}_cutout.jpg"), cutout)
    dt = time.perf_counter() - t0
    return {"images": len(photos), "seconds": dt, "images_per_s": len(photos) / dt}
