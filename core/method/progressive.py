"""The progressive denoiser: one model per timestep group, each timestep routed to its group's model.

``forward(x, t)`` takes *original* timesteps (a respaced process maps its steps to original indices
before calling the model, see ``respace.py``), looks up each sample's group in the timestep -> group
table, runs every group's part of the batch through that group's model and puts the outputs back in
batch order. Every group model stays resident; nothing is copied or reloaded per step.

With a shared trunk (``trunk.py``) the group models hold one encoder module between them (``trunk``: its record,
``{"shared": True, "encoder_params", "params_total", ...}``; None for separate models), so ``parameters()``
counts it once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class ProgressiveDenoiser(nn.Module):
    def __init__(self, models: dict[int, nn.Module], group_of: np.ndarray | list[int], trunk: dict | None = None):
        super().__init__()
        self.trunk = trunk
        self.models = nn.ModuleDict({str(g): m for g, m in models.items()})
        table = torch.as_tensor(np.asarray(group_of), dtype=torch.long)
        missing = sorted(set(table.tolist()) - set(models))
        if missing:
            raise ValueError(f"timesteps routed to groups without a model: {missing}")
        self.register_buffer("group_of", table, persistent=False)
        self.out_channels = next(iter(models.values())).out_channels

    @property
    def num_timesteps(self) -> int:
        return len(self.group_of)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        groups = self.group_of[t.long()]
        first = groups[0]
        if bool((groups == first).all()):  # the sampling case: one timestep for the whole batch
            return self.models[str(int(first))](x, t)
        out = x.new_empty((x.shape[0], self.out_channels, *x.shape[2:]))
        for g in groups.unique().tolist():
            idx = (groups == g).nonzero(as_tuple=True)[0]
            out[idx] = self.models[str(g)](x[idx], t[idx]).to(out.dtype)
        return out
