"""Drawing samples from a trained denoiser (base or progressive) with a respaced process."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch

from core.model.diffusion import GaussianDiffusion, to_uint8
from core.model.pasting import paste_labelled
from core.model.respace import respaced


def set_layout(model, channels_last: bool = True):
    """Put a model's weights in channels-last (NHWC) or contiguous (NCHW) memory format, in place.

    Channels-last is the layout oneDNN (CPU) and cuDNN convolution kernels run fastest: with NCHW tensors
    PyTorch's oneDNN path reorders activations to a blocked layout and back around every convolution, which
    costs most at the narrow widths pruning leaves (bench/conv_layout.py: 2-4x on a 2-core CPU at 16-64 channels).
    Inputs need no conversion: a convolution with channels-last weights returns a channels-last output.
    Anything that is not an ``nn.Module`` (a plain function standing in for a model) is returned as is.
    """
    if isinstance(model, torch.nn.Module):
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model


@torch.inference_mode()
def sample_images(
    model: Callable,
    diffusion: GaussianDiffusion,
    n: int,
    *,
    image_size: int,
    channels: int,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
    method: str = "ancestral",
    device="cpu",
    progress: Optional[Callable[[int], None]] = None,
    channels_last: bool = True,
) -> torch.Tensor:
    """``n`` images as uint8 [n, C, H, W], sampled with ``steps`` of the process's T steps.

    Batch b starts from noise seeded by (seed, b), so a given seed gives the same images whatever the batch count.
    ``channels_last`` puts the model's weights in that memory format first (see ``set_layout``; in place).
    """
    set_layout(model, channels_last)
    proc = respaced(diffusion, steps)
    out = []
    for b, i in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - i)
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        x = proc.sample(
            model, (m, channels, image_size, image_size), method=method, generator=g, device=device, progress=progress
        )
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


def tile(images: torch.Tensor, padding: int = 2):
    """uint8 images [N, C, H, W] as one about-square RGB grid (a PIL image), ``padding`` black pixels around each,
    row by row, as torchvision's ``make_grid`` lays them out (not imported: it costs a job 3 s of start-up)."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / cols))
    rgb = images.expand(-1, 3, -1, -1) if c == 1 else images
    canvas = torch.zeros(3, rows * (h + padding) + padding, cols * (w + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        y, x = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        canvas[:, y : y + h, x : x + w] = rgb[i]
    return Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy(), "RGB")


def save_grid(images: torch.Tensor, path: Path) -> Path:
    """Save uint8 images as one PNG grid (about square)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tile(images.to(torch.uint8).cpu()).save(path)
    return path


def save_side_by_side(grids: dict, path: Path) -> Path:
    """Several models' uint8 images (same noise, same order) as grids side by side, each named above it."""
    return paste_labelled({name: tile(images.to(torch.uint8).cpu()) for name, images in grids.items()}, path)
