"""Held-out losses: the denoising loss (L_simple, the eps MSE) per timestep region, with fixed noise and
timesteps so that models compare on equal terms."""
from __future__ import annotations

import torch

from core.model.diffusion import GaussianDiffusion, to_model_range


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


def eval_images(cfg: dict, n: int, seed: int = 0) -> torch.Tensor:
    """Images to measure losses on: the held-out split when ``data.holdout`` is set, else a fixed subset."""
    from core.training.data import load_dataset, split_holdout

    train, held = split_holdout(load_dataset(cfg, split="all"), cfg["data"].get("holdout", 0))
    src = held if held is not None else train
    g = torch.Generator().manual_seed(seed)
    return src.get(torch.randperm(len(src), generator=g)[:n])


def loss_report(model, diffusion: GaussianDiffusion, images: torch.Tensor, sched, draws: int, device="cpu") -> dict:
    """Held-out eps-MSE per group and over all T (groups weighted by their number of timesteps)."""
    regions = {g.index: g.timesteps for g in sched.nonempty}
    per = region_losses(model, diffusion, images, regions, draws=draws, device=device)
    total = sum(per[g] * len(ts) for g, ts in regions.items()) / sum(len(ts) for ts in regions.values())
    return {"loss": total, "loss_groups": {str(g): v for g, v in per.items()}}
