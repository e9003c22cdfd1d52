"""The progressive model: every non-empty group's fine-tuned model in one artifact (``models/progressive.pt``).

With a shared trunk (``finetune.trunk shared``) every group's encoder is checked bit-identical to the trunk's
first, and the artifact records the trunk (``trunk``: shared, the encoder's modules, the trunk's and each
decoder's steps); loading it gives group models that hold one encoder between them."""

from __future__ import annotations

from typing import Optional

from core.config import shared_trunk, trunk_split
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
    meta = {"schedule": sched.to_json()}
    if shared_trunk(run.config):
        from core.manager.stages.trunk import check_encoder
        from core.method.fields import artifact_step
        from core.method.trunk import ENCODER

        check_encoder(run, [g.index for g in sched.nonempty])
        meta["trunk"] = {
            "shared": True,
            "encoder": list(ENCODER),
            "trunk_steps": artifact_step(run.model("trunk")),
            "decoder_steps": trunk_split(run.config, len(sched.nonempty))[1],
        }
    out = run.model("progressive")
    save_progressive(out, parts, sched.group_of, meta)
    return str(out)


def work(ctx) -> None:
    if assemble(ctx.run) is None:
        raise UserError("not every non-empty group has a fine-tuned model; run the finetune stage first")
    ctx.produced(ctx.run.model("progressive"), "model")
