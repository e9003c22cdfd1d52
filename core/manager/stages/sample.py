"""Sample grids of the base and the progressive model from the same noise (``samples/{which}_sS_seed0.png``)."""
from __future__ import annotations

from core.names import SAMPLE_MODELS

NAME = "sample"
GROUPED = False


def sample_paths(run) -> dict:
    steps = run.config["sample"]["steps"]
    return {w: run.sample_grid(w, steps) for w in SAMPLE_MODELS}


def pending(run) -> list:
    return [] if all(p.exists() for p in sample_paths(run).values()) else [None]


def work(ctx) -> None:
    from core.method.artifacts import load_progressive, load_unet
    from core.model.diffusion import create_diffusion
    from core.model.sampling import sample_images, save_grid

    cfg = ctx.run.config
    s, m = cfg["sample"], cfg["model"]
    paths = sample_paths(ctx.run)
    total = 2 * -(-s["n"] // s["batch_size"]) * s["steps"]
    done = [0]

    def tick(k):
        done[0] += k
        ctx.heartbeat.set(progress=done[0], total=total)

    for which, path in paths.items():
        model = (load_progressive(ctx.run.model(which), ctx.device) if which == "progressive"
                 else load_unet(ctx.run.model(which), ctx.device))
        ctx.heartbeat.set(message=f"sampling {s['n']} images from the {which} model, {s['steps']} steps")
        imgs = sample_images(model, create_diffusion(cfg), s["n"], image_size=m["image_size"],
                             channels=m["in_channels"], steps=s["steps"], batch_size=s["batch_size"], seed=0,
                             method=s["method"], device=ctx.device, progress=tick,
                             channels_last=s["channels_last"])
        save_grid(imgs, path)
        ctx.log(f"{which}: {path}")
        ctx.produced(path, "samples")
