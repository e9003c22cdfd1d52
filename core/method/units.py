"""Prunable units of the UNet, from torch-pruning's dependency graph.

Units. torch-pruning's dependency graph splits the UNet's channels into *units*: sets of coupled
channels (a residual stream with its skip concatenations, a ResBlock's hidden channels with their
scale/shift linears and GroupNorm, the time-embedding width, ...). Removing position j of a unit
removes it from every layer of the unit, so the model stays valid. Each attention block adds one more
unit, its head dimension (``heads:NAME``): removing position d drops q, k and v's d-th channel in every
head and the matching input of ``proj``; head count and scale stay as built. A diffusers-family model has no
such units: its heads are pruned whole or not at all, and whole heads are not pruned.

Attention is pruned, not ignored. While the graph is traced, an attention block shows only its residual
coupling (``unet.stream_only()``) and a custom pruner cuts its ``norm``, ``qkv`` input and ``proj`` output
together with the stream; so no stream is frozen by attention.

GroupNorm stays valid without ``round_to``: a unit whose channels pass through GroupNorms with G groups
is cut into G equal contiguous blocks and loses the same number of positions from each block, so every
GroupNorm keeps G groups of equal size (a directly normalised unit keeps its channels' group membership).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch.nn as nn

from core.model import unet as U

# --------------------------------------------------------------------------- attention as a stream unit


def _attention_stream_pruner():
    import torch_pruning as tp
    from torch_pruning.pruner import function as F

    class AttentionStreamPruner(F.BasePruningFunc):
        """Cuts an attention block's residual-stream channels: norm, qkv input, proj output."""

        def prune_out_channels(self, layer, idxs):
            tp.prune_groupnorm_out_channels(layer.norm, idxs)
            tp.prune_conv_in_channels(layer.qkv, idxs)
            tp.prune_conv_out_channels(layer.proj, idxs)
            return layer

        prune_in_channels = prune_out_channels  # in and out are one stream (x + proj(attn(x)))

        def get_out_channels(self, layer):
            return layer.proj.out_channels

        def get_in_channels(self, layer):
            return layer.qkv.in_channels

    return AttentionStreamPruner()


def example_inputs(model: U.UNet):
    """The inputs a graph is traced (and MACs counted) with: one zero image at t = 0."""
    from core.model.macs import probe_inputs

    return probe_inputs(model, model.image_size, model.in_channels, 0)


def build_graph(model: U.UNet):
    """torch-pruning's dependency graph of ``model`` with attention blocks as stream units."""
    import torch_pruning as tp

    dg = tp.DependencyGraph()
    dg.register_customized_layer(U.AttentionBlock, _attention_stream_pruner())
    with U.stream_only():
        was = model.training
        dg.build_dependency(model, example_inputs=example_inputs(model))
        model.train(was)
    return dg


# --------------------------------------------------------------------------- units


@dataclass
class Unit:
    name: str  # root module name, or "heads:<attention block name>"
    kind: str  # "channels" or "heads"
    size: int  # prunable positions (channels, or the head dimension)
    blocks: int  # removal is spread equally over this many contiguous blocks (GroupNorm groups)
    members: list = field(default_factory=list)  # module names coupled in this unit

    @property
    def max_remove(self) -> int:
        """Positions that may go: all but one per block (a unit never disappears)."""
        return self.size - self.blocks

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "size": self.size, "blocks": self.blocks, "members": self.members}


def root_pruner(module):
    """torch-pruning's out-channel pruning function for a unit's root layer (a conv or a linear)."""
    import torch_pruning as tp

    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def units_of(model: U.UNet, dg=None) -> list[Unit]:
    """The prunable units of ``model`` (the image output conv is never pruned), sorted by name."""
    dg = dg or build_graph(model)
    names = {m: n for n, m in model.named_modules()}
    units = []
    for group in dg.get_all_groups(ignored_layers=[model.out_conv], root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target.module
        size = len(group[0][1])
        members = sorted({names[d.target.module] for d, _ in group if d.target.module in names})
        norms = [d.target.module for d, _ in group if isinstance(d.target.module, nn.GroupNorm)]
        norms += [d.target.module.norm for d, _ in group if isinstance(d.target.module, U.AttentionBlock)]
        blocks = 1
        for gn in norms:
            blocks = blocks * gn.num_groups // math.gcd(blocks, gn.num_groups)
        if size % blocks or size <= blocks:
            continue  # cannot keep its GroupNorms valid: frozen
        units.append(Unit(names[root], "channels", size, blocks, members=members))
    for name, m in model.named_modules():
        if isinstance(m, U.AttentionBlock) and getattr(model, "family", "iddpm") != "diffusers":
            # a diffusers UNet2DModel's heads are pruned whole or not at all; its config cannot express fewer
            # heads at a level's width either, so its attention is not pruned (its channels carry the budget)
            dh = m.proj.in_channels // m.num_heads
            if dh > 1:
                units.append(Unit(f"heads:{name}", "heads", dh, 1, members=[f"{name}.qkv", f"{name}.proj"]))
    return sorted(units, key=lambda u: u.name)


def head_rows(block: U.AttentionBlock, positions: Sequence[int]) -> tuple[list[int], list[int]]:
    """qkv output rows and proj input columns of head-dim positions (chunk-ordered q | k | v, heads inside)."""
    inner = block.proj.in_channels
    dh = inner // block.num_heads
    cols = [h * dh + d for h in range(block.num_heads) for d in positions]
    rows = [c * inner + j for c in range(3) for j in cols]
    return sorted(rows), sorted(cols)


def prune_heads(block: U.AttentionBlock, positions: Sequence[int]) -> None:
    import torch_pruning as tp

    rows, cols = head_rows(block, positions)
    tp.prune_conv_out_channels(block.qkv, rows)
    tp.prune_conv_in_channels(block.proj, cols)
