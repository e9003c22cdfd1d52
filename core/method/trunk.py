"""The shared trunk (``finetune.trunk shared``): group models that share one encoder and specialise only the decoder.

Beyond the paper. The multi-stage diffusion paper (arXiv 2312.09181) found one shared encoder with small
per-stage decoders better than both one network and separate networks at equal iterations. Here:

    U_i(x_t, t) = D_i(E(x_t, t), t)        E: the trunk's encoder, the same weights for every group i
                                           D_i: group i's decoder, pruned to its budget and fine-tuned on T(i)

    encoder E = time_embed, input_blocks, middle_block    (frozen after the trunk's fine-tune; shared)
    decoder D = output_blocks, out_norm, out_conv         (pruned and fine-tuned per group)

The time embedding belongs to the encoder: every encoder block reads it, so an encoder with a per-group
embedding would compute different features per group and would not be one encoder; its output width also feeds
every ResBlock's scale/shift, encoder and decoder alike, so no decoder-only pruning can touch it. The decoder
still conditions on t through its own blocks' ``emb_scale``/``emb_shift`` linears, which each group trains.

The trunk is the base fine-tuned on *all* timesteps (so it is not starved of data); each group's model is the
trunk with its decoder pruned to the group's budget (only units all of whose layers lie in the decoder: a unit
that reaches the encoder's channels, such as a skip connection's, stays whole), then fine-tuned with the encoder's
parameters frozen. A group's MACs are the encoder's plus its pruned decoder's.

Steps. Stage 2 keeps its total, N x S (N non-empty groups, S = ``finetune.steps``), so the equal-compute
control stays fair: each group gives r = round(share x S) of its S steps to the trunk
(``finetune.trunk_share``; ``config.trunk_split``), so

    trunk: N r steps on all timesteps        each decoder: S - r steps on its group's timesteps
    total: N r + N (S - r) = N S             (the control trains exactly that)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from core.method.units import Unit

ENCODER = ("time_embed", "input_blocks", "middle_block")
DECODER = ("output_blocks", "out_norm", "out_conv")


def in_encoder(name: str) -> bool:
    """Whether a parameter or module name (``input_blocks.3.0.in_conv.weight``) lies in the shared encoder."""
    return name.split(".", 1)[0] in ENCODER


def in_decoder(name: str) -> bool:
    return name.split(".", 1)[0] in DECODER


def decoder_only(unit: Unit) -> bool:
    """A unit every layer of which lies in the decoder (``Pruner(only=decoder_only)``): pruning it changes no
    encoder tensor, the channels a skip connection carries from the encoder included."""
    return bool(unit.members) and all(in_decoder(m) for m in unit.members)


def freeze_encoder(model) -> int:
    """Stop the encoder's parameters from training (``requires_grad`` off: AdamW skips them, and the EMA of an
    unchanged weight is that weight); returns how many parameters were frozen."""
    n = 0
    for name, p in model.named_parameters():
        if in_encoder(name):
            p.requires_grad_(False)
            n += p.numel()
    return n


def encoder_state(state: dict) -> dict:
    """The encoder's tensors of a state dict."""
    return {k: v for k, v in state.items() if in_encoder(k)}


def encoder_params(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if in_encoder(name))


def differing(reference: dict, states: Iterable[tuple[str, dict]]) -> list[str]:
    """The names (of ``(name, state dict)``) whose encoder tensors are not bit-identical to ``reference``'s."""
    import torch

    ref = encoder_state(reference)
    out = []
    for name, state in states:
        enc = encoder_state(state)
        if enc.keys() != ref.keys() or not all(torch.equal(enc[k].cpu(), v.cpu()) for k, v in ref.items()):
            out.append(name)
    return out


def share_encoder(models: dict) -> int:
    """Make every group model use the first one's encoder modules (equal weights, checked by the caller), so the
    progressive model holds one encoder and ``parameters()`` counts it once; returns the encoder's parameters."""
    first, *rest = models.values()
    for m in rest:
        for name in ENCODER:
            setattr(m, name, getattr(first, name))
    return encoder_params(first)


def reachable_macs(pruner) -> int:
    """The fewest MACs pruning ``pruner``'s units can reach: every unit at its minimum (one position per block)."""
    from core.method.prune import counts_for_ratio

    return pruner.macs_of(counts_for_ratio(pruner.units, 1.0))
