"""Sample grids of the base, the control (when the run has one) and the progressive model from the same noise
(``samples/{which}_sS_seed0.png``), and the three side by side (``samples/side_by_side_sS_seed0.png``)."""

from __future__ import annotations

from core.names import SAMPLE_MODELS

NAME = "sample"
GROUPED = False


def sample_models(run) -> list[str]:
    """The run's models: the single-stage variant has neither a base nor a control."""
    from core.config import single_stage
    from core.manager.stages import dense, uniform

    cfg, one = run.config, single_stage(run.config)
    has = {"control": cfg["control"]["enabled"], "uniform": uniform.wanted(cfg), "dense-small": dense.wanted(cfg)}
    return [w for w in SAMPLE_MODELS if not (one and w != "progressive") and has.get(w, True)]


def sample_paths(run) -> dict:
    steps = run.config["sample"]["steps"]
    return {w: run.sample_grid(w, steps) for w in sample_models(run)}


def pending(run) -> list:
    paths = [*sample_paths(run).values(), run.sample_grid("side_by_side", run.config["sample"]["steps"])]
    return [] if all(p.exists() for p in paths) else [None]


def work(ctx) -> None:
    from core.method.artifacts import load_progressive, load_unet
    from core.model.diffusion import create_diffusion
    from core.model.sampling import sample_images, save_grid, save_side_by_side

    cfg = ctx.run.config
    s, m = cfg["sample"], cfg["model"]
    paths = sample_paths(ctx.run)
    total = len(paths) * -(-s["n"] // s["batch_size"]) * s["steps"]
    done = [0]

    def tick(k):
        done[0] += k
        ctx.heartbeat.set(progress=done[0], total=total)

    grids = {}
    for which, path in paths.items():
        model = (
            load_progressive(ctx.run.model(which), ctx.device)
            if which == "progressive"
            else load_unet(ctx.run.model(which), ctx.device)
        )
        ctx.heartbeat.set(message=f"sampling {s['n']} images from the {which} model, {s['steps']} steps")
        imgs = sample_images(
            model,
            create_diffusion(cfg),
            s["n"],
            image_size=m["image_size"],
            channels=m["in_channels"],
            steps=s["steps"],
            batch_size=s["batch_size"],
            seed=0,
            method=s["method"],
            device=ctx.device,
            progress=tick,
            channels_last=s["channels_last"],
        )
        save_grid(imgs, path)
        grids[which] = imgs
        ctx.log(f"{which}: {path}")
        ctx.produced(path, "samples")
    side = ctx.run.sample_grid("side_by_side", s["steps"])
    save_side_by_side(grids, side)
    ctx.produced(side, "samples")
