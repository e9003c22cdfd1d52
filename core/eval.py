"""Evaluation: denoising loss per timestep region on held-out images (FID comes with the evaluation stage)."""
from __future__ import annotations

import torch

from .data import to_model_range
from .diffusion import GaussianDiffusion


@torch.inference_mode()
def region_losses(model, diffusion: GaussianDiffusion, images: torch.Tensor, regions: dict[int, list[int]],
                  draws: int = 4, seed: int = 0, batch_size: int = 256, device="cpu") -> dict[int, float]:
    """L_simple (eps MSE) per region of timesteps: every image is noised ``draws`` times at timesteps drawn
    uniformly from the region, with noise and timesteps fixed by ``seed`` so that models compare on equal terms."""
    model.eval()
    out = {}
    x_all = to_model_range(images)
    c = images.shape[1]
    for r, ts in regions.items():
        ts_t = torch.as_tensor(ts, dtype=torch.long)
        g = torch.Generator().manual_seed(seed * 1_000_003 + r)
        total, n = 0.0, 0
        for _ in range(draws):
            for i in range(0, len(x_all), batch_size):
                x0 = x_all[i:i + batch_size]
                t = ts_t[torch.randint(len(ts_t), (len(x0),), generator=g)]
                noise = torch.randn(x0.shape, generator=g)
                xt = diffusion.q_sample(x0, t, noise)
                eps = model(xt.to(device), t.to(device)).float().cpu()[:, :c]
                total += ((eps - noise) ** 2).mean(dim=(1, 2, 3)).sum().item()
                n += len(x0)
        out[r] = total / n
    return out
