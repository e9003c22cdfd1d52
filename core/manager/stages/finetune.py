"""Stage 2b: one copy of the base model per non-empty timestep group (pruned if the prune stage ran),
fine-tuned on that group's timesteps only (paper Eq. 13: U*(i) = argmin_theta Loss(U(i))(T(i), D, S)).
With ``finetune.distill`` > 0 the group's model also matches the unpruned base's output at the same x_t and t
(knowledge distillation; 0 is the paper's plain fine-tune).

Each group is its own training job (``group03`` ...) with its own EMA, checkpoint and metrics, so groups
resume independently. When every non-empty group has a model, they are assembled into one progressive
model artifact (``models/progressive.pt``, see ``assemble``).

With a shared trunk (``finetune.trunk shared``, ``method/trunk.py``) a group starts from the trunk (its decoder
pruned) instead of the base, its encoder's parameters are frozen, and it trains S - r steps
(``config.trunk_split``); afterwards its encoder is checked bit-identical to the trunk's.
"""

from __future__ import annotations

from typing import Callable, Optional

from core.config import model_arch, shared_trunk, single_stage, trunk_split
from core.errors import UserError
from core.manager.stages.assemble import assemble
from core.method.fields import artifact_step
from core.method.schedule import Schedule, nonempty_groups, parse_groups, run_schedule
from core.runs import Run
from core.training.spec import TrainSpec, stage_spec

NAME = "finetune"
GROUPED = True


def pending(run) -> list:
    groups = nonempty_groups(run)
    if groups is None:  # no schedule yet: every group is still to do
        return list(range(run.config["schedule"]["groups"]))
    steps = group_steps(run.config, len(groups))
    return [g for g in groups if not _trained(run.model(run.group_stage(g)), steps)]


def group_steps(cfg: dict, groups: int) -> int:
    """Each group's fine-tune steps: ``finetune.steps``, or with a shared trunk its decoder's share of them."""
    return trunk_split(cfg, groups)[1] if shared_trunk(cfg) else cfg["finetune"]["steps"]


def _trained(model_path, steps: int) -> bool:
    step = artifact_step(model_path)
    return step is not None and step >= steps


def group_spec(run: Run, cfg: dict, sched: Schedule, g: int, steps: Optional[int] = None) -> TrainSpec:
    f = cfg["finetune"]
    grp = sched.groups[g]
    name = run.group_stage(g)
    return stage_spec(
        run,
        name,
        cfg,
        steps if steps is not None else group_steps(cfg, len(sched.nonempty)),
        cfg["seed"] + 1 + g,
        tuning=True,
        timesteps=grp.timesteps,
        distill=f["distill"],
        eval_every=f.get("eval_every", 0),
        evals=run.heldout_curve(name),
        best_out=run.best_model(name),
        snapshots=run.snapshots(name) if f.get("fid_n") else None,
        extra={
            "arch": model_arch(cfg),
            "stage": "finetune",
            "group": g,
            "t_start": grp.t_start,
            "t_end": grp.t_end,
            "budget_macs": grp.budget_macs,
            "distill": f["distill"],
        },
    )


def group_done(spec: TrainSpec) -> bool:
    return _trained(spec.model_out, spec.steps)


def finetune_groups(
    run: Run,
    groups: str = "all",
    steps: Optional[int] = None,
    device="cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    hooks=None,
) -> list[int]:
    """Fine-tune the selected groups (resuming unfinished ones); returns the groups trained now.

    ``hooks(g)``, if given, returns the keyword hooks (on_start, on_step, on_log) for ``train`` of group g."""
    from core.manager.stages.prune import pruned_base
    from core.method.artifacts import load_unet
    from core.model.diffusion import create_diffusion
    from core.training.data import load_dataset
    from core.training.loop import train

    cfg = run.config
    base_path = run.model("base")
    if not base_path.exists() and not single_stage(cfg):
        raise UserError(f"run {run.name} has no base model yet ({base_path}); run stage 1 (stepadapt train) first")
    trunk = shared_trunk(cfg)
    if trunk:  # the trunk first (here when `finetune` runs on its own; the pipeline's trunk stage did it)
        from core.manager.stages.trunk import ensure_trunk

        ensure_trunk(run, device, log)
    sched = run_schedule(run, cfg)
    empty = [g.index for g in sched.groups if g.size == 0]
    if empty:
        log(f"empty groups (no timestep falls in their budget interval; skipped): {', '.join(map(str, empty))}")
    selected = parse_groups(groups, sched)
    data = load_dataset(cfg)
    diffusion = create_diffusion(cfg)
    teacher = load_unet(base_path) if cfg["finetune"]["distill"] > 0 else None  # the unpruned base
    trained = []
    for g in selected:
        spec = group_spec(run, cfg, sched, g, steps)
        grp = sched.groups[g]
        if group_done(spec):
            log(f"group {g}: done already ({spec.steps} steps), skipped")
            continue
        resume = spec.ckpt.exists()
        model, rec = pruned_base(run, g)  # a fresh copy of the base (or trunk) EMA weights, pruned by the group's plan
        model.train()
        spec.extra["plan"] = rec["plan"] if rec else None
        spec.extra["prune_method"] = rec["method"]["method"] if rec else "none"
        if trunk:
            from core.method.fields import artifact_step
            from core.method.trunk import ENCODER, freeze_encoder

            frozen = freeze_encoder(model)
            spec.extra["trunk"] = {"step": artifact_step(run.model("trunk")), "frozen": list(ENCODER)}
        how = (
            f"pruned by {spec.extra['prune_method']} to {rec['report']['macs'] / 1e9:.4f} GMACs"
            if rec
            else "not pruned"
        )
        if rec and spec.extra["prune_method"] == "scratch":
            how = (
                f"{rec['method'].get('from')}'s architecture ({rec['report']['macs'] / 1e9:.4f} GMACs) from fresh "
                "weights (scratch training)"
            )
        log(
            f"group {g}: t in [{grp.t_start}, {grp.t_end}] ({grp.size} steps), budget {grp.budget_ratio:.2f} F, "
            f"{how}, {'resuming' if resume else 'fine-tuning'} for {spec.steps} steps"
            + (f", distilling from the base (weight {spec.distill:g})" if teacher is not None else "")
            + (f"; the shared trunk's encoder ({frozen / 1e6:.3f} M params) frozen" if trunk else "")
        )
        train(
            spec,
            model,
            diffusion,
            data,
            resume=resume,
            device=device,
            progress=progress,
            teacher=teacher,
            evaluator=heldout_evaluator(cfg, diffusion, grp, device) if spec.eval_every else None,
            **(hooks(g) if hooks else {}),
        )
        if trunk:
            from core.manager.stages.trunk import check_encoder

            check_encoder(run, [g])
        trained.append(g)
    assemble(run, sched)
    return trained


def heldout_evaluator(cfg: dict, diffusion, grp, device="cpu"):
    """The group's held-out eps-MSE on its own timesteps (the images and noise of ``stepadapt eval``'s loss
    table, so the curve ends where the evaluation starts)."""
    from core.evaluation.losses import eval_images, region_losses

    images = eval_images(cfg, cfg["eval"]["loss_images"])

    def measure(model) -> float:
        return region_losses(
            model, diffusion, images, {grp.index: grp.timesteps}, draws=cfg["eval"]["loss_draws"], device=device
        )[grp.index]

    return measure


def work(ctx) -> None:
    g = ctx.group
    ctx.heartbeat.set(progress=0, total=group_steps(ctx.run.config, len(nonempty_groups(ctx.run) or [g])))
    finetune_groups(ctx.run, str(g), None, ctx.device, log=ctx.log, hooks=lambda gg: ctx.train_hooks("finetune", gg))
    ctx.produced(ctx.run.model(ctx.run.group_stage(g)), "model")
    ctx.produced(ctx.run.ckpt(ctx.run.group_stage(g)), "checkpoint")
