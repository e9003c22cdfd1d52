"""MACs and parameter counts measured on a real forward pass.

``macs`` is what the paper calls FLOPs: multiply-accumulates of convolutions and linears (with their
biases), counted by torch-pruning's counter (8.14 G for the ``cifar10`` preset; that counter skips
GroupNorm subclasses such as IDDPM's GroupNorm32, and so do we). The attention matmuls
(q k^T and w v) are functional ops that counter cannot see; they are measured by the attention
blocks themselves and reported alongside as ``attn_macs``.
"""

from __future__ import annotations

import torch


def probe_inputs(model, image_size: int, channels: int, t: int):
    """One zero image and timestep ``t`` on the model's device and dtype: the input MACs are counted on."""
    p = next(model.parameters())
    x = torch.zeros(1, channels, image_size, image_size, device=p.device, dtype=p.dtype)
    return x, torch.tensor([t], device=p.device)


@torch.no_grad()
def count(model: torch.nn.Module, image_size: int, channels: int, t: int = 0) -> dict:
    """Per-sample ``{"params", "macs", "attn_macs"}`` of ``model(x, t)`` for one image."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    x, tt = probe_inputs(model, image_size, channels, t)
    macs, params = tp.utils.count_ops_and_params(model, (x, tt))
    model(x, tt)
    attn = model.attention_macs() if hasattr(model, "attention_macs") else 0
    model.train(was_training)
    return {"params": int(params), "macs": int(macs), "attn_macs": int(attn)}


def progressive_cost(model, image_size: int, channels: int, sample_steps: int | None = None) -> dict:
    """Per-group counts and their averages as the paper reports them (Table 1: averaged over timesteps).

    ``avg_all``: each of the T timesteps weighs the same; ``avg_sampled``: the S respaced steps a sampler
    with ``sample_steps`` steps visits (each is run by the model of the group of its original timestep).
    """
    from core.model.respace import space_timesteps

    group_of = model.group_of.cpu().numpy()
    per_group = {}
    for g, m in model.models.items():
        t_any = int((group_of == int(g)).nonzero()[0][0])
        per_group[int(g)] = {**count(m, image_size, channels, t_any), "timesteps": int((group_of == int(g)).sum())}

    def average(ts) -> dict:
        return {
            key: sum(per_group[int(group_of[t])][key] for t in ts) / len(ts) for key in ("params", "macs", "attn_macs")
        }

    T = len(group_of)
    res = {"groups": per_group, "avg_all": average(range(T)), "num_timesteps": T}
    if sample_steps:
        res["avg_sampled"] = {**average(space_timesteps(T, sample_steps)), "steps": sample_steps}
    return res
