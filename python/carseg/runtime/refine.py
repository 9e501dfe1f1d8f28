"""Full-resolution refinement of the model's mask: a fast colour guided filter.

The model sees the photo at its input size (128 px on the demo's, so 1/15 of a 1918x1280
photo), and resizing its logits back gives an edge that wanders by several pixels. The guided
filter (He, Sun and Tang) fits, in each window of the photo, the probability as a linear
function of the photo's colour, so the result follows the photo's own edges. The fast variant
(He and Sun, 2015) fits at 1/`subsample` of the photo's size and applies the upsampled
coefficients to the full-resolution photo.

This is the Python reference; `benchmarks/refine_study.py` measures it against the plain resize.
Over 16 held-out synthetic photos of 1918x1280 and the demo's 128 px model, the colour guide with
radius 64 px and eps 1e-4 gave the most (Dice 0.962 -> 0.977, boundary F1 within 2 px 0.17 ->
0.62), as much at subsample 8 or 16 as at full resolution, in about 1/70 of the time. Where the
model is right to within the radius it reaches Dice 0.995; where it misses a part of the car
that looks like the wall (a white roof on a white wall), no filter brings it back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window around each pixel of [..., H, W], the window clipped at
    the border (every mean is over real pixels), by running sums: O(1) a pixel for any r."""
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {r}")

    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        c = torch.cumsum(t, dim=dim, dtype=torch.float64)
        c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
        idx = torch.arange(n, device=t.device)
        hi, lo = (idx + r + 1).clamp(max=n), (idx - r).clamp(min=0)
        shape = [1] * t.ndim
        shape[dim] = n
        count = (hi - lo).to(torch.float64).view(shape)
        return (c.index_select(dim, hi) - c.index_select(dim, lo)) / count

    return along(along(x, x.ndim - 1), x.ndim - 2).to(x.dtype)


def guided_coefficients(guide: torch.Tensor, p: torch.Tensor, r: int, eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided filter's mean linear coefficients for an RGB guide [3,H,W] in [0,1] and an
    input p [H,W]: a [3,H,W] and b [H,W], with q = sum_c a_c * guide_c + b."""
    if guide.ndim != 3 or guide.shape[0] != 3 or guide.shape[1:] != p.shape:
        raise ValueError(f"guide [3,H,W] and p [H,W] must match, got {list(guide.shape)} and "
                         f"{list(p.shape)}")
    mi, mp = box(guide, r), box(p, r)
    cov = box(guide * p, r) - mi * mp                               # [3,H,W]
    sigma = box(guide[:, None] * guide[None, :], r) - mi[:, None] * mi[None, :]  # [3,3,H,W]
    sigma = sigma + eps * torch.eye(3, dtype=guide.dtype, device=guide.device)[:, :, None, None]
    a = torch.linalg.solve(sigma.permute(2, 3, 0, 1), cov.permute(1, 2, 0)[..., None])[..., 0]
    a = a.permute(2, 0, 1)
    b = mp - (a * mi).sum(0)
    return box(a, r), box(b, r)


def refine(rgb: torch.Tensor, logits: torch.Tensor, *, radius: int = 64, eps: float = 1e-4,
           subsample: int = 8) -> torch.Tensor:
    """uint8 photo [H,W,3] and the model's logits over it at any size [h,w] -> refined
    foreground probability (alpha) [H,W] in [0,1], float32.

    The photo is area-averaged and the logits resized (bilinear) to 1/`subsample` of the
    photo's size; the coefficients are fitted there with radius `radius / subsample`, then
    resized (bilinear) to the photo's size and applied to the photo. `radius` is in pixels of
    the photo.
    """
    if rgb.dtype != torch.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb: expected uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    if logits.ndim != 2:
        raise ValueError(f"logits: expected [h, w], got {list(logits.shape)}")
    if radius < 1 or subsample < 1 or not eps > 0:
        raise ValueError(f"radius and subsample must be >= 1 and eps > 0, got {radius}, "
                         f"{subsample}, {eps}")
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    full = rgb.permute(2, 0, 1).float().div_(255)
    lh, lw = max(1, round(h / subsample)), max(1, round(w / subsample))
    small = full if (lh, lw) == (h, w) else F.interpolate(full[None], size=(lh, lw),
                                                          mode="area")[0]
    p = torch.sigmoid(F.interpolate(logits.float()[None, None], size=(lh, lw), mode="bilinear",
                                    align_corners=False)[0, 0])
    a, b = guided_coefficients(small, p, max(1, round(radius / subsample)), eps)
    if (lh, lw) != (h, w):
        ab = F.interpolate(torch.cat([a, b[None]])[None], size=(h, w), mode="bilinear",
                           align_corners=False)[0]
        a, b = ab[:3], ab[3]
    return ((a * full).sum(0) + b).clamp_(0, 1)
