"""Timestep respacing (IDDPM Sec. 4): sample with S of the T training steps.

Keeping the steps S = {s_1 < ... < s_K} of a process with cumulative products alpha_bar_t,
the respaced process has beta'_k = 1 - alpha_bar_{s_k} / alpha_bar_{s_{k-1}} (alpha_bar_{s_0} := 1).
Its step k is shown to the model as the original timestep s_k (``timestep_map``), so a model
trained on T steps, or a progressive model routing by original timestep, runs unchanged.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from core.model.diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps of ``range(num_timesteps)``, always keeping 0 and T-1."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot respace {num_timesteps} steps to {count}")
    if count == 1:
        return [num_timesteps - 1]
    return sorted(set(int(round(x)) for x in np.linspace(0, num_timesteps - 1, count)))


class SpacedDiffusion(GaussianDiffusion):
    def __init__(self, base_betas: np.ndarray, use_timesteps: Iterable[int], **kwargs):
        base_betas = np.asarray(base_betas, dtype=np.float64)
        keep = sorted(set(int(t) for t in use_timesteps))
        alphas_cumprod = np.cumprod(1.0 - base_betas)
        new_betas, last = [], 1.0
        for t in keep:
            new_betas.append(1 - alphas_cumprod[t] / last)
            last = alphas_cumprod[t]
        kwargs.setdefault("loss_timesteps", len(base_betas))
        super().__init__(np.array(new_betas), **kwargs)
        self.timestep_map = np.array(keep, dtype=np.int64)


def respaced(diffusion: GaussianDiffusion, steps: int) -> GaussianDiffusion:
    """The process ``diffusion`` respaced to ``steps`` steps (itself when steps == T)."""
    if steps == diffusion.num_timesteps:
        return diffusion
    return SpacedDiffusion(
        diffusion.betas,
        space_timesteps(diffusion.num_timesteps, steps),
        learn_sigma=diffusion.learn_sigma,
        vlb_weight=diffusion.vlb_weight,
        fixed_variance=diffusion.fixed_variance,
    )
