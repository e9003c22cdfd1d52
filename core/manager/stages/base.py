"""Stage 1: the base denoiser trained on all timesteps (``models/base.pt``)."""

from __future__ import annotations

from typing import Optional

from core.config import model_arch, single_stage
from core.method.fields import artifact_step
from core.training.spec import TrainSpec, stage_spec

NAME = "base"
GROUPED = False


def pending(run) -> list:
    if single_stage(run.config):  # no stage 1 in the single-stage variant
        return []
    step = artifact_step(run.model("base"))
    return [] if step is not None and step >= run.config["train"]["steps"] else [None]


def base_spec(run, cfg: dict, steps: Optional[int] = None, **changes) -> TrainSpec:
    """The stage-1 job of ``run`` as its config says (``changes`` override spec fields)."""
    t = cfg["train"]
    spec = stage_spec(
        run,
        "base",
        cfg,
        t["steps"] if steps is None else steps,
        cfg["seed"],
        extra={"arch": model_arch(cfg), "stage": "base"},
        keep=list(t.get("keep") or []),
        milestones=run.milestones(),
    )
    for key, val in changes.items():
        setattr(spec, key, val)
    return spec


def record_if_finished(run) -> bool:
    """Once stage 1 is finished, the sha256 and size of ``models/base.pt`` in ``meta.json`` (``runs.record_base``):
    what ``fork`` and ``show`` check the file against later. Returns whether it was recorded."""
    from core.runs import record_base

    if single_stage(run.config) or pending(run) or not run.model("base").is_file():
        return False
    record_base(run)
    return True


def work(ctx) -> None:
    from core.model.diffusion import create_diffusion
    from core.model.unet import build_unet
    from core.runs import record_base
    from core.training.data import load_dataset
    from core.training.devices import distributed
    from core.training.loop import train

    cfg = ctx.run.config
    data = load_dataset(cfg)
    spec = base_spec(ctx.run, cfg)
    ctx.heartbeat.set(progress=0, total=spec.steps)
    model = build_unet(model_arch(cfg), seed=cfg["seed"])
    main = distributed()[1] == 0  # under torchrun only rank 0 writes files
    if main:
        record_base(ctx.run, finished=False)  # a record of an earlier stage 1 no longer holds while it trains
    train(
        spec,
        model,
        create_diffusion(cfg),
        data,
        resume=spec.ckpt.exists(),
        device=ctx.device,
        **ctx.train_hooks("base", None),
    )
    ctx.produced(spec.model_out, "model")
    ctx.produced(spec.ckpt, "checkpoint")
    if main:
        record_if_finished(ctx.run)  # sha256 and size in meta.json: what fork and show check the file against
