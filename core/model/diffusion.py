"""Gaussian diffusion as in "Improved Denoising Diffusion Probabilistic Models" (Nichol & Dhariwal 2021).

Notation follows the paper: beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s,
timesteps are 0-indexed (t = 0 is the first noising step, t = T-1 the last).
The model predicts eps and, with learned variance, an interpolation value v in [-1, 1] (Eq. 15). Without it
(DDPM's models, diffusers' ``UNet2DModel``) the variance is fixed: sigma_t^2 = beta_t ("large") or the posterior's
beta~_t ("small", diffusers' ``fixed_small``), and the loss is L_simple alone.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from core.model.betas import betas_for, cosine_alpha_bar  # noqa: F401  (the schedules live without torch)

# --------------------------------------------------------------------------- schedules

FIXED_VARIANCES = ("large", "small")  # sigma_t^2 = beta_t, or beta~_t (DDPM Sec. 3.2)


# --------------------------------------------------------------------------- likelihood helpers


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x | N(means, e^{2 log_scales})) for x on the 256-level grid scaled to [-1, 1] (DDPM's decoder L_0)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def mean_flat(x):
    return x.mean(dim=list(range(1, x.ndim)))


def _extract(arr: np.ndarray, t: torch.Tensor, shape) -> torch.Tensor:
    """arr[t] as a float tensor broadcastable to `shape`."""
    out = torch.from_numpy(arr).to(device=t.device)[t].float()
    return out.reshape(-1, *([1] * (len(shape) - 1)))


# --------------------------------------------------------------------------- diffusion


class GaussianDiffusion:
    """Forward process, posterior, model parameterisation, hybrid loss and samplers.

    ``timestep_map`` maps this process's step indices to the indices the model was trained on
    (identity here; a respaced process in ``respace.py`` overrides it).
    """

    def __init__(
        self,
        betas: np.ndarray,
        learn_sigma: bool = True,
        vlb_weight: float = 0.001,
        loss_timesteps: Optional[int] = None,
        fixed_variance: str = "large",
    ):
        """``betas`` [T]; ``fixed_variance``: the reverse variance of a model that does not learn it, "large"
        (sigma_t^2 = beta_t) or "small" (sigma_t^2 = beta~_t); ignored with ``learn_sigma``."""
        if fixed_variance not in FIXED_VARIANCES:
            raise ValueError(f"unknown fixed variance {fixed_variance!r} (use {' or '.join(FIXED_VARIANCES)})")
        betas = np.asarray(betas, dtype=np.float64)
        assert betas.ndim == 1 and (betas > 0).all() and (betas <= 1).all()
        self.betas = betas
        self.num_timesteps = len(betas)
        self.learn_sigma = learn_sigma
        self.fixed_variance = fixed_variance
        self.vlb_weight = vlb_weight
        # number of terms in L_vlb (T of the process the model is trained on)
        self.vlb_terms = loss_timesteps or self.num_timesteps
        self.timestep_map = np.arange(self.num_timesteps)

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # DDPM Eq. 7: beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0: clip the log to beta~_1 as IDDPM does
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        # mu~_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
        #       + sqrt(alpha_t)(1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # -- forward process
    def q_sample(self, x_start, t, noise=None):
        if noise is None:
            noise = torch.randn_like(x_start)
        return (
            _extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)."""
        mean = (
            _extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        var = _extract(self.posterior_variance, t, x_t.shape)
        log_var = _extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, var, log_var

    def predict_xstart_from_eps(self, x_t, t, eps):
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def predict_eps_from_xstart(self, x_t, t, x_start):
        return (_extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x_start) / _extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.shape
        )

    # -- model parameterisation
    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the model sees (original indices for a respaced process)."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    def split_output(self, out: torch.Tensor, channels: int):
        if self.learn_sigma:
            assert out.shape[1] == 2 * channels, "model must output eps and v (learn_sigma)"
            return out[:, :channels], out[:, channels:]
        return out, None

    def p_mean_variance(self, model: Callable, x, t, clip_denoised: bool = True, model_output=None):
        """p(x_{t-1} | x_t): mean from eps, variance from v (IDDPM Eq. 15):
        Sigma = exp(v log beta_t + (1 - v) log beta~_t), with v mapped from [-1, 1] to [0, 1]."""
        if model_output is None:
            model_output = model(x, self.model_t(t))
        eps, v = self.split_output(model_output, x.shape[1])
        if v is not None:
            min_log = _extract(self.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract(np.log(self.betas), t, x.shape)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        elif self.fixed_variance == "small":  # DDPM's sigma_t^2 = beta~_t (clipped to beta~_1 at t = 0)
            log_var = _extract(self.posterior_log_variance_clipped, t, x.shape)
        else:  # fixed large variance (DDPM's sigma^2 = beta, with beta~_1 at t = 0)
            log_var = _extract(np.log(np.append(self.posterior_variance[1], self.betas[1:])), t, x.shape)
        x_start = self.predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            x_start = x_start.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(x_start, x, t)
        return {"mean": mean, "log_variance": log_var, "pred_xstart": x_start, "eps": eps}

    # -- losses
    def vb_terms_bpd(self, model: Callable, x_start, x_t, t, model_output=None):
        """One term of L_vlb in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        the discretized decoder NLL -log p(x_0|x_1) for t = 0 (DDPM Eq. 5)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=False, model_output=model_output)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self, model: Callable, x_start, t, noise=None, teacher: Optional[Callable] = None, distill: float = 0.0
    ):
        """L_hybrid = L_simple + lambda L_vlb (IDDPM Eq. 16), per sample.

        L_simple = ||eps - eps_theta(x_t, t)||^2 (mean over dims); the VLB term sees the eps
        prediction through a stop-gradient so that it only trains the variance.
        With a ``teacher`` (the unpruned base), the student also matches its whole output (eps and variance)
        at the same x_t and t: L = L_hybrid + distill * ||f_theta(x_t, t) - f_teacher(x_t, t)||^2.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        out = model(x_t, self.model_t(t)).float()
        terms = self._hybrid(out, x_start, x_t, t, noise)
        if teacher is not None and distill > 0:
            with torch.no_grad():
                target = teacher(x_t, self.model_t(t)).float()
            terms["distill"] = mean_flat((out - target) ** 2)
            terms["loss"] = terms["loss"] + distill * terms["distill"]
        return terms

    def _hybrid(self, out, x_start, x_t, t, noise) -> dict:
        eps, v = self.split_output(out, x_start.shape[1])
        terms = {"mse": mean_flat((noise - eps) ** 2)}
        if v is not None:
            frozen = torch.cat([eps.detach(), v], dim=1)
            terms["vb"] = self.vb_terms_bpd(None, x_start, x_t, t, model_output=frozen)
            # L_vlb = sum of T terms, estimated by T * L_t; times lambda = 0.001 this is IDDPM's T/1000 * L_t
            terms["loss"] = terms["mse"] + self.vlb_weight * self.vlb_terms * terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    # -- sampling
    @torch.no_grad()
    def p_sample(self, model, x, t, generator=None, clip_denoised=True):
        out = self.p_mean_variance(model, x, t, clip_denoised)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise

    @torch.no_grad()
    def ddim_sample(self, model, x, t, eta: float = 0.0, generator=None, clip_denoised=True):
        """DDIM (Song et al. 2021, Eq. 12): x_{t-1} = sqrt(a_{t-1}) x0 + sqrt(1 - a_{t-1} - s^2) eps + s z."""
        out = self.p_mean_variance(model, x, t, clip_denoised)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        a = _extract(self.alphas_cumprod, t, x.shape)
        a_prev = _extract(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        mean = out["pred_xstart"] * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev - sigma**2) * eps
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        return mean + nonzero * sigma * noise

    @torch.no_grad()
    def sample(
        self,
        model,
        shape,
        method: str = "ancestral",
        eta: float = 0.0,
        generator=None,
        device="cpu",
        progress: Optional[Callable[[int], None]] = None,
        noise=None,
    ):
        """Run the reverse process from x_T ~ N(0, I) to x_0. ``method``: 'ancestral' or 'ddim'."""
        if method not in ("ancestral", "ddim"):
            raise ValueError(f"unknown sampler {method!r} (use ancestral or ddim)")
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            if method == "ancestral":
                x = self.p_sample(model, x, t, generator)
            else:
                x = self.ddim_sample(model, x, t, eta, generator)
            if progress is not None:
                progress(1)
        return x


class TimestepSampler:
    """Uniform timestep sampling over any given set of timesteps (all T by default).

    Stage 2 restricts a group model's training to its group with ``TimestepSampler(group_ts)``.
    """

    def __init__(self, timesteps: Iterable[int]):
        ts = torch.as_tensor(sorted(set(int(t) for t in timesteps)), dtype=torch.long)
        if len(ts) == 0:
            raise ValueError("cannot sample from an empty set of timesteps")
        self.timesteps = ts

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device="cpu") -> torch.Tensor:
        idx = torch.randint(len(self.timesteps), (n,), generator=generator)
        return self.timesteps[idx].to(device)


def create_diffusion(cfg: dict) -> GaussianDiffusion:
    """Build the training process from a config's ``diffusion`` section (plus ``model.learn_sigma``)."""
    d = cfg["diffusion"]
    return GaussianDiffusion(
        betas_for(d["noise_schedule"], d["steps"]),
        learn_sigma=cfg["model"]["learn_sigma"],
        vlb_weight=d["vlb_weight"],
        fixed_variance=d.get("fixed_variance", "large"),
    )


# -- the pixel range the process works in ------------------------------------------------------
def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
