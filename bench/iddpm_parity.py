"""Does a converted improved-diffusion checkpoint compute what improved-diffusion's own UNet computes?

    git clone https://github.com/openai/improved-diffusion /path/to/improved-diffusion   # their code, once
    python bench/iddpm_parity.py --repo /path/to/improved-diffusion [--presets cifar10,imagenet64] [--ckpt FILE.pt]

For each preset, builds their ``UNetModel`` with the published flags (``--num_channels 128 --num_res_blocks 3
--learn_sigma True``, attention at 16 and 8, 4 heads, scale-shift norm; CIFAR-10 ``channel_mult`` (1,2,2,2),
ImageNet-64 (1,2,3,4)), gives every parameter random values (their zero-initialised output layers would hide
differences), converts its state dict with ``core.model.iddpm``, and compares the two networks' outputs in float32
on the same noisy images and timesteps. Their UNet is fed t * 1000 / T (what their diffusion passes with
``rescale_timesteps=True``); ours is fed t and scales it itself. ``--ckpt`` compares a real checkpoint instead of
random weights. Writes bench/results/iddpm_parity.{json,md}: the largest absolute and relative differences.
Expected: float32 round-off, about 1e-5 of the output's scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from core import config as C  # noqa: E402
from core.config import model_arch  # noqa: E402
from core.manager.bases import import_config  # noqa: E402
from core.model.iddpm import convert  # noqa: E402
from core.model.unet import build_unet  # noqa: E402


def theirs_for(preset: str, unet_module):
    m = C.preset(preset)["model"]
    return unet_module.UNetModel(
        in_channels=3,
        model_channels=m["model_channels"],
        out_channels=6,
        num_res_blocks=m["num_res_blocks"],
        attention_resolutions=tuple(m["image_size"] // r for r in m["attention_resolutions"]),
        dropout=0.0,
        channel_mult=tuple(m["channel_mult"]),
        num_heads=m["num_heads"],
        use_scale_shift_norm=True,
    )


def compare(preset: str, unet_module, ckpt, batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    theirs = theirs_for(preset, unet_module).eval()
    if ckpt:
        theirs.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    else:
        with torch.no_grad():
            for p in theirs.parameters():
                p.normal_(0, 0.05)
    cfg = import_config(C.preset(preset))
    arch = model_arch(cfg)
    ours = build_unet(arch).eval()
    ours.load_state_dict(convert(theirs.state_dict(), ours, preset))
    size, steps = arch["image_size"], cfg["diffusion"]["steps"]
    x = torch.randn(batch, 3, size, size)
    t = torch.randint(0, steps, (batch,))
    start = time.time()
    with torch.no_grad():
        a = theirs(x, t.float() * (1000.0 / steps))
        b = ours(x, t)
        # what the check would see if the conversion skipped a step: the power of the comparison
        ours.time_scale = 1.0
        no_rescale = float((a - ours(x, t)).abs().max())
        ours.time_scale = arch["time_scale"]
        sd = theirs.state_dict()
        for name, m in ours.named_modules():
            if hasattr(m, "qkv") and hasattr(m, "num_heads"):
                m.qkv.weight.copy_(sd[f"{name}.qkv.weight"][..., None])
                m.qkv.bias.copy_(sd[f"{name}.qkv.bias"])
        no_reorder = float((a - ours(x, t)).abs().max())
    diff = (a - b).abs()
    return {
        "preset": preset,
        "weights": str(ckpt) if ckpt else f"random (seed {seed})",
        "batch": batch,
        "params": sum(p.numel() for p in ours.parameters()),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / a.abs().max()),
        "output_scale": float(a.abs().max()),
        "diff_without_rescale": no_rescale,
        "diff_without_qkv_reorder": no_reorder,
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True, help="a checkout of openai/improved-diffusion")
    ap.add_argument("--presets", default="cifar10,imagenet64")
    ap.add_argument("--ckpt", default=None, help="a real checkpoint of the (single) preset given")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.path.insert(0, str(Path(a.repo).expanduser().resolve()))
    from improved_diffusion import unet as their_unet

    rows = [compare(p, their_unet, a.ckpt, a.batch, a.seed) for p in a.presets.split(",")]
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "iddpm_parity.json").write_text(json.dumps(rows, indent=2) + "\n")
    import platform

    lines = [
        f"Converted improved-diffusion UNet vs their own `UNetModel` (float32, batch {a.batch}, CPU "
        f"{platform.machine()}); the last two columns are what the check shows when the conversion skips the "
        "timestep rescale or the qkv reorder.",
        "",
        "| preset | weights | params | max abs diff | max rel diff | output scale | without rescale | "
        "without qkv reorder |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['preset']} | {r['weights']} | {r['params']:,} | {r['max_abs_diff']:.2e} | "
        f"{r['max_rel_diff']:.2e} | {r['output_scale']:.2f} | {r['diff_without_rescale']:.2e} | "
        f"{r['diff_without_qkv_reorder']:.2e} |"
        for r in rows
    ]
    (out / "iddpm_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
