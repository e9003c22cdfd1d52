"""The shared trunk (``finetune.trunk shared``, ``method/trunk.py``): stage 1 fine-tuned on all timesteps for
N r of stage 2's N S steps (``config.trunk_split``), whose encoder every group model then shares, frozen
(``models/trunk.pt``). Runs after the schedule (N is its number of non-empty groups) and before the groups are
pruned: each group's model is this trunk with its decoder pruned and fine-tuned.

It starts, as each group's fine-tune does, from stage 1's EMA weights with a fresh optimiser, and trains with the
fine-tunes' rate, batch and EMA on every timestep (not distilled: the teacher would be its own start). Before it
trains, every non-empty group's budget is checked against the fewest MACs that pruning the decoder alone reaches,
so a budget that cannot be met is said in one line, naming those MACs, before any stage-2 step. A trunk that
groups were built on is not trained further (their encoders are its weights): a run whose fine-tune steps
changed the trunk's is started anew (``stepadapt fork``).
"""

from __future__ import annotations

from typing import Optional

from core.config import model_arch, shared_trunk, trunk_split
from core.errors import UserError
from core.manager.stages.control import all_timesteps_spec, run_training, train_spec
from core.method.fields import artifact_step
from core.method.schedule import nonempty_groups
from core.training.spec import TrainSpec

NAME = "trunk"
GROUPED = False


def pending(run) -> list:
    if not shared_trunk(run.config):
        return []
    groups = nonempty_groups(run)
    if groups is None:  # no schedule yet: the trunk's length is not known, so it is still to do
        return [None]
    step = artifact_step(run.model(NAME))
    return [] if step is not None and step >= trunk_split(run.config, len(groups))[0] else [None]


def trunk_spec(run, cfg: dict, groups: int) -> TrainSpec:
    """The trunk's training: the fine-tunes' rate, batch and EMA, all timesteps, N r steps."""
    from core.method.trunk import ENCODER

    steps, decoder = trunk_split(cfg, groups)
    return all_timesteps_spec(
        run, NAME, cfg, steps, cfg["seed"] + 104_729, groups=groups, decoder_steps=decoder, encoder=list(ENCODER)
    )


def check_budgets(run, sched=None) -> Optional[int]:
    """Every non-empty group's budget against the fewest MACs pruning the decoder alone reaches (the encoder is
    shared, so it keeps its width); one line naming them when a budget is below. Returns those MACs (None when
    the run prunes nothing)."""
    if run.config["prune"]["method"] == "none":
        return None
    from core.method.prune import Pruner
    from core.method.schedule import run_schedule
    from core.method.trunk import decoder_only, reachable_macs
    from core.model.unet import build_unet

    cfg = run.config
    sched = sched or run_schedule(run, cfg)
    reach = reachable_macs(Pruner(build_unet(model_arch(cfg), seed=0), decoder_only))  # MACs: the widths alone
    low = min(sched.nonempty, key=lambda g: g.budget_macs)
    if low.budget_macs < reach:
        raise UserError(
            f"finetune.trunk shared prunes the decoder alone, which reaches {reach / 1e9:.4f} GMACs "
            f"({reach / sched.full_macs:.3f} F) at the least, above group {low.index}'s budget "
            f"{low.budget_macs / 1e9:.4f} GMACs ({low.budget_ratio:.3f} F): raise schedule.k or use "
            "finetune.trunk separate"
        )
    return reach


def check_encoder(run, groups: list[int]) -> None:
    """With a shared trunk: every listed group model's encoder is bit-identical to the trunk's (its weights were
    frozen), else an error naming the groups."""
    from core.method.artifacts import read_artifact
    from core.method.trunk import differing

    trunk = read_artifact(run.model("trunk"))
    paths = {g: run.model(run.group_stage(g)) for g in groups}
    bad = differing(trunk["state"], [(f"group {g}", read_artifact(p)["state"]) for g, p in paths.items()])
    if bad:
        raise UserError(
            f"{', '.join(bad)} of run {run.name}: the encoder differs from the shared trunk's (models/trunk.pt, step "
            f"{trunk.get('step')}); they were fine-tuned from another trunk: start a new run"
        )


def ensure_trunk(run, device="cpu", log=print) -> None:
    """Train the trunk here when it is not trained yet (``stepadapt prune`` or ``finetune`` run on their own; the
    pipeline's trunk stage has done it before either)."""
    if pending(run):
        train_trunk(run, device, log)


def train_trunk(run, device="cpu", log=print, on_total=None, hooks=None) -> TrainSpec:
    """Check the budgets, then train (or resume) the trunk of ``run``; returns its ``TrainSpec``."""
    from core.method.artifacts import load_unet
    from core.method.schedule import run_schedule

    cfg = run.config
    if not shared_trunk(cfg):
        raise UserError(f"run {run.name} has no shared trunk (finetune.trunk is {cfg['finetune']['trunk']})")
    if not run.model("base").exists():
        raise UserError(f"run {run.name} has no base model yet; run stage 1 (stepadapt train) first")
    sched = run_schedule(run, cfg)
    check_budgets(run, sched)
    spec = trunk_spec(run, cfg, len(sched.nonempty))
    built = [
        g.index
        for g in sched.nonempty
        if run.prune_record(g.index).exists() or run.ckpt(run.group_stage(g.index)).exists()
    ]
    step = artifact_step(run.model(NAME))
    if built and step is not None and step < spec.steps:
        raise UserError(
            f"groups {', '.join(map(str, built))} were built on the trunk at step {step}, and it now trains "
            f"{spec.steps} steps: start a new run (stepadapt fork) to change the fine-tune steps"
        )
    model = load_unet(run.model("base"))  # stage 1's EMA weights, as every group's fine-tune starts
    model.train()
    log(
        f"trunk: stage 1's EMA weights fine-tuned on all timesteps for {spec.steps} steps of {spec.batch_size} "
        f"images ({len(sched.nonempty)} groups x {spec.steps // len(sched.nonempty)}); each group's decoder then "
        f"trains {spec.extra['decoder_steps']} steps on its timesteps, the encoder frozen and shared"
    )
    return train_spec(spec, model, cfg, device, on_total, hooks)


def work(ctx) -> None:
    run_training(ctx, train_trunk, NAME)
