"""The losses: the edge band they weight, and the weighting itself."""

from __future__ import annotations

import pytest
import torch

from carseg.train.losses import BCEDiceLoss, EdgeBCEDiceLoss, edge_band


def test_the_edge_band_is_the_pixels_near_the_masks_edge() -> None:
    t = torch.zeros(1, 1, 12, 12)
    t[..., 3:9, 3:9] = 1
    band = edge_band(t, 1)[0, 0]
    # within one pixel (a 3x3 window) of the square's edge, on either side; nothing else
    want = torch.zeros(12, 12)
    want[2:10, 2:10] = 1
    want[4:8, 4:8] = 0
    assert torch.equal(band, want)
    assert torch.equal(edge_band(t[:, 0], 1)[0], want)  # [N, H, W] targets too
    assert edge_band(torch.ones(1, 1, 5, 5), 2).sum() == 0


def test_edge_errors_cost_more_than_the_same_errors_away_from_it() -> None:
    t = torch.zeros(1, 1, 16, 16)
    t[..., 4:12, 4:12] = 1
    logits = (t * 2 - 1) * 6  # confident and right everywhere
    at_edge, far = logits.clone(), logits.clone()
    at_edge[..., 4, 4:12] = -6   # the square's top row, wrong
    far[..., 14, 2:10] = 6       # 8 pixels far outside, wrong
    edge_loss, plain = EdgeBCEDiceLoss(bce_weight=1.0, edge_weight=4.0), BCEDiceLoss(1.0)
    assert plain(at_edge, t) == pytest.approx(float(plain(far, t)), rel=1e-5)
    assert edge_loss(at_edge, t) > 2 * edge_loss(far, t)
    with pytest.raises(ValueError, match="edge_weight must be >= 0 and edge_width >= 1"):
        EdgeBCEDiceLoss(edge_width=0)
