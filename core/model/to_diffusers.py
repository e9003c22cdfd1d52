"""Our UNet (either family, pruned or not) as a diffusers ``UNet2DModel`` folder, where diffusers can express it.

``UNet2DModel``'s config has one width per level (``block_out_channels``: every resnet's hidden and output width),
one ``attention_head_dim`` and one ``norm_num_groups``, and feeds the network t as is. A model whose widths, heads,
groups or timestep scale that cannot express (a pruned model, as a rule: pruning cuts each unit on its own) is
not written; ``export_unet`` says why. The tensor names map both ways through ``unet2d.entries``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from core.model.unet2d import to_theirs


def config_for(model, arch: dict) -> tuple[Optional[dict], Optional[str]]:
    """The ``UNet2DModel`` config of our (possibly pruned) ``model`` built from ``arch``, or why there is none.

    Widths are read off the model (block_out_channels from each level's first resnet, the time embedding's width);
    whether every other tensor fits that config is checked by ``export_unet``."""
    from core.model.unet import AttentionBlock

    if arch.get("time_scale", 1.0) != 1.0:
        return None, f"its network sees t * {arch['time_scale']:g} (rescale_timesteps); a UNet2DModel sees t"
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    groups, eps = sorted({m.num_groups for m in norms}), sorted({m.eps for m in norms})
    if len(groups) > 1 or len(eps) > 1:
        return None, f"its GroupNorms have {groups} groups; a UNet2DModel has one norm_num_groups for all"
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    dims = sorted({m.proj.in_channels // m.num_heads for m in blocks})
    for m in blocks:
        built, now = round(m.scale**-4), m.proj.in_channels // m.num_heads  # scale = built ** -1/4
        if built != now:
            return None, (
                f"its attention head size was pruned from {built} to {now} channels, and the block keeps its softmax "
                f"scale 1/sqrt({built}); a UNet2DModel's is 1/sqrt(head size)"
            )
    if all(m.num_heads == 1 for m in blocks):
        head = None  # one head of the block's width
    elif len(dims) == 1:
        head = dims[0]
    else:
        return None, f"its attention blocks have heads of {dims} channels; a UNet2DModel has one attention_head_dim"
    levels, k, widths, attn = len(model.channel_mult), 1, [], []
    for i in range(levels):
        blk = model.input_blocks[k]
        widths.append(blk[0].out_conv.out_channels)
        attn.append(len(blk) > 1)
        k += model.num_res_blocks + (i < levels - 1)
    emb = model.time_embed[2].out_features
    return {
        "sample_size": model.image_size,
        "in_channels": model.in_channels,
        "out_channels": model.out_conv.out_channels,
        "time_embedding_dim": None if emb == 4 * widths[0] else emb,
        "freq_shift": model.time_freq_shift,
        "flip_sin_to_cos": model.time_flip_sin_to_cos,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": widths,
        "layers_per_block": model.num_res_blocks,
        "downsample_padding": arch.get("downsample_padding", 1),
        "dropout": float(arch.get("dropout", 0.0)),
        "attention_head_dim": head,
        "norm_num_groups": groups[0],
        "attn_norm_num_groups": groups[0],
        "norm_eps": eps[0],
        "resnet_time_scale_shift": "scale_shift" if model.middle_block[0].scale_shift else "default",
    }, None


def scheduler_config(diffusion: dict, learn_sigma: bool) -> dict:
    """DDPMScheduler's settings for our ``diffusion`` section (the inverse of ``diffusion_of``)."""
    T = diffusion["steps"]
    out = {"num_train_timesteps": T, "prediction_type": "epsilon", "clip_sample": True}
    if diffusion["noise_schedule"] == "linear":  # ours: 1e-4 * 1000/T .. 0.02 * 1000/T
        out.update(beta_schedule="linear", beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T)
    else:
        out.update(beta_schedule="squaredcos_cap_v2")
    fixed = {"small": "fixed_small", "large": "fixed_large"}[diffusion.get("fixed_variance", "large")]
    out["variance_type"] = "learned_range" if learn_sigma else fixed
    return out


@torch.no_grad()
def max_difference(model, unet, seed: int = 0, timesteps=(0, 1, 250, 999)) -> float:
    """Largest |ours - theirs| of the two models' outputs on two random images at ``timesteps``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, model.in_channels, model.image_size, model.image_size, generator=g)
    worst = 0.0
    for t in timesteps:
        tt = torch.full((2,), t, dtype=torch.long)
        worst = max(worst, (model(x, tt) - unet(x, tt).sample).abs().max().item())
    return worst


def export_unet(model, arch: dict, diffusion: dict, folder) -> dict:
    """Write our ``model`` as a diffusers folder (config.json, diffusion_pytorch_model.safetensors,
    scheduler_config.json) that ``UNet2DModel.from_pretrained`` loads. Returns ``{"max_abs_diff": d}`` (ours vs
    theirs), or ``{"reason": why}`` when a UNet2DModel config cannot express the model (nothing written then)."""
    from diffusers import DDPMScheduler, UNet2DModel

    model = model.float().eval().to(memory_format=torch.contiguous_format)
    config, reason = config_for(model, arch)
    if reason:
        return {"reason": reason}
    if model.model_channels != config["block_out_channels"][0]:  # the sinusoid's width is not pruned with conv_in
        return {
            "reason": f"its first level was pruned to {config['block_out_channels'][0]} channels while its timestep "
            f"embedding keeps {model.model_channels}; a UNet2DModel ties the two (block_out_channels[0])"
        }
    unet, theirs = UNet2DModel(**config).eval(), to_theirs(model)
    want = unet.state_dict()
    for name, t in want.items():
        have = theirs.get(name)
        if have is None or tuple(have.shape) != tuple(t.shape):
            shape = "absent" if have is None else list(have.shape)
            return {
                "reason": f"its pruned widths vary within a level ({name} is {shape}, a UNet2DModel with "
                f"block_out_channels {config['block_out_channels']} has {list(t.shape)}); a UNet2DModel gives every "
                "resnet of a level that level's width, hidden and output"
            }
    extra = sorted(set(theirs) - set(want))
    if extra:
        return {"reason": f"a UNet2DModel of its config has no {extra[0]}"}
    unet.load_state_dict(theirs, strict=True)
    out = {"max_abs_diff": max_difference(model, unet)}
    Path(folder).mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(str(folder), safe_serialization=True)
    DDPMScheduler(**scheduler_config(diffusion, config["out_channels"] == 2 * config["in_channels"])).save_config(
        str(folder)
    )
    return out
