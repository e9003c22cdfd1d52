"""Runs that start from a trained base: an imported improved-diffusion checkpoint, or a fork of another run.

Either way the new run's stage 1 is finished before its first job: ``models/base.pt`` (EMA weights, the arch,
the step, and where it came from) and ``checkpoints/base.pt`` (what the control continues from) exist, and
``meta.json`` records the base's origin, sha256 and size (a run that trains its own stage 1 records
``{"origin": "trained", "sha256", "bytes"}`` when it finishes, ``runs.record_base``):

    meta["base"] = {"origin": "import", "file": PATH, "file_sha256": ..., "format": "improved-diffusion",
                    "sha256": sha256 of models/base.pt, "bytes": its size}
    meta["base"] = {"origin": "fork", "run": PARENT, "sha256": ..., "bytes": ...}   (and meta["parent"] = PARENT)
    meta["base"] = {"origin": "fork", "run": PARENT, "step": STEP, "sha256": ..., "bytes": ...}   a fork of
                   PARENT@STEP: the milestone that PARENT's stage 1 kept at STEP (train.keep), EMA weights and
                   training state

A fork shares its parent's stage 1, so the sections stage 1 depends on (model, diffusion, train, data) cannot
change; anything later (schedule, prune, fine-tune, control, sample, eval, seed) can. A fork's base files are
copies of the parent's, never hard links: a file changed in place (not replaced) in one run changes no other.
``fork`` refuses a parent whose base no longer matches its record, and ``show`` says so.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

from core.errors import UserError
from core.runs import (
    Run,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    base_changed,
    create_run,
    file_sha256,
    open_run,
)

SHARED_SECTIONS = ("model", "diffusion", "train", "data")  # what stage 1 depends on: a fork keeps them


def is_import_source(base: str) -> bool:
    """Whether ``--base`` names a model to import (a checkpoint file) rather than a run to fork."""
    return Path(base).expanduser().is_file()


def base_sha256(run: Run) -> Optional[str]:
    """sha256 of the run's stage-1 model (recorded at import/fork time, else computed), None if it has none."""
    recorded = (run.meta.get("base") or {}).get("sha256")
    if recorded:
        return recorded
    path = run.model("base")
    if not path.is_file():
        return None
    from core.store import open_store

    rows = [a for a in open_store(run.path.parent).artifacts(run.name) if a["path"] == "models/base.pt"]
    if rows and rows[-1]["bytes"] == path.stat().st_size:  # recorded by the job that wrote it
        return rows[-1]["sha256"]
    return file_sha256(path)


def base_origin(run: Run) -> str:
    """One word for where the run's stage 1 came from: trained, imported, or fork of PARENT."""
    base = run.meta.get("base") or {}
    if base.get("origin") == "import":
        return "imported"
    if base.get("origin") == "fork" or run.meta.get("parent"):
        at = f"@{base['step']}" if base.get("step") is not None else ""
        return f"fork of {base.get('run') or run.meta.get('parent')}{at}"
    return "trained"


# -- import ------------------------------------------------------------------------------------------------
def import_config(cfg: dict, overrides: Iterable[str] = ()) -> dict:
    """An improved-diffusion model's settings on top of ``cfg``: GroupNorm(32) and t * 1000/T (their defaults),
    then the user's ``overrides`` (-S still wins)."""
    from core import config as C

    cfg["model"]["norm_groups"] = 32
    cfg["model"]["rescale_timesteps"] = True
    return C.apply_overrides(cfg, overrides)


def import_base(file, cfg: dict, name: Optional[str], runs_dir, log: Callable[[str], None] = print) -> Run:
    """A new run whose finished stage 1 is improved-diffusion checkpoint ``file`` converted to this project's
    UNet. The file is read and converted before the run folder exists: a misfit writes nothing."""
    from core.config import model_arch
    from core.model.iddpm import import_model

    arch = model_arch(cfg)
    model = import_model(file, arch, cfg["preset"] or "this")
    digest = file_sha256(Path(file).expanduser())
    run = create_run(cfg, name, runs_dir)
    try:
        _write_base(
            run,
            cfg,
            arch,
            model.state_dict(),
            {
                "origin": "import",
                "file": str(Path(file).resolve()),
                "file_sha256": digest,
                "format": "improved-diffusion",
            },
        )
    except BaseException:
        _discard(run)
        raise
    log(
        f"run {run.name}: stage 1 imported from {file} (sha256 {digest[:12]}; improved-diffusion layout, "
        f"t * {arch['time_scale']:g} fed to the network)"
        if "time_scale" in arch
        else f"run {run.name}: stage 1 imported from {file} (sha256 {digest[:12]})"
    )
    return run


def _write_base(run: Run, cfg: dict, arch: dict, state: dict, origin: dict) -> None:
    """models/base.pt and checkpoints/base.pt of a finished stage 1 that was not trained here."""
    import torch

    step = cfg["train"]["steps"]  # the stage is finished by definition
    atomic_torch_save(
        {"state": state, "step": step, "arch": arch, "stage": "base", "imported": origin}, run.model("base")
    )
    # what the control continues from: weights = EMA = the imported model, a fresh optimiser
    atomic_torch_save(
        {
            "model": state,
            "ema": state,
            "opt": None,
            "step": step,
            "rng": {"torch": torch.get_rng_state(), "cuda": None},
            "spec": {"name": "base", "imported": True},
        },
        run.ckpt("base"),
    )
    _record(run, {**origin, "sha256": file_sha256(run.model("base"))})


# -- fork --------------------------------------------------------------------------------------------------
def fork_config(parent: Run, overrides: Iterable[str], step: Optional[int] = None) -> dict:
    """The parent's config with ``overrides``; changing what stage 1 depends on is refused. A fork of milestone
    ``step`` has a stage 1 of ``step`` steps that keeps no milestones of its own."""
    from core import config as C

    before = parent.config  # a completed copy, as every read of it
    cfg = C.apply_overrides(copy.deepcopy(before), overrides)
    for section in SHARED_SECTIONS:
        if cfg.get(section) != before.get(section):
            keys = sorted(
                k for k in set(cfg[section]) | set(before[section]) if cfg[section].get(k) != before[section].get(k)
            )
            raise UserError(
                f"a fork shares {parent.name}'s stage 1, so {section}.{keys[0]} cannot change; "
                "start a new run (stepadapt run) for another base"
            )
    if step is not None:
        cfg["train"].update(steps=step, keep=[])
    return cfg


def check_parent_base(parent: Run) -> str:
    """The parent's finished base's sha256, or a one-line error (missing, changed since its sha256 and size were
    recorded, unfinished)."""
    from core.manager.stages import base

    path = parent.model("base")
    if not path.is_file():
        raise UserError(
            f"run {parent.name} has no base model ({path}); train it first (stepadapt resume {parent.name})"
        )
    digest = file_sha256(path)
    changed = base_changed(parent, digest)
    if changed:
        raise UserError(f"run {parent.name}'s base is not the one it finished with ({changed}); refusing to fork it")
    if base.pending(parent):
        from core.method.fields import artifact_step

        raise UserError(
            f"run {parent.name}'s base is unfinished (step {artifact_step(path)} of "
            f"{parent.config['train']['steps']}); finish it first (stepadapt resume {parent.name})"
        )
    if not parent.ckpt("base").is_file():
        raise UserError(
            f"run {parent.name} has no stage-1 checkpoint ({parent.ckpt('base')}), which the fork's "
            "control continues from"
        )
    return digest


def split_milestone(name: str) -> tuple[str, Optional[int]]:
    """``RUN@STEP`` -> (RUN, STEP), a milestone of RUN's stage 1; ``RUN`` -> (RUN, None)."""
    head, at, tail = name.rpartition("@")
    if not at:
        return name, None
    if not tail.isdigit() or not head:
        raise UserError(f"bad base {name!r}: RUN@STEP takes a step number after @ (e.g. base@1500)")
    return head, int(tail)


def check_milestone(parent: Run, step: int) -> tuple[Path, Path, str]:
    """Milestone ``step`` of ``parent``'s stage 1: its model and state files and the model's sha256, or a one-line
    error naming the milestones there are."""
    from core.method.fields import artifact_step
    from core.training.spec import milestone_paths

    model, state = milestone_paths(parent.milestones(), step)
    if not model.is_file() or not state.is_file():
        kept = parent.milestone_steps()
        raise UserError(
            f"run {parent.name} kept no milestone at step {step} ("
            + (f"kept: {', '.join(map(str, kept))}" if kept else "none kept; see train.keep")
            + ")"
        )
    if artifact_step(model) != step or artifact_step(state) != step:
        raise UserError(f"run {parent.name}'s milestone {step} is unreadable or not from step {step}: {model}")
    return model, state, file_sha256(model)


def fork_run(
    parent_name: str, name: Optional[str], overrides: Iterable[str], runs_dir, log: Callable[[str], None] = print
) -> Run:
    """A new run sharing ``parent_name``'s finished stage 1 (config from the parent, with ``overrides``; its base
    files copied and checked against the parent's sha256); with ``PARENT@STEP``, the stage 1 that the parent kept
    at milestone STEP."""
    parent_name, step = split_milestone(parent_name)
    parent = open_run(parent_name, runs_dir)
    cfg = fork_config(parent, overrides, step)
    if step is None:
        model, state, digest = parent.model("base"), parent.ckpt("base"), check_parent_base(parent)
    else:
        model, state, digest = check_milestone(parent, step)
    run = create_run(cfg, name, runs_dir, parent=parent.name)
    try:
        for src, dst in ((model, run.model("base")), (state, run.ckpt("base"))):
            _copy(src, dst)
        if file_sha256(run.model("base")) != digest:
            raise UserError(f"the fork's base differs from {parent.name}'s after copying; disk trouble?")
        _copy_base_curve(parent, run, step)
        _record(
            run, {"origin": "fork", "run": parent.name, **({} if step is None else {"step": step}), "sha256": digest}
        )
    except BaseException:
        _discard(run)
        raise
    at = "" if step is None else f" at step {step}"
    log(f"run {run.name}: a fork of {parent.name}{at}, sharing its stage 1 (base sha256 {digest[:12]})")
    return run


def _copy_base_curve(parent: Run, run: Run, step: Optional[int]) -> None:
    """The base's training curve, for the report (up to the milestone of a milestone's fork)."""
    import json

    from core.runs import read_jsonl
    from core.store import open_store

    if parent.metrics("base").is_file():
        if step is None:
            _copy(parent.metrics("base"), run.metrics("base"))
        else:
            lines = [r for r in read_jsonl(parent.metrics("base")) if r.get("step", 0) <= step]
            run.metrics("base").parent.mkdir(parents=True, exist_ok=True)
            run.metrics("base").write_text("".join(json.dumps(r) + "\n" for r in lines))
    store = open_store(run.path.parent)
    rows = [
        {k: v for k, v in r.items() if k != "id"} | {"run": run.name, "job": None}
        for r in store.metrics(parent.name, stage="base")
        if step is None or (r.get("step") or 0) <= step
    ]
    if rows:
        store.log_metrics(rows)


def _copy(src: Path, dst: Path) -> None:
    """``dst`` a copy of ``src``, written atomically (a full disk is one line). Never a hard link: a file changed
    in place in one run would change the other's too."""
    with open(src, "rb") as f:
        atomic_write_bytes(dst, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def _record(run: Run, base: dict) -> None:
    """The base's origin in meta.json, and its files as the run's artifacts in the store."""
    from core.store import open_store

    meta = dict(run.meta)
    meta["base"] = {**base, "bytes": run.model("base").stat().st_size}
    atomic_write_json(meta, run.path / "meta.json")
    store = open_store(run.path.parent)
    for path, kind in ((run.model("base"), "model"), (run.ckpt("base"), "checkpoint")):
        store.add_artifact(
            {
                "run": run.name,
                "job": None,
                "path": str(path.relative_to(run.path)),
                "kind": kind,
                "sha256": base["sha256"] if kind == "model" else file_sha256(path),
                "bytes": path.stat().st_size,
            }
        )


def _discard(run: Run) -> None:
    """Remove a run that could not be made whole (its folder and its row)."""
    from core.store import open_store

    shutil.rmtree(run.path, ignore_errors=True)
    open_store(run.path.parent).forget_run(run.name)
