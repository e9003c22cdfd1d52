"""The background a person sees: how far from black the border of each sampled digit stays, per model.

Some progressive sample grids show faint grey squares behind a few digits. This measures them: every model
samples the same noise (same seed), and each image's background is the median of its 4-pixel border (digits are
centred, so the border is background), in grey levels of 255. The table gives the mean with a 95% bootstrap
interval, the share of images at 2 levels or more, and the count at 4 or more (visible as a patch on black).

    python bench/background.py RUN:MODEL [RUN:MODEL ...] [--samples 256] [--steps 25] [--seed 1] [--name NAME]

Writes bench/results/NAME.{json,md} (default ``background``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def border_levels(imgs) -> "torch.Tensor":  # noqa: F821
    """Per image, the median of its 4-pixel border in grey levels; ``imgs`` uint8 [n, C, H, W] -> float [n]."""
    import torch

    x = imgs.float().mean(1)  # [n, H, W]: channels averaged
    ring = torch.cat(
        [x[:, :4].flatten(1), x[:, -4:].flatten(1), x[:, 4:-4, :4].flatten(1), x[:, 4:-4, -4:].flatten(1)], 1
    )
    return ring.median(1).values


def summary(levels, seed: int = 0) -> dict:
    """Mean border level with a 95% percentile-bootstrap interval over images, and the shares above 2 and 4."""
    import numpy as np

    v = levels.numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    boots = rng.choice(v, size=(2000, len(v)), replace=True).mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "mean_ci": [float(lo), float(hi)],
        "share_ge2": float((v >= 2).mean()),
        "count_ge4": int((v >= 4).sum()),
        "max": float(v.max()),
    }


def sample_model(run, which: str, n: int, steps: int, seed: int):
    from core.method.artifacts import load_progressive, load_unet
    from core.model.diffusion import create_diffusion
    from core.model.sampling import sample_images

    path = run.model(which)
    if not path.exists():
        sys.exit(f"error: run {run.name} has no {which} model")
    model = load_progressive(path) if which == "progressive" else load_unet(path)
    cfg, m = run.config, run.config["model"]
    return sample_images(
        model,
        create_diffusion(cfg),
        n,
        image_size=m["image_size"],
        channels=m["in_channels"],
        steps=steps,
        batch_size=cfg["sample"]["batch_size"],
        seed=seed,
        method=cfg["sample"]["method"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="RUN:MODEL")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--name", default="background")
    a = ap.parse_args()
    from core.runs import open_run

    rows = []
    for spec in a.models:
        run_name, _, which = spec.partition(":")
        if not which:
            sys.exit(f"error: give RUN:MODEL, not {spec!r}")
        run = open_run(run_name, a.runs_dir)
        imgs = sample_model(run, which, a.samples, a.steps, a.seed)
        rows.append({"run": run.name, "model": which, **summary(border_levels(imgs))})
        r = rows[-1]
        print(f"{spec}: mean {r['mean']:.2f} [{r['mean_ci'][0]:.2f}, {r['mean_ci'][1]:.2f}], {r['count_ge4']} at >= 4")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    meta = {"samples": a.samples, "steps": a.steps, "seed": a.seed}
    (out / f"{a.name}.json").write_text(json.dumps({"settings": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        f"Border of each sampled image (median of its 4-pixel frame), grey levels of 255; {a.samples} images per "
        f"model, {a.steps} steps, seed {a.seed} (the same noise for every model).",
        "",
        "| run | model | mean level [95%] | share >= 2 | images >= 4 | max |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['model']} | {r['mean']:.2f} [{r['mean_ci'][0]:.2f}, {r['mean_ci'][1]:.2f}] | "
            f"{r['share_ge2']:.0%} | {r['count_ge4']} / {r['n']} | {r['max']:.0f} |"
        )
    (out / f"{a.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote bench/results/{a.name}.md")


if __name__ == "__main__":
    main()
