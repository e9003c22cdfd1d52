"""What each view shows, read from the store and the run folders. Runs in the app's worker thread only,
with that thread's own store connection (SQLite connections belong to the thread that opened them)."""

from __future__ import annotations

from pathlib import Path

from core.manager.monitor import run_detail, runs_overview, schedule_profile
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
        if not run.config_file.exists():
            return None
        return {**run_detail(store, run), "schedule_profile": _schedule_profile(run)}
    if kind == "job":
        return store.job(key[1])
    if kind == "proxy":
        return proxy_view(store, run_of(store, runs_dir, key[1]))
    raise ValueError(f"unknown view {key!r}")


def proxy_view(store: Store, run: Run) -> dict:
    """Every call of the run's proxy searches with its verdict and, for an accepted one, the measured candidate;
    per group the unpruned model's loss and the kept candidate (``core.chosen``, as every view names it)."""
    from core.chosen import chosen_candidates, proxy_tries
    from core.runs import read_json

    calls, all_rounds = store.calls(run.name), store.rounds(run.name)
    kept = chosen_candidates(run, all_rounds, calls) if run.config_file.exists() else {}
    rounds = {r["call_id"]: r for r in all_rounds if r["call_id"]}
    groups = {}
    for c in calls:
        g = c["group_index"]
        if g not in groups:
            proxy = ((read_json(run.prune_record(g)) or {}).get("report") or {}).get("proxy") or {}
            groups[g] = {
                "base_loss": proxy.get("base_loss"),
                "winner_round": proxy.get("winner_round"),
                "session": proxy.get("session"),
                "kept": kept.get(g),
            }
    rows = [
        {"call": c, "round": rounds.get(c["id"]) or {}, "chosen": t["chosen"], "verdict": t["verdict"]}
        for c, t in zip(calls, proxy_tries(calls, all_rounds, kept))
    ]
    return {"rows": rows, "groups": groups}


_PROFILES: dict = {}


def _schedule_profile(run: Run) -> dict:
    """The schedule strip's data, computed once per run and config (the run screen redraws on every heartbeat
    and draws the strip at its own width)."""
    key = (str(run.path), run.config_file.stat().st_mtime_ns)
    if key not in _PROFILES:
        _PROFILES[key] = schedule_profile(run)
    return _PROFILES[key]
