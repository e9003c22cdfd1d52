"""diffusers' ``UNet2DModel`` (DDPM's UNet: ``google/ddpm-cifar10-32`` and kin) as this project's UNet, and back.

A ``save_pretrained`` folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (read with safetensors:
nothing is unpickled) and may hold the scheduler's ``scheduler_config.json`` (beside them or in ``scheduler/``; a
pipeline folder keeps the model in ``unet/``). With the switches of ``unet.py`` (``time_flip_sin_to_cos``,
``time_freq_shift``, ``downsample_padding``, ``norm_eps``, ``head_channels``) our UNet computes what theirs computes;
the layouts differ as follows (L levels, up block u is level L-1-u):

    theirs                                           ours
    conv_in                                          input_blocks.0.layer
    time_embedding.linear_1 / linear_2               time_embed.0 / time_embed.2
    down_blocks.i.resnets.j / attentions.j           input_blocks.k.0 / input_blocks.k.1
    down_blocks.i.downsamplers.0.conv                input_blocks.k.0.op
    mid_block.resnets.0 / attentions.0 / resnets.1   middle_block.0 / .1 / .2
    up_blocks.u.resnets.j / attentions.j             output_blocks.o.0 / output_blocks.o.1
    up_blocks.u.upsamplers.0.conv                    output_blocks.o.N.conv (the block's last layer)
    conv_norm_out / conv_out                         out_norm / out_conv
    <res>.norm1 conv1 norm2 conv2 conv_shortcut      <res>.in_norm in_conv out_norm out_conv skip
    <res>.time_emb_proj [C, E]                       <res>.emb_shift            (resnet_time_scale_shift default)
                        [2C, E]                      <res>.emb_scale (first C rows), <res>.emb_shift (last C)
    <attn>.group_norm                                <attn>.norm
    <attn>.to_q / to_k / to_v  Linear [C, C] each    <attn>.qkv Conv2d [3C, C, 1, 1], rows [q; k; v]
    <attn>.to_out.0            Linear [C, C]         <attn>.proj Conv2d [C, C, 1, 1]
    (older files: query / key / value / proj_attn)

Both split q, k and v into heads as (head, channel within head) and compute x + W_o softmax(q k^T / sqrt(d)) v.
A config or a scheduler this engine cannot reproduce is refused in one line (``UserError``) before anything is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from core.errors import UserError

WEIGHTS = "diffusion_pytorch_model.safetensors"
MAX_JSON_BYTES = 1 << 20
DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}  # supported block types -> with attention
UP = {"UpBlock2D": False, "AttnUpBlock2D": True}
# UNet2DModel's defaults (diffusers 0.2x-0.4x): what a config.json that omits a key means
DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
VARIANCES = {"fixed_small": "small", "fixed_small_log": "small", "fixed_large": "large", "fixed_large_log": "large"}


# --------------------------------------------------------------------------- reading a folder
def read_json(path: Path, what: str) -> dict:
    """A small JSON object file, or a one-line error."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise UserError(f"{path} is larger than {MAX_JSON_BYTES // 1024} KiB; not a diffusers {what}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is not a JSON {what}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON {what} (an object of settings)")
    return data


def model_dir(folder) -> Optional[Path]:
    """The folder holding the model's config.json: ``folder`` itself or its ``unet/`` (a pipeline); None if neither."""
    folder = Path(folder).expanduser()
    for d in (folder, folder / "unet"):
        if (d / "config.json").is_file():
            return d
    return None


def is_folder(path) -> bool:
    """Whether ``path`` is a diffusers ``save_pretrained`` folder (of a model, or of a pipeline with ``unet/``);
    a run's folder, which has a config.json too, is not (it has meta.json)."""
    from core.runs import META_FILE

    p = Path(path).expanduser()
    return p.is_dir() and model_dir(p) is not None and not (p / META_FILE).is_file()


def scheduler_file(folder) -> Optional[Path]:
    """The scheduler's config in a model or pipeline folder, if there is one."""
    folder, mdir = Path(folder).expanduser(), model_dir(folder)
    name = "scheduler_config.json"
    for f in (mdir / name, folder / name, folder / "scheduler" / name):
        if f.is_file():
            return f
    return None


def weight_files(mdir: Path) -> list[Path]:
    """The safetensors file(s) of a model folder (one file, or the shards its index names); pickles are refused."""
    single, index = mdir / WEIGHTS, mdir / (WEIGHTS + ".index.json")
    if single.is_file():
        return [single]
    if index.is_file():
        names = sorted(set((read_json(index, "weights index").get("weight_map") or {}).values()))
        if not names or any(not isinstance(n, str) or Path(n).name != n for n in names):
            raise UserError(f"{index} names no weight files in its folder")
        missing = [n for n in names if not (mdir / n).is_file()]
        if missing:
            raise UserError(f"{mdir / missing[0]} (a shard {index.name} names) is missing")
        return [mdir / n for n in names]
    pickled = sorted(p.name for p in mdir.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise UserError(
            f"{mdir} has no {WEIGHTS}, only {pickled[0]}: stepadapt reads safetensors only (a pickle can run code); "
            "see docs/diffusers.md for the one-time conversion"
        )
    raise UserError(f"{mdir} has no weights file ({WEIGHTS})")


def read_weights(mdir: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """Every tensor of the folder's safetensors file(s), by name; a truncated or foreign file is one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files, sd = weight_files(mdir), {}
    for f in files:
        try:
            sd.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"cannot read {f}: {first} (truncated, or not a safetensors file)") from None
    if not sd:
        raise UserError(f"{files[0]} holds no tensors")
    return sd, files


# --------------------------------------------------------------------------- config -> our settings
def arch_of(config: dict) -> dict:
    """Our ``model`` settings for a ``UNet2DModel`` config.json, or a one-line error naming what is not supported."""
    cls = config.get("_class_name")
    if cls != "UNet2DModel":
        if isinstance(cls, str) and "Condition" in cls:
            raise UserError(f"config.json describes a {cls}, a conditional UNet; stepadapt takes unconditional ones")
        raise UserError(f"config.json describes a {cls or 'model without _class_name'}, not a UNet2DModel")
    c = {**DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    down, up, widths = list(c["down_block_types"]), list(c["up_block_types"]), list(c["block_out_channels"])
    b0, groups, size = widths[0] if widths else 0, c["norm_num_groups"], c["sample_size"]
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    refusals = [
        (c["num_class_embeds"] is None and c["class_embed_type"] is None, "it is class-conditional (class embeddings)"),
        (c["time_embedding_type"] == "positional", f"time_embedding_type {c['time_embedding_type']!r}"),
        (not c["center_input_sample"], "center_input_sample"),
        (c["act_fn"] == "silu", f"act_fn {c['act_fn']!r}"),
        (c["mid_block_type"] == "UNetMidBlock2D" and c["add_attention"], "a middle block without attention"),
        (c["mid_block_scale_factor"] == 1, "mid_block_scale_factor != 1"),
        ((c["downsample_type"], c["upsample_type"]) == ("conv", "conv"), "resnet down/up-sampling"),
        (c["resnet_time_scale_shift"] in ("default", "scale_shift"), f"{c['resnet_time_scale_shift']!r} resnets"),
        (c["attn_norm_num_groups"] in (None, groups), "attn_norm_num_groups other than norm_num_groups"),
        (
            c["resnet_time_scale_shift"] == "default" or c["attn_norm_num_groups"] == groups,
            "scale_shift resnets whose middle attention has no GroupNorm",
        ),
        (c["downsample_padding"] in (0, 1), f"downsample_padding {c['downsample_padding']}"),
        (all(t in DOWN for t in down), f"down blocks {[t for t in down if t not in DOWN][:1]}"),
        (all(t in UP for t in up), f"up blocks {[t for t in up if t not in UP][:1]}"),
        (len(down) == len(up) == len(widths) >= 1, "unequal numbers of down blocks, up blocks and widths"),
        (isinstance(size, int) and size >= 8 and size & (size - 1) == 0, f"sample_size {size!r} (a power of two)"),
        (b0 > 0 and all(w % b0 == 0 for w in widths), f"block_out_channels {widths} (multiples of the first)"),
        (all(isinstance(g, int) and g > 0 and w % g == 0 for g in [groups] for w in widths), "norm_num_groups"),
        (c["time_embedding_dim"] in (None, 4 * b0), "a time_embedding_dim other than 4 x block_out_channels[0]"),
        (c["out_channels"] in (c["in_channels"], 2 * c["in_channels"]), f"{c['out_channels']} output channels"),
    ]
    for ok, what in refusals:
        if not ok:
            raise UserError(f"unsupported UNet2DModel: {what}")
    attn = [DOWN[t] for t in down]
    if attn != [UP[t] for t in reversed(up)]:
        raise UserError("unsupported UNet2DModel: its up blocks' attention does not mirror its down blocks'")
    head = c["attention_head_dim"]  # None: one head per block; else heads of `head` channels
    attn_widths = [w for w, a in zip(widths, attn) if a] + [widths[-1]]
    if head is not None and not all(w % head == 0 for w in attn_widths):
        raise UserError(f"unsupported UNet2DModel: attention_head_dim {head} does not divide {attn_widths}")
    return {
        "image_size": size,
        "in_channels": c["in_channels"],
        "model_channels": b0,
        "num_res_blocks": c["layers_per_block"],
        "channel_mult": [w // b0 for w in widths],
        "attention_resolutions": [size >> i for i, a in enumerate(attn) if a],
        "num_heads": 1,
        "dropout": float(c["dropout"]),
        "learn_sigma": c["out_channels"] == 2 * c["in_channels"],
        "scale_shift_norm": c["resnet_time_scale_shift"] == "scale_shift",
        "norm_groups": groups,
        "rescale_timesteps": False,
        "family": "diffusers",
        "time_flip_sin_to_cos": bool(c["flip_sin_to_cos"]),
        "time_freq_shift": int(c["freq_shift"]),
        "downsample_padding": c["downsample_padding"],
        "norm_eps": float(c["norm_eps"]),
        "head_channels": int(head or 0),
    }


def diffusion_of(sched: Optional[dict], learn_sigma: bool) -> dict:
    """Our ``diffusion`` settings for a scheduler config (None: DDPMScheduler's defaults), or a one-line error."""
    s = dict(sched or {})
    cls = s.get("_class_name", "DDPMScheduler")
    if cls not in ("DDPMScheduler", "DDIMScheduler"):
        raise UserError(f"unsupported scheduler {cls}: stepadapt trains and samples DDPM's process (DDPMScheduler)")
    T = s.get("num_train_timesteps", 1000)
    kind, start, end = s.get("beta_schedule", "linear"), s.get("beta_start", 1e-4), s.get("beta_end", 0.02)
    variance = s.get("variance_type", "fixed_small")
    refusals = [
        (isinstance(T, int) and T >= 2, f"num_train_timesteps {T!r}"),
        (s.get("trained_betas") is None, "trained_betas"),
        (
            s.get("prediction_type", "epsilon") == "epsilon",
            f"prediction_type {s.get('prediction_type')!r} (epsilon is)",
        ),
        (not s.get("thresholding", False), "thresholding"),
        (s.get("clip_sample", True) and s.get("clip_sample_range", 1.0) == 1.0, "x0 not clipped to [-1, 1]"),
        (s.get("rescale_betas_zero_snr", False) is False, "rescale_betas_zero_snr"),
        (kind in ("linear", "squaredcos_cap_v2"), f"beta_schedule {kind!r} (linear and squaredcos_cap_v2 are)"),
        (variance in VARIANCES or variance == "learned_range", f"variance_type {variance!r}"),
    ]
    for ok, what in refusals:
        if not ok:
            raise UserError(f"unsupported scheduler ({cls}): {what}")
    # our linear schedule over T steps: beta from 1e-4 * 1000/T to 0.02 * 1000/T (DDPM's, rescaled to T)
    want = (1e-4 * 1000 / T, 0.02 * 1000 / T)
    if kind == "linear" and not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip((start, end), want)):
        raise UserError(
            f"unsupported scheduler ({cls}): linear betas {start:g}..{end:g} over {T} steps; stepadapt's run "
            f"{want[0]:g}..{want[1]:g} (DDPM's 1e-4..0.02 scaled by 1000/T)"
        )
    if (variance == "learned_range") != learn_sigma:
        have = "outputs its variance" if learn_sigma else "outputs the noise only"
        raise UserError(f"the model {have} but the scheduler's variance_type is {variance!r}")
    return {
        "steps": T,
        "noise_schedule": "linear" if kind == "linear" else "cosine",
        "fixed_variance": VARIANCES.get(variance, "large"),
    }


# --------------------------------------------------------------------------- tensor names, both ways
Entry = tuple[list[str], list[str], Callable, Callable]  # ours, theirs, theirs -> ours, ours -> theirs
RENAMED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _same(*ts):
    return list(ts)


def _to_conv(t):  # Linear [o, i] -> 1x1 Conv2d [o, i, 1, 1]
    return t[:, :, None, None] if t.dim() == 2 else t


def _to_linear(t):
    return t[:, :, 0, 0] if t.dim() == 4 else t


def entries(model) -> list[Entry]:
    """Every tensor of our ``model`` with the tensor(s) of theirs it is made of, and the maps both ways."""
    from core.model.unet import AttentionBlock

    out: list[Entry] = []

    def plain(o, t):
        for p in ("weight", "bias"):
            out.append(([f"{o}.{p}"], [f"{t}.{p}"], _same, _same))

    def res(o, t, m):
        for a, b in (("in_norm", "norm1"), ("in_conv", "conv1"), ("out_norm", "norm2"), ("out_conv", "conv2")):
            plain(f"{o}.{a}", f"{t}.{b}")
        if not isinstance(m.skip, nn.Identity):
            plain(f"{o}.skip", f"{t}.conv_shortcut")
        if not m.scale_shift:
            return plain(f"{o}.emb_shift", f"{t}.time_emb_proj")
        for p in ("weight", "bias"):  # theirs: [scale; shift] = time_emb_proj(e).chunk(2)
            ours, theirs = [f"{o}.emb_scale.{p}", f"{o}.emb_shift.{p}"], [f"{t}.time_emb_proj.{p}"]
            out.append((ours, theirs, lambda w: list(w.chunk(2)), lambda a, b: [torch.cat([a, b])]))

    def attn(o, t):
        plain(f"{o}.norm", f"{t}.group_norm")
        for p in ("weight", "bias"):
            qkv = [f"{t}.to_q.{p}", f"{t}.to_k.{p}", f"{t}.to_v.{p}"]
            out.append(([f"{o}.qkv.{p}"], qkv, lambda q, k, v: [_to_conv(torch.cat([q, k, v]))], _split3))
            out.append(([f"{o}.proj.{p}"], [f"{t}.to_out.0.{p}"], lambda w: [_to_conv(w)], lambda w: [_to_linear(w)]))

    plain("time_embed.0", "time_embedding.linear_1")
    plain("time_embed.2", "time_embedding.linear_2")
    plain("input_blocks.0.layer", "conv_in")
    levels, k = len(model.channel_mult), 1
    for i in range(levels):
        for j in range(model.num_res_blocks):
            blk = model.input_blocks[k]
            res(f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", blk[0])
            if len(blk) > 1:
                attn(f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}")
            k += 1
        if i < levels - 1:
            plain(f"input_blocks.{k}.0.op", f"down_blocks.{i}.downsamplers.0.conv")
            k += 1
    res("middle_block.0", "mid_block.resnets.0", model.middle_block[0])
    attn("middle_block.1", "mid_block.attentions.0")
    res("middle_block.2", "mid_block.resnets.1", model.middle_block[2])
    o = 0
    for u in range(levels):
        for j in range(model.num_res_blocks + 1):
            blk = model.output_blocks[o]
            res(f"output_blocks.{o}.0", f"up_blocks.{u}.resnets.{j}", blk[0])
            for n, layer in enumerate(list(blk)[1:], 1):
                if isinstance(layer, AttentionBlock):
                    attn(f"output_blocks.{o}.{n}", f"up_blocks.{u}.attentions.{j}")
                else:
                    plain(f"output_blocks.{o}.{n}.conv", f"up_blocks.{u}.upsamplers.0.conv")
            o += 1
    plain("out_norm", "conv_norm_out")
    plain("out_conv", "conv_out")
    return out


def _split3(w):  # our qkv [3C, C, 1, 1] -> their to_q, to_k, to_v [C, C]
    return [_to_linear(x) for x in w.chunk(3)]


def renamed(sd: dict) -> dict:
    """Older files' attention names (query, key, value, proj_attn) as today's (to_q, to_k, to_v, to_out.0)."""
    out = {}
    for name, t in sd.items():
        head, _, leaf = name.rpartition(".")
        stem, _, last = head.rpartition(".")
        out[f"{stem}.{RENAMED[last]}.{leaf}" if last in RENAMED and ".attentions." in name else name] = t
    return out


def to_ours(sd: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Their state dict as ours for ``model``; every tensor is checked, a misfit is one line (config vs weights)."""
    sd, target, used, out = renamed(sd), model.state_dict(), set(), {}
    ents = entries(model)
    covered = {k for e in ents for k in e[0]}
    if covered != set(target):  # a bug here, not the user's: the map must cover our model exactly
        raise AssertionError(f"key map and model differ: {sorted(covered ^ set(target))[:4]}")
    for ours, theirs, fwd, back in ents:
        for name, want in zip(theirs, back(*[target[k] for k in ours])):
            if name not in sd:
                raise UserError(f"the weights have no {name}, which config.json's model has: config and weights differ")
            if tuple(sd[name].shape) != tuple(want.shape):
                raise UserError(
                    f"{name} has shape {list(sd[name].shape)} but config.json's model has {list(want.shape)}: "
                    "config and weights differ"
                )
        for k, v in zip(ours, fwd(*[sd[n] for n in theirs])):
            out[k] = v.to(target[k].dtype).clone().contiguous()
        used.update(theirs)
    extra = sorted(set(sd) - used)
    if extra:
        raise UserError(
            f"the weights hold {len(extra)} tensor(s) config.json's model has no place for, e.g. {extra[0]}: "
            "config and weights differ"
        )
    return out


def to_theirs(model) -> dict[str, torch.Tensor]:
    """Our (possibly pruned) model's tensors under diffusers' names."""
    state, out = model.state_dict(), {}
    for ours, theirs, _, back in entries(model):
        for name, t in zip(theirs, back(*[state[k] for k in ours])):
            out[name] = t.detach().cpu().contiguous()
    return out


def load_folder(folder) -> tuple:
    """(our eval-mode model, its ``model`` settings, the ``diffusion`` settings, the files read) of a diffusers
    folder; nothing is written, and every way the folder does not fit is a one-line ``UserError``."""
    from core.model.unet import build_unet

    mdir = model_dir(folder)
    if mdir is None:
        raise UserError(f"{folder} is not a diffusers save_pretrained folder (no config.json, nor unet/config.json)")
    arch = arch_of(read_json(mdir / "config.json", "model config"))
    sfile = scheduler_file(folder)
    diffusion = diffusion_of(read_json(sfile, "scheduler config") if sfile else None, arch["learn_sigma"])
    sd, files = read_weights(mdir)
    model = build_unet(arch, seed=0)
    model.load_state_dict(to_ours(sd, model), strict=True)
    return model.eval(), arch, diffusion, {"config": mdir / "config.json", "scheduler": sfile, "weights": files}
