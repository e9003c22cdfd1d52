"""The progressive model: every non-empty group's fine-tuned model in one artifact (``models/progressive.pt``)."""

from __future__ import annotations

from typing import Optional

from core.errors import UserError
from core.method.schedule import nonempty_groups

NAME = "assemble"
GROUPED = False


def pending(run) -> list:
    out = run.model("progressive")
    parts = [run.model(run.group_stage(g)) for g in nonempty_groups(run) or []]
    if not out.exists() or not parts or not all(p.exists() for p in parts):
        return [None]
    return [] if out.stat().st_mtime >= max(p.stat().st_mtime for p in parts) else [None]


def assemble(run, sched=None) -> Optional[str]:
    """Write ``models/progressive.pt`` once every non-empty group has a model; returns its path or None."""
    from core.method.artifacts import read_artifact, save_progressive
    from core.method.schedule import run_schedule

    sched = sched or run_schedule(run)
    best = run.config["finetune"].get("keep") == "best"
    parts = {}
    for g in sched.nonempty:
        path = run.model(run.group_stage(g.index))
        if not path.exists():
            return None
        if best and run.best_model(run.group_stage(g.index)).exists():  # finetune.keep: best (measured) weights
            path = run.best_model(run.group_stage(g.index))
        art = read_artifact(path)
        parts[g.index] = {"arch": art["arch"], "plan": art.get("plan"), "state": art["state"]}
    out = run.model("progressive")
    save_progressive(out, parts, sched.group_of, {"schedule": sched.to_json()})
    return str(out)


def work(ctx) -> None:
    if assemble(ctx.run) is None:
        raise UserError("not every non-empty group has a fine-tuned model; run the finetune stage first")
    ctx.produced(ctx.run.model("progressive"), "model")
