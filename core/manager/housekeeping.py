"""A run's lifecycle after it ran: how much disk it takes, removing it (``stepadapt rm``), dropping the resume
checkpoints of finished runs (``stepadapt gc``), and forgetting store rows whose folder is gone
(``runs --prune-missing``). Nothing here deletes a file of a run that is running."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.errors import UserError
from core.runs import Run, run_lock
from core.store import Store

KEEP_ON_RM = "models"  # what ``rm --keep-models`` leaves in the run's folder


def disk_use(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is missing); links are not followed."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def human_bytes(n) -> str:
    """'246M', '1.2G', '980K': a size in four characters or so (1 K = 1024 bytes, as du -h counts)."""
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" or n >= 10 else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def refuse_if_running(store: Store, name: str, what: str) -> None:
    """A ``UserError`` when the run has a job that is queued or running (the store reconciled first)."""
    active = store.jobs(name, active=True)
    row = store.get_run(name) or {}
    if active or row.get("status") == "running":
        jobs = ", ".join(f"{j['id']} {j['stage']}" for j in active[:3]) or "its pipeline"
        raise UserError(f"run {name} is running ({jobs}); stop it first (stepadapt kill {name}), then {what}")


def remove_run(store: Store, run: Run, keep_models: bool = False) -> dict:
    """Delete the run's folder (all of it, or all but ``models/``) and its store rows: jobs, metrics,
    artifacts, tags, notes, LLM calls and proxy rounds. Refused while the run runs. Returns what was freed."""
    store.require_writable()
    refuse_if_running(store, run.name, "remove it")
    freed = disk_use(run.path)
    kept = 0
    with run_lock(run, "being removed"):
        if keep_models:
            for child in run.path.iterdir():
                if child.name == KEEP_ON_RM or child.name == run.lock_file().name:
                    continue
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            kept = disk_use(run.path / KEEP_ON_RM)
    if not keep_models:
        shutil.rmtree(run.path)
    else:
        run.lock_file().unlink(missing_ok=True)
    store.forget_run(run.name, decisions=True)
    return {"run": run.name, "freed": freed - kept, "kept": kept, "folder": str(run.path)}


def prune_missing(store: Store) -> list[str]:
    """Forget the runs whose folder no longer exists (``rm -rf runs/X``); returns their names."""
    store.require_writable()
    gone = [r["name"] for r in store.list_runs() if not Run(Path(r["path"])).config_file.exists()]
    for name in gone:
        store.forget_run(name, decisions=True)
    return gone


def checkpoints_to_drop(store: Store, runs: list[Run]) -> list[dict]:
    """The resume checkpoints (``checkpoints/*.pt``) of the runs that succeeded: ``{"run", "path", "bytes"}``.
    A run that is not finished keeps them (they are what ``resume`` continues from)."""
    out = []
    for run in runs:
        row = store.get_run(run.name) or {}
        if row.get("status") != "succeeded" or store.jobs(run.name, active=True):
            continue
        folder = run.ckpt("base").parent
        for p in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            try:
                out.append({"run": run.name, "path": p, "bytes": p.stat().st_size})
            except OSError:
                continue
    return out


def drop_checkpoints(store: Store, runs: list[Run], files: list[dict]) -> int:
    """Delete ``files`` (from ``checkpoints_to_drop``), each run under its lock, and their artifact rows;
    returns the bytes freed."""
    store.require_writable()
    freed = 0
    for run in runs:
        mine = [f for f in files if f["run"] == run.name]
        if not mine:
            continue
        with run_lock(run, "dropping its checkpoints"):
            for f in mine:
                f["path"].unlink(missing_ok=True)
                freed += f["bytes"]
        store.forget_artifacts(run.name, [str(f["path"].relative_to(run.path)) for f in mine])
    return freed
