"""The equal-compute control: stage 1 trained on, from its final checkpoint (weights, EMA, optimiser state),
on all timesteps, for as many steps and images as every group's fine-tune used together, with the
fine-tune's learning rate, batch size and EMA decay (``models/control.pt``).

The progressive model had stage 1 plus N fine-tunes; the control has exactly the same training in one
network. "Progressive beats base" can be the extra steps; "progressive beats control" is the method. This
is the paper's Table 2 comparison at equal steps, built into every run (``control.enabled``).
"""

from __future__ import annotations

from typing import Optional

from core.config import model_arch, shared_trunk, single_stage
from core.errors import UserError
from core.method.fields import artifact_fields, artifact_step
from core.method.schedule import nonempty_groups
from core.training.spec import TrainSpec, stage_spec

NAME = "control"
GROUPED = False


def added_steps(run) -> Optional[int]:
    """Steps every non-empty group's fine-tune trained, together (with a shared trunk, ``finetune.trunk shared``,
    the trunk's steps and every decoder's); None until each group has its model."""
    groups = nonempty_groups(run)
    if not groups:
        return None
    steps = [artifact_step(run.model(run.group_stage(g))) for g in groups]
    if shared_trunk(run.config):
        steps.append(artifact_step(run.model("trunk")))
    return None if any(s is None for s in steps) else sum(steps)


def pending(run) -> list:
    if not run.config["control"]["enabled"] or single_stage(run.config):  # no base to continue
        return []
    added = added_steps(run)
    return [] if added is not None and artifact_fields(run.model("control")).get("added_steps") == added else [None]


def work(ctx) -> None:
    run_training(ctx, train_control, NAME)


def run_training(ctx, train_fn, name: str) -> None:
    """A control's job: ``train_fn`` (this module's ``train_control`` or another control's) with the job's
    heartbeat and hooks, then its model and checkpoint recorded as the job's artifacts."""
    spec = train_fn(
        ctx.run,
        ctx.device,
        ctx.log,
        lambda total: ctx.heartbeat.set(progress=0, total=total),
        ctx.train_hooks(name, None),
    )
    ctx.produced(spec.model_out, "model")
    ctx.produced(spec.ckpt, "checkpoint")


def train_control(run, device="cpu", log=print, on_total=None, hooks=None):
    """Train (or resume) the control of ``run``; returns its ``TrainSpec``."""
    import shutil

    from core.model.unet import build_unet
    from core.training.devices import distributed

    cfg = run.config
    added = added_steps(run)
    if added is None:
        raise UserError("the control needs every non-empty group fine-tuned first (its length is their steps)")
    base_step = artifact_step(run.ckpt("base"))
    if base_step is None:
        raise UserError(
            f"the control starts from stage 1's checkpoint, and {run.ckpt('base')} is missing or unreadable"
        )
    spec = control_spec(run, cfg, added, base_step)
    dist, rank, _ = distributed()  # under torchrun (DDP) rank 0 prepares the checkpoint, the others wait for it
    if rank == 0:
        earlier = artifact_fields(spec.ckpt).get("spec", {}).get("extra", {})
        if spec.ckpt.exists() and earlier.get("added_steps") != added:  # the fine-tunes changed since: start again
            log(f"control: the fine-tunes now total {added} steps (was {earlier.get('added_steps')}); restarting")
            spec.ckpt.unlink()
        if not spec.ckpt.exists():  # start: a copy of stage 1's final state
            tmp = spec.ckpt.with_suffix(".copy")
            shutil.copyfile(run.ckpt("base"), tmp)
            tmp.replace(spec.ckpt)
        log(
            f"control: stage 1 (step {base_step}) trained on for {added} steps of {spec.batch_size} images on all "
            f"timesteps, as every group's fine-tune together"
        )
    if dist is not None:
        dist.barrier()
    return train_spec(spec, build_unet(model_arch(cfg), seed=cfg["seed"]), cfg, device, on_total, hooks, resume=True)


def train_spec(spec, model, cfg: dict, device, on_total=None, hooks=None, resume=None):
    """Train ``model`` by ``spec`` on the run's data (resuming when its checkpoint exists, unless told); returns it."""
    from core.model.diffusion import create_diffusion
    from core.training.data import load_dataset
    from core.training.loop import train

    if on_total:
        on_total(spec.steps)
    train(
        spec,
        model,
        create_diffusion(cfg),
        load_dataset(cfg),
        resume=spec.ckpt.exists() if resume is None else resume,
        device=device,
        **(hooks or {}),
    )
    return spec


def all_timesteps_spec(run, name: str, cfg: dict, steps: int, seed: int, **extra) -> TrainSpec:
    """A job of ``run`` on all timesteps at the fine-tunes' rate, batch and EMA; ``extra`` after its arch and stage."""
    return stage_spec(run, name, cfg, steps, seed, tuning=True, extra={"arch": model_arch(cfg), "stage": name, **extra})


def control_spec(run, cfg: dict, added: int, base_step: int):
    from core.manager.stages.base import base_spec

    f = cfg["finetune"]
    return base_spec(
        run,
        cfg,
        steps=base_step + added,
        name="control",
        ckpt=run.ckpt("control"),
        model_out=run.model("control"),
        metrics=run.metrics("control"),
        batch_size=f["batch_size"],
        lr=f["lr"],
        ema_decay=f["ema_decay"],
        keep=[],
        milestones=None,  # milestones are stage 1's
        extra={
            "arch": model_arch(cfg),
            "stage": "control",
            "base_step": base_step,
            "added_steps": added,
            "added_images": added * f["batch_size"],
        },
    )
