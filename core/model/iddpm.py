"""improved-diffusion's UNet checkpoints (openai/improved-diffusion, Nichol & Dhariwal 2021) as this project's UNet.

The two UNets compute the same function; they differ in layout only (see ``unet.py``):

    theirs                                   ours
    input_blocks.0.0                         input_blocks.0.layer
    <res>.in_layers.0 / .2                   <res>.in_norm / .in_conv
    <res>.emb_layers.1  [2C, E]              <res>.emb_scale [C, E] (first half), <res>.emb_shift (second half)
                        [C, E]               <res>.emb_shift (without scale-shift norm)
    <res>.out_layers.0 / .3                  <res>.out_norm / .out_conv
    <res>.skip_connection                    <res>.skip
    <attn>.qkv     Conv1d [3C, C, 1]         <attn>.qkv  Conv2d [3C, C, 1, 1]
                   rows per head: q_h k_h v_h               rows per chunk: q (all heads), k, v
    <attn>.proj_out Conv1d [C, C, 1]         <attn>.proj Conv2d [C, C, 1, 1]
    out.0 / out.2                            out_norm / out_conv

Their attention reshapes the qkv output to (batch * heads, 3d, hw) and splits each head's 3d rows into q, k, v,
so row ``h*3d + j*d + i`` of theirs (j = 0, 1, 2 for q, k, v) is row ``j*C + h*d + i`` of ours; the head count
is not in the state dict and is the preset's (4 for both published models). Their network sees the timestep
scaled by 1000/T (``rescale_timesteps=True``): an imported model records ``model.rescale_timesteps``.

Nothing is written unless every tensor of our model is filled from exactly one of theirs with the right shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from core.errors import UserError

Transform = Callable[[torch.Tensor], torch.Tensor]


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """A checkpoint file as a state dict (tensors only; nothing is unpickled but tensors), or a one-line error."""
    from core.runs import load_torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    sd = load_torch(path, "checkpoint")
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(
            f"{path} is not a state dict (a mapping of tensor names to tensors), as improved-diffusion saves its models"
        )
    return {str(k): v for k, v in sd.items()}


def qkv_to_chunks(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows ordered per head (q_0 k_0 v_0 q_1 ...) -> chunk ordered (q_0 q_1 ... k_0 ... v_0 ...)."""
    rows = w.shape[0]
    if rows % (3 * heads):
        raise UserError(f"a qkv projection of {rows} rows does not split into {heads} heads of q, k and v")
    d = rows // (3 * heads)
    return w.reshape(heads, 3, d, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def _half(first: bool) -> Transform:
    def take(t: torch.Tensor) -> torch.Tensor:
        n = t.shape[0] // 2
        return t[:n] if first else t[n:]

    return take


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _to_2d(t: torch.Tensor) -> torch.Tensor:
    return t[..., None] if t.dim() == 3 else t  # Conv1d [o, i, 1] -> Conv2d [o, i, 1, 1]


def key_map(model) -> dict[str, tuple[str, Transform]]:
    """For every tensor of our ``model``: the name of the tensor of theirs it comes from, and how."""
    from core.model.unet import AttentionBlock, ResBlock

    out: dict[str, tuple[str, Transform]] = {}

    def both(ours: str, theirs: str, fn: Transform = _same):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = (f"{theirs}.{p}", fn)

    both("time_embed.0", "time_embed.0")
    both("time_embed.2", "time_embed.2")
    both("input_blocks.0.layer", "input_blocks.0.0")
    both("out_norm", "out.0")
    both("out_conv", "out.2")
    for name, m in model.named_modules():
        if isinstance(m, ResBlock):
            both(f"{name}.in_norm", f"{name}.in_layers.0")
            both(f"{name}.in_conv", f"{name}.in_layers.2")
            if m.scale_shift:  # their one linear [scale | shift]
                both(f"{name}.emb_scale", f"{name}.emb_layers.1", _half(True))
                both(f"{name}.emb_shift", f"{name}.emb_layers.1", _half(False))
            else:
                both(f"{name}.emb_shift", f"{name}.emb_layers.1")
            both(f"{name}.out_norm", f"{name}.out_layers.0")
            both(f"{name}.out_conv", f"{name}.out_layers.3")
            if not isinstance(m.skip, torch.nn.Identity):
                both(f"{name}.skip", f"{name}.skip_connection")
        elif isinstance(m, AttentionBlock):
            heads = m.num_heads
            both(f"{name}.norm", f"{name}.norm")
            both(f"{name}.qkv", f"{name}.qkv", lambda t, h=heads: _to_2d(qkv_to_chunks(t, h)))
            both(f"{name}.proj", f"{name}.proj_out", _to_2d)
        elif name.endswith(".op") or name.endswith(".conv"):  # Downsample.op, Upsample.conv: same names
            both(name, name)
    return out


def describe(sd: dict[str, torch.Tensor]) -> dict:
    """What a state dict of their layout says about its model (for messages)."""
    info = {}
    first, last = sd.get("input_blocks.0.0.weight"), sd.get("out.2.weight")
    if first is not None and first.dim() >= 2:
        info["model_channels"], info["in_channels"] = int(first.shape[0]), int(first.shape[1])
    if last is not None:
        info["out_channels"] = int(last.shape[0])
    emb = sd.get("input_blocks.1.0.emb_layers.1.weight")
    res = sd.get("input_blocks.1.0.in_layers.2.weight")
    if emb is not None and res is not None:
        info["scale_shift_norm"] = int(emb.shape[0]) == 2 * int(res.shape[0])
    info["input_blocks"] = len({k.split(".")[1] for k in sd if k.startswith("input_blocks.")})
    if "label_emb.weight" in sd:
        info["num_classes"] = int(sd["label_emb.weight"].shape[0])
    return info


def _fits(sd: dict, model, preset: str) -> None:
    """One line for the first way the checkpoint's model differs from the preset's, if it does."""
    info = describe(sd)
    if "input_blocks.0.0.weight" not in sd or "out.2.weight" not in sd:
        raise UserError("the checkpoint is not an improved-diffusion UNet (no input_blocks.0.0 / out.2 tensors)")
    if "num_classes" in info:
        raise UserError(
            f"the checkpoint is class-conditional ({info['num_classes']} classes, label_emb); "
            "stepadapt's models are unconditional"
        )
    if info.get("in_channels") != model.in_channels:
        raise UserError(
            f"the checkpoint takes {info.get('in_channels')}-channel images; preset {preset} has "
            f"{model.in_channels} (model.in_channels)"
        )
    if info.get("out_channels") != model.out_channels:
        want = "learns the variance (learn_sigma=True)" if model.learn_sigma else "predicts the noise only"
        have = (
            "learns the variance"
            if info.get("out_channels") == 2 * model.in_channels
            else "does not learn the variance"
        )
        raise UserError(
            f"the checkpoint {have} ({info.get('out_channels')} output channels) but preset {preset} "
            f"{want}: {model.out_channels} output channels (model.learn_sigma)"
        )
    if info.get("model_channels") != model.model_channels:
        raise UserError(
            f"the checkpoint has {info.get('model_channels')} base channels; preset {preset} has "
            f"{model.model_channels} (model.model_channels)"
        )
    if "scale_shift_norm" in info and info["scale_shift_norm"] != all(
        getattr(m, "scale_shift", True) for m in model.modules() if hasattr(m, "scale_shift")
    ):
        flag = str(info["scale_shift_norm"]).lower()
        raise UserError(
            f"the checkpoint was trained with use_scale_shift_norm={info['scale_shift_norm']}; "
            f"pass -S model.scale_shift_norm={flag}"
        )
    ours = len(model.input_blocks)
    if info["input_blocks"] != ours:
        raise UserError(
            f"the checkpoint has {info['input_blocks']} input blocks, preset {preset}'s model {ours}: "
            "another image size, channel_mult or num_res_blocks (is it a model for another dataset?)"
        )


def convert(sd: dict[str, torch.Tensor], model, preset: str = "this") -> dict[str, torch.Tensor]:
    """Their state dict as ours for ``model`` (every tensor checked; a ``UserError`` names the first misfit)."""
    _fits(sd, model, preset)
    mapping = key_map(model)
    target = model.state_dict()
    if set(mapping) != set(target):  # a bug here, not the user's: the map must cover our model exactly
        raise AssertionError(f"key map and model differ: {sorted(set(mapping) ^ set(target))[:4]}")
    used, out = set(), {}
    for ours, (theirs, fn) in mapping.items():
        if theirs not in sd:
            raise UserError(f"the checkpoint has no {theirs} (needed for {ours}); is it a model of preset {preset}?")
        t = fn(sd[theirs])
        if tuple(t.shape) != tuple(target[ours].shape):
            raise UserError(
                f"{theirs} has shape {list(sd[theirs].shape)}, which does not fit preset {preset}'s "
                f"{ours} {list(target[ours].shape)}"
            )
        out[ours] = t.to(target[ours].dtype).clone().contiguous()
        used.add(theirs)
    extra = sorted(set(sd) - used)
    if extra:
        raise UserError(
            f"the checkpoint has {len(extra)} tensor(s) preset {preset}'s model has no place for, e.g. {extra[0]}"
        )
    return out


def import_model(path, arch: dict, preset: str = "this"):
    """The model of ``arch`` with the weights of improved-diffusion checkpoint ``path``; nothing half-done."""
    from core.model.unet import build_unet

    sd = read_state_dict(path)
    model = build_unet(arch)
    model.load_state_dict(convert(sd, model, preset), strict=True)
    return model.eval()
