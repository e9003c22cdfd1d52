"""Importance criteria: interchangeable objects that score every position of every prunable unit.

``scores(model, units, dg, ctx)`` returns ``{unit name: tensor[unit.size]}``; low scores are pruned first.
Channel units are scored with torch-pruning's group importances (all coupled layers); head-dimension
units with the same quantity over their q/k/v rows and proj columns.

  random     uniform random scores (seeded)
  magnitude  L2 norm of each position's weights (``lamp=True``: LAMP-normalised, Lee et al. 2021 [16])
  taylor     first-order Taylor |w * dL/dw| with L the diffusion loss at the group's timesteps
  diff       Diff-Pruning (Fang et al. 2023): Taylor accumulated over timesteps in ascending order,
             stopping once a step's loss falls below ``thr`` times the largest loss seen (the remaining,
             noisier steps carry little information about the structure to keep)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from core.model import unet as U
from core.names import IMPORTANCE_CRITERIA, IMPORTANCE_METHODS


@dataclass
class LossContext:
    """The data of one group's losses: importance batches, separate held-out images, its timesteps, and how to
    get a batch's loss at given timesteps (what gradient-based criteria and the loss before/after use)."""

    diffusion: object
    images: torch.Tensor  # uint8 [N, C, H, W] used for importance estimation
    eval_images: Optional[torch.Tensor]  # uint8 [M, C, H, W] for the loss before/after (disjoint from ``images``)
    timesteps: list  # the group's timesteps
    batch_size: int = 32
    batches: int = 4
    seed: int = 0
    device: str = "cpu"

    def held_out(self, batches: int, seed: int) -> "LossContext":
        """The same context over the held-out images, with its own batch count and seed."""
        return replace(self, images=self.eval_images, eval_images=None, batches=batches, seed=seed)

    def loss_at(self, model, t_values: torch.Tensor, batch: int, key: str = "loss") -> torch.Tensor:
        from core.model.diffusion import to_model_range

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + batch)
        idx = torch.randint(len(self.images), (len(t_values),), generator=g)
        x0 = to_model_range(self.images[idx]).to(self.device)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        return self.diffusion.training_losses(model, x0, t_values.to(self.device), noise)[key].mean()


def _channel_scores(imp, dg, model, u) -> torch.Tensor:
    from core.method.units import root_pruner

    root = model.get_submodule(u.name)
    group = dg.get_pruning_group(root, root_pruner(root), list(range(u.size)))
    s = imp(group)
    if s is None:  # no scorable layer in the unit
        return torch.zeros(u.size)
    return s.detach().float().cpu()


def _head_entries(block: U.AttentionBlock):
    """Per head-dim position d: the qkv rows and proj columns it owns."""
    inner = block.proj.in_channels
    dh = inner // block.num_heads
    for d in range(dh):
        cols = [h * dh + d for h in range(block.num_heads)]
        rows = [c * inner + j for c in range(3) for j in cols]
        yield d, rows, cols


def _head_scores(block: U.AttentionBlock, value: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum of ``value`` over each position's entries (value maps a weight-shaped tensor to per-entry scores)."""
    qkv_w = value("qkv_w").flatten(1)
    proj_w = value("proj_w").flatten(1)
    out = []
    for _, rows, cols in _head_entries(block):
        out.append(qkv_w[rows].sum() + proj_w[:, cols].sum())
    return torch.stack(out).float().cpu()


class Importance:
    name = "base"
    needs_loss = False

    def scores(self, model, units, dg, ctx: Optional[LossContext] = None) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"method": self.name}


class RandomImportance(Importance):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, model, units, dg, ctx=None):
        g = torch.Generator().manual_seed(self.seed)
        return {u.name: torch.rand(u.size, generator=g) for u in units}

    def describe(self):
        return {"method": self.name, "seed": self.seed}


class MagnitudeImportance(Importance):
    name = "magnitude"

    def __init__(self, p: int = 2, lamp: bool = False):
        self.p, self.lamp = p, lamp

    def scores(self, model, units, dg, ctx=None):
        import torch_pruning as tp

        imp = tp.importance.LAMPImportance(p=self.p) if self.lamp else tp.importance.GroupMagnitudeImportance(p=self.p)
        out = {}
        for u in units:
            if u.kind == "heads":
                blk = model.get_submodule(u.name.split(":", 1)[1])
                w = {"qkv_w": blk.qkv.weight.detach(), "proj_w": blk.proj.weight.detach()}
                s = _head_scores(blk, lambda k: w[k].abs() ** self.p)
                if self.lamp:
                    s = _lamp(s)
                out[u.name] = s
            else:
                out[u.name] = _channel_scores(imp, dg, model, u)
        return out

    def describe(self):
        return {"method": "lamp" if self.lamp else self.name, "p": self.p}


def _lamp(s: torch.Tensor) -> torch.Tensor:
    """LAMP: a score divided by the sum of the scores not smaller than it."""
    order = s.argsort()
    sorted_s = s[order]
    tail = sorted_s.flip(0).cumsum(0).flip(0)
    out = torch.empty_like(s)
    out[order] = sorted_s / tail.clamp(min=1e-12)
    return out


class TaylorImportance(Importance):
    """|w * dL/dw| summed over each position's weights, L at timesteps drawn from the group."""

    name = "taylor"
    needs_loss = True

    def _accumulate(self, model, ctx: LossContext) -> dict:
        ts = torch.as_tensor(ctx.timesteps, dtype=torch.long)
        g = torch.Generator().manual_seed(ctx.seed)
        for b in range(ctx.batches):
            t = ts[torch.randint(len(ts), (ctx.batch_size,), generator=g)]
            ctx.loss_at(model, t, b).backward()
        return {"batches": ctx.batches}

    def scores(self, model, units, dg, ctx=None):
        import torch_pruning as tp

        if ctx is None:
            raise ValueError(f"{self.name} importance needs data and timesteps")
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.enable_grad():
            self.info = self._accumulate(model, ctx)
        imp = tp.importance.GroupTaylorImportance()
        out = {}
        for u in units:
            if u.kind == "heads":
                blk = model.get_submodule(u.name.split(":", 1)[1])
                wg = {
                    "qkv_w": (blk.qkv.weight * blk.qkv.weight.grad).abs(),
                    "proj_w": (blk.proj.weight * blk.proj.weight.grad).abs(),
                }
                out[u.name] = _head_scores(blk, lambda k: wg[k].detach())
            else:
                out[u.name] = _channel_scores(imp, dg, model, u)
        model.zero_grad(set_to_none=True)
        return out


class DiffPruningImportance(TaylorImportance):
    name = "diff"

    def __init__(self, thr: float = 0.05, steps: int = 16):
        self.thr, self.steps = thr, steps

    def _accumulate(self, model, ctx: LossContext) -> dict:
        ts = sorted(ctx.timesteps)
        k = min(self.steps, len(ts))
        picks = [ts[round(i * (len(ts) - 1) / max(k - 1, 1))] for i in range(k)]
        loss_max, used = 0.0, []
        for i, t in enumerate(picks):
            loss = ctx.loss_at(model, torch.full((ctx.batch_size,), t, dtype=torch.long), i, key="mse")
            val = float(loss.detach())
            loss_max = max(loss_max, val)
            if used and val < self.thr * loss_max:
                break  # the remaining steps are uninformative
            loss.backward()
            used.append(t)
        return {"timesteps_used": used, "thr": self.thr}

    def describe(self):
        return {"method": self.name, "thr": self.thr, "steps": self.steps}


def make_importance(method: str, seed: int = 0) -> Importance:
    """The criterion ``method`` names (``names.IMPORTANCE_CRITERIA``: its class here and its settings)."""
    if method not in IMPORTANCE_CRITERIA:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(IMPORTANCE_METHODS)}")
    cls, settings = IMPORTANCE_CRITERIA[method]
    kwargs = {k: v for k, v in settings.items() if k != "seeded"}
    return globals()[cls](seed=seed, **kwargs) if settings.get("seeded") else globals()[cls](**kwargs)
