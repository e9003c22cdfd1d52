"""What each view shows, read from the store and the run folders. Runs in the app's worker thread only,
with that thread's own store connection (SQLite connections belong to the thread that opened them)."""
from __future__ import annotations

from pathlib import Path

from core.manager.monitor import run_detail, runs_overview, schedule_text
from core.runs import Run
from core.store import Store


def run_of(store: Store, runs_dir: Path, name: str) -> Run:
    row = store.get_run(name)
    return Run(Path(row["path"]) if row else runs_dir / name)


def read_view(store: Store, runs_dir: Path, key: tuple):
    """The data of view ``key``; None when there is nothing to show (an unknown run or job)."""
    kind = key[0]
    if kind == "runs":
        return runs_overview(store)
    if kind == "run":
        run = run_of(store, runs_dir, key[1])
        if not (run.path / "config.json").exists():
            return None
        return {**run_detail(store, run), "schedule_text": schedule_text(run, 50)}
    if kind == "job":
        return store.job(key[1])
    if kind == "proxy":
        return {"rounds": store.rounds(key[1]), "calls": {c["id"]: c for c in store.calls(key[1])}}
    raise ValueError(f"unknown view {key!r}")
