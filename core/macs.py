"""MACs and parameter counts measured on a real forward pass.

``macs`` is what the paper calls FLOPs: multiply-accumulates of modules (convolutions, linears, norms),
counted by torch-pruning's counter (8.14 G for the ``cifar10`` preset). The attention matmuls
(q k^T and w v) are functional ops that counter cannot see; they are measured by the attention
blocks themselves and reported alongside as ``attn_macs``.
"""
from __future__ import annotations

import torch


def _probe(model, image_size: int, channels: int, t: int):
    p = next(model.parameters())
    x = torch.zeros(1, channels, image_size, image_size, device=p.device, dtype=p.dtype)
    return x, torch.tensor([t], device=p.device)


@torch.no_grad()
def count(model: torch.nn.Module, image_size: int, channels: int, t: int = 0) -> dict:
    """Per-sample ``{"params", "macs", "attn_macs"}`` of ``model(x, t)`` for one image."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    x, tt = _probe(model, image_size, channels, t)
    macs, params = tp.utils.count_ops_and_params(model, (x, tt))
    model(x, tt)
    attn = model.attention_macs() if hasattr(model, "attention_macs") else 0
    model.train(was_training)
    return {"params": int(params), "macs": int(macs), "attn_macs": int(attn)}
