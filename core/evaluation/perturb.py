"""Controlled damage to images, for checking that a metric sees what a person sees: the sensitivity test
(``tests/test_metric_sensitivity.py``) and the sample-count benchmark (``bench/metric_spread.py``) score
clean images against speckled and thinned copies of themselves."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def speckle(images: torch.Tensor, p: float = 0.02, seed: int = 0, dark: int = 32) -> torch.Tensor:
    """Bright isolated pixels on the background, as in the grids of an under-trained pruned model: each dark
    pixel (< ``dark``) becomes a random value in [64, 255] with probability ``p``."""
    g = torch.Generator().manual_seed(seed)
    hit = (torch.rand(images.shape, generator=g) < p) & (images < dark)
    vals = torch.randint(64, 256, images.shape, generator=g, dtype=torch.int64)
    return torch.where(hit, vals, images.long()).to(torch.uint8)


def thin(images: torch.Tensor) -> torch.Tensor:
    """Thinner strokes: each pixel becomes the minimum of its 2x2 neighbourhood (a one-pixel erosion)."""
    x = images.float()
    eroded = -F.max_pool2d(-F.pad(x, (0, 1, 0, 1), mode="replicate"), kernel_size=2, stride=1)
    return eroded.round().clamp(0, 255).to(torch.uint8)
