"""Stage 2: one copy of the base model per non-empty timestep group, fine-tuned on that group's timesteps.

Each group is its own training job (``group03`` ...) with its own EMA, checkpoint and metrics, so groups
resume independently. When every non-empty group has a model, they are assembled into one progressive
model artifact (``models/progressive.pt``).
"""
from __future__ import annotations

import json
from typing import Callable, Optional

import torch

from .data import load_dataset
from .diffusion import create_diffusion
from .errors import UserError
from .macs import count
from .progressive import save_progressive
from .runs import Run, atomic_write_json
from .schedule import Schedule, schedule_from_config
from .train import TrainSpec, train
from .unet import build_unet


def group_stage(g: int) -> str:
    return f"group{g:02d}"


def run_schedule(run: Run, cfg: Optional[dict] = None) -> Schedule:
    """The run's schedule, with budgets in MACs of its base architecture; saved once as ``schedule.json``."""
    cfg = cfg or run.config
    m = cfg["model"]
    full = count(build_unet(m), m["image_size"], m["in_channels"])["macs"]
    sched = schedule_from_config(cfg, full)
    path = run.path / "schedule.json"
    data = sched.to_json(with_timesteps=True)
    if path.exists():
        old = json.loads(path.read_text())
        if old["groups"] != data["groups"]:
            raise UserError(f"{path} does not match the run's config (was the schedule changed?); "
                            "start a new run for a new schedule")
    else:
        atomic_write_json(data, path)
    return sched


def parse_groups(spec: str, sched: Schedule) -> list[int]:
    """``all`` or ``i,j,...``: the selected non-empty groups (empty ones are reported and skipped)."""
    if spec in ("all", "", None):
        return [g.index for g in sched.nonempty]
    try:
        wanted = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"bad --groups {spec!r}: use all or comma-separated group indices, e.g. 0,3,9") from None
    bad = [g for g in wanted if not 0 <= g < sched.n_groups]
    if bad:
        raise UserError(f"bad --groups {spec!r}: groups are 0..{sched.n_groups - 1}")
    return [g for g in wanted if sched.groups[g].size > 0]


def group_spec(run: Run, cfg: dict, sched: Schedule, g: int, steps: Optional[int] = None) -> TrainSpec:
    f, t = cfg["finetune"], cfg["train"]
    grp = sched.groups[g]
    name = group_stage(g)
    return TrainSpec(
        name=name, ckpt=run.ckpt(name), model_out=run.model(name), metrics=run.metrics(name),
        steps=steps if steps is not None else f["steps"], batch_size=f["batch_size"], lr=f["lr"],
        ema_decay=f["ema_decay"], seed=cfg["seed"] + 1 + g, weight_decay=t["weight_decay"],
        grad_clip=t["grad_clip"], log_every=min(t["log_every"], max(1, (steps or f["steps"]) // 10)),
        ckpt_every=t["ckpt_every"], bf16=t["bf16"], workers=cfg["data"]["workers"], timesteps=grp.timesteps,
        channels_last=t["channels_last"], compile=t["compile"],
        accum=t["accum"] if f["batch_size"] % t["accum"] == 0 else 1,
        extra={"arch": cfg["model"], "stage": "finetune", "group": g, "t_start": grp.t_start, "t_end": grp.t_end,
               "budget_macs": grp.budget_macs},
    )


def group_done(spec: TrainSpec) -> bool:
    if not (spec.model_out.exists() and spec.ckpt.exists()):
        return False
    return torch.load(spec.ckpt, map_location="cpu", weights_only=False)["step"] >= spec.steps


def finetune_groups(run: Run, groups: str = "all", steps: Optional[int] = None, device="cpu",
                    progress: bool = True, log: Callable[[str], None] = print, hooks=None) -> list[int]:
    """Fine-tune the selected groups (resuming unfinished ones); returns the groups trained now.

    ``hooks(g)``, if given, returns the keyword hooks (on_start, on_step, on_log) for ``train`` of group g."""
    cfg = run.config
    base_path = run.model("base")
    if not base_path.exists():
        raise UserError(f"run {run.name} has no base model yet ({base_path}); run stage 1 (stepadapt train) first")
    sched = run_schedule(run, cfg)
    empty = [g.index for g in sched.groups if g.size == 0]
    if empty:
        log(f"empty groups (no timestep falls in their budget interval; skipped): {', '.join(map(str, empty))}")
    selected = parse_groups(groups, sched)
    data = load_dataset(cfg)
    diffusion = create_diffusion(cfg)
    trained = []
    for g in selected:
        spec = group_spec(run, cfg, sched, g, steps)
        grp = sched.groups[g]
        if group_done(spec):
            log(f"group {g}: done already ({spec.steps} steps), skipped")
            continue
        resume = spec.ckpt.exists()
        from .prune_stage import pruned_base

        model, rec = pruned_base(run, g)  # a fresh copy of the base EMA weights, pruned by the group's plan
        model.train()
        spec.extra["plan"] = rec["plan"] if rec else None
        spec.extra["prune_method"] = rec["method"]["method"] if rec else "none"
        how = (f"pruned by {spec.extra['prune_method']} to {rec['report']['macs'] / 1e9:.4f} GMACs" if rec
               else "not pruned")
        log(f"group {g}: t in [{grp.t_start}, {grp.t_end}] ({grp.size} steps), budget {grp.budget_ratio:.2f} F, "
            f"{how}, {'resuming' if resume else 'fine-tuning'} for {spec.steps} steps")
        train(spec, model, diffusion, data, resume=resume, device=device, progress=progress,
              **(hooks(g) if hooks else {}))
        trained.append(g)
    assemble(run, sched)
    return trained


def assemble(run: Run, sched: Optional[Schedule] = None) -> Optional[str]:
    """Write ``models/progressive.pt`` once every non-empty group has a model; returns its path or None."""
    sched = sched or run_schedule(run)
    parts = {}
    for g in sched.nonempty:
        path = run.model(group_stage(g.index))
        if not path.exists():
            return None
        art = torch.load(path, map_location="cpu", weights_only=False)
        parts[g.index] = {"arch": art["arch"], "plan": art.get("plan"), "state": art["state"]}
    out = run.model("progressive")
    save_progressive(out, parts, sched.group_of, {"schedule": sched.to_json()})
    return str(out)
