"""Beta schedules, in numpy alone: what the SNR schedule needs from the diffusion without loading torch.

alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s (IDDPM's notation; t = 0 is the first noising step).
"""

from __future__ import annotations

import math

import numpy as np


def cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    """IDDPM Eq. 17: f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), here with t already divided by T."""
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def betas_for(schedule: str, num_timesteps: int) -> np.ndarray:
    """Beta schedule of T steps: 'linear' (DDPM, rescaled to T) or 'cosine' (IDDPM Eq. 17)."""
    if schedule == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if schedule == "cosine":
        # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped to 0.999 to avoid singularities near t = T
        return np.array(
            [
                min(1 - cosine_alpha_bar((i + 1) / num_timesteps) / cosine_alpha_bar(i / num_timesteps), 0.999)
                for i in range(num_timesteps)
            ],
            dtype=np.float64,
        )
    raise ValueError(f"unknown noise schedule {schedule!r} (use linear or cosine)")


def alphas_cumprod(cfg: dict) -> np.ndarray:
    """alpha_bar_t [T] of a config's ``diffusion`` section, as ``GaussianDiffusion`` computes it."""
    d = cfg["diffusion"]
    return np.cumprod(1.0 - betas_for(d["noise_schedule"], d["steps"]))
