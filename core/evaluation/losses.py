"""Held-out losses: the denoising loss (L_simple, the eps MSE) per timestep region, with fixed noise and
timesteps so that models compare on equal terms."""

from __future__ import annotations

import torch

from core.model.diffusion import GaussianDiffusion, to_model_range


@torch.inference_mode()
def region_samples(
    model,
    diffusion: GaussianDiffusion,
    images: torch.Tensor,
    regions: dict[int, list[int]],
    draws: int = 4,
    seed: int = 0,
    batch_size: int = 256,
    device="cpu",
) -> dict[int, torch.Tensor]:
    """L_simple (eps MSE) of every (draw, image) per region of timesteps: every image is noised ``draws`` times
    at timesteps drawn uniformly from the region, with noise and timesteps fixed by ``seed`` so that models
    compare on equal terms (sample i of two models saw the same x_t and t: their differences are paired)."""
    model.eval()
    out = {}
    x_all = to_model_range(images)
    c = images.shape[1]
    for r, ts in regions.items():
        ts_t = torch.as_tensor(ts, dtype=torch.long)
        g = torch.Generator().manual_seed(seed * 1_000_003 + r)
        per = []
        for _ in range(draws):
            for i in range(0, len(x_all), batch_size):
                x0 = x_all[i : i + batch_size]
                t = ts_t[torch.randint(len(ts_t), (len(x0),), generator=g)]
                noise = torch.randn(x0.shape, generator=g)
                xt = diffusion.q_sample(x0, t, noise)
                eps = model(xt.to(device), t.to(device)).float().cpu()[:, :c]
                per.append(((eps - noise) ** 2).mean(dim=(1, 2, 3)))
        out[r] = torch.cat(per)
    return out


def region_losses(model, diffusion: GaussianDiffusion, images: torch.Tensor, regions: dict[int, list[int]], **kw):
    """The mean of ``region_samples`` per region (``kw``: its draws, seed, batch_size, device)."""
    per = region_samples(model, diffusion, images, regions, **kw)
    return {r: v.mean().item() for r, v in per.items()}


def mean_ci(x) -> list[float]:
    """95% normal interval of the mean of ``x`` (mean +- 1.96 standard errors)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    half = 1.96 * x.std().item() / len(x) ** 0.5 if len(x) > 1 else float("nan")
    m = x.mean().item()
    return [m - half, m + half]


def eval_images(cfg: dict, n: int, seed: int = 0) -> torch.Tensor:
    """Images to measure losses on: the held-out split when ``data.holdout`` is set, else a fixed subset."""
    from core.training.data import load_dataset, split_holdout

    train, held = split_holdout(load_dataset(cfg, split="all"), cfg["data"].get("holdout", 0))
    src = held if held is not None else train
    g = torch.Generator().manual_seed(seed)
    return src.get(torch.randperm(len(src), generator=g)[:n])


def loss_report(model, diffusion: GaussianDiffusion, images: torch.Tensor, sched, draws: int, device="cpu") -> dict:
    """Held-out eps-MSE per group and over all T (groups weighted by their number of timesteps), each with a
    95% interval; ``samples``: the per-sample losses [groups, draws x images] (for paired comparisons)."""
    regions = {g.index: g.timesteps for g in sched.nonempty}
    per = region_samples(model, diffusion, images, regions, draws=draws, device=device)
    weights = torch.tensor([len(ts) for ts in regions.values()], dtype=torch.float64)
    stacked = torch.stack([per[g].double() for g in regions])  # [groups, samples]
    overall = (stacked * (weights / weights.sum())[:, None]).sum(0)  # per-sample weighted loss
    return {
        "samples": stacked.numpy(),
        "loss": overall.mean().item(),
        "loss_ci": mean_ci(overall),
        "loss_groups": {str(g): per[g].mean().item() for g in regions},
        "loss_groups_ci": {str(g): mean_ci(per[g]) for g in regions},
    }
