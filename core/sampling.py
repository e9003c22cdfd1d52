"""Drawing samples from a trained denoiser (base or progressive) with a respaced process."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch

from .data import to_uint8
from .diffusion import GaussianDiffusion
from .respace import respaced


@torch.inference_mode()
def sample_images(model: Callable, diffusion: GaussianDiffusion, n: int, *, image_size: int, channels: int,
                  steps: int, batch_size: int = 64, seed: int = 0, method: str = "ancestral",
                  device="cpu", progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """``n`` images as uint8 [n, C, H, W], sampled with ``steps`` of the process's T steps.

    Batch b starts from noise seeded by (seed, b), so a given seed gives the same images whatever the batch count.
    """
    proc = respaced(diffusion, steps)
    out = []
    for b, i in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - i)
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        x = proc.sample(model, (m, channels, image_size, image_size), method=method, generator=g,
                        device=device, progress=progress)
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


def save_grid(images: torch.Tensor, path: Path) -> Path:
    """Save uint8 images as one PNG grid (about square)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    save_image(images.float() / 255.0, path, nrow=nrow, padding=2)
    return path
