"""Does an imported diffusers ``UNet2DModel`` compute what diffusers computes, at google/ddpm-cifar10-32's size?

    python bench/diffusers_parity.py [--batch 2] [--seed 0] [--folder DIR]

Builds a ``UNet2DModel`` with google/ddpm-cifar10-32's published config.json (3 x 32 x 32, block_out_channels
(128, 256, 256, 256), layers_per_block 2, AttnDownBlock2D / AttnUpBlock2D at 16 x 16 only, attention_head_dim null:
one head per block, downsample_padding 0, flip_sin_to_cos false, freq_shift 1, norm_eps 1e-6, GroupNorm(32),
3 outputs) with random weights (diffusers' initialisation plus N(0, 0.05^2) on every weight, so no layer is zero),
saves it with ``save_pretrained``, imports the folder as stepadapt does (safetensors, ``core.model.unet2d``), and
compares the two networks' float32 outputs on the same noisy images at several timesteps. ``--folder`` compares a
real local copy (e.g. ``hf download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32``) instead.

Also: params and MACs (``core.model.macs.count``: convs and linears, as the schedule measures them; attention
matmuls apart), what the check shows when one diffusers switch is left at IDDPM's value (its power), and the export
round trip (ours -> folder -> ``UNet2DModel.from_pretrained``). Writes bench/results/diffusers_parity.md.
Expected: float32 round-off (about 1e-6 of the output's scale); 35.7M params and about 6.1 GMACs (the size
Diff-Pruning reports for this model).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from core.model.macs import count  # noqa: E402
from core.model.to_diffusers import export_unet  # noqa: E402
from core.model.unet import build_unet  # noqa: E402
from core.model.unet2d import load_folder  # noqa: E402

# google/ddpm-cifar10-32's config.json (the keys that differ from UNet2DModel's defaults, and the sizes)
DDPM_CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=32,
    act_fn="silu",
    center_input_sample=False,
    mid_block_scale_factor=1,
    time_embedding_type="positional",
)
TIMESTEPS = (0, 1, 10, 250, 500, 999)


@torch.no_grad()
def diff(ours, theirs, x) -> tuple[float, float]:
    """Largest |ours - theirs| over ``TIMESTEPS``, and the output's largest magnitude."""
    worst, scale = 0.0, 0.0
    for t in TIMESTEPS:
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        a = theirs(x, tt).sample
        worst, scale = max(worst, float((ours(x, tt) - a).abs().max())), max(scale, float(a.abs().max()))
    return worst, scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folder", default=None, help="a local diffusers folder of google/ddpm-cifar10-32 instead")
    a = ap.parse_args()
    from diffusers import UNet2DModel

    tmp = Path(tempfile.mkdtemp(prefix="diffusers-parity-"))
    if a.folder:
        folder, weights = Path(a.folder), f"{a.folder} (published)"
        theirs = UNet2DModel.from_pretrained(str(folder), use_safetensors=True).eval()
    else:
        torch.manual_seed(a.seed)
        theirs = UNet2DModel(**DDPM_CIFAR10).eval()
        with torch.no_grad():
            for p in theirs.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        folder, weights = tmp / "ddpm-cifar10-32-random", f"random (seed {a.seed})"
        theirs.save_pretrained(str(folder))
    start = time.time()
    ours, arch, diffusion, _ = load_folder(folder)
    import_s = time.time() - start
    x = torch.randn(a.batch, 3, 32, 32, generator=torch.Generator().manual_seed(a.seed))
    start = time.time()
    max_abs, scale = diff(ours, theirs, x)
    compare_s = time.time() - start
    size = count(ours, 32, 3)
    their_params = sum(p.numel() for p in theirs.parameters())

    power = {}  # each switch at IDDPM's value: what the comparison would show
    for key, iddpm in (("time_flip_sin_to_cos", True), ("time_freq_shift", 0), ("downsample_padding", 1)):
        other = build_unet({**arch, key: iddpm}).eval()
        other.load_state_dict(ours.state_dict())
        power[key] = diff(other, theirs, x)[0]
    res = export_unet(ours, arch, diffusion, tmp / "exported")
    back = UNet2DModel.from_pretrained(str(tmp / "exported")).eval()
    round_trip = diff(ours, back, x)[0]

    lines = [
        f"Imported diffusers `UNet2DModel` of google/ddpm-cifar10-32's layout vs diffusers' own forward (float32, "
        f"batch {a.batch}, t in {list(TIMESTEPS)}, CPU {platform.machine()}, diffusers "
        f"{__import__('diffusers').__version__}); `python bench/diffusers_parity.py`.",
        "",
        "| weights | params (ours / diffusers) | MACs (convs + linears) | attention MACs | max abs diff | "
        "max rel diff | output scale | export round trip |",
        "|---|---|---|---|---|---|---|---|",
        f"| {weights} | {size['params']:,} / {their_params:,} | {size['macs'] / 1e9:.3f} G | "
        f"{size['attn_macs'] / 1e9:.3f} G | {max_abs:.2e} | {max_abs / scale:.2e} | {scale:.2f} | "
        f"{round_trip:.2e} |",
        "",
        "Power of the check: the largest difference when one switch keeps IDDPM's value instead of the folder's:",
        "",
        "| switch | max abs diff |",
        "|---|---|",
        *[f"| {k}={'true' if v is True else v} | {d:.2e} |" for (k, d), v in zip(power.items(), (True, 0, 1))],
        "",
        f"Settings read from the folder: diffusion {diffusion}; import {import_s:.1f} s, comparison {compare_s:.1f} s; "
        f"export reports max |ours - diffusers| {res.get('max_abs_diff', float('nan')):.2e}.",
    ]
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "diffusers_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
