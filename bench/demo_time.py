"""Where the demo's wall time goes: `make demo`'s run (or any finished run), split by stage and, within each
stage's jobs, into starting (launch to the worker's first record), warming up (to its first progress report:
loading data, models, the first step) and working (to the job's end).

    python bench/demo_time.py                  # run the demo's command in a fresh runs folder, then split it
    python bench/demo_time.py --run NAME [--runs-dir DIR]   # split a run that has finished

Writes bench/results/demo_time.{json,md} (``--name`` changes the file name). Job times come from the store's
job rows (created, started, ended) and each job's journal (its first record with progress).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def demo_command() -> list[str]:
    """`make demo`'s stepadapt arguments: the Makefile's ``DEMO`` settings read from it, so the two cannot drift."""
    import re

    settings = re.search(r"^DEMO \?= (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    return ["run", "--base", "shipped", "--parallel", "2", *settings]


def _t(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def first_progress(journal: Path) -> float | None:
    """Unix time of the job's first heartbeat that carries progress (its first step), or None."""
    if not journal.is_file():
        return None
    for line in journal.read_text().splitlines():
        fields = json.loads(line).get("fields", {}) if line.strip() else {}
        if fields.get("progress") and fields.get("heartbeat"):
            return float(fields["heartbeat"])
    return None


def covered(spans: list[tuple[float, float]]) -> float:
    """Seconds during which at least one of the spans was running (a resumed stage's jobs leave gaps)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def split(run_name: str, runs_dir: Path) -> dict:
    from core.store import open_store

    store = open_store(runs_dir)
    jobs = [j for j in store.jobs(run_name) if j["ended"]]
    pipeline = [j for j in jobs if j["stage"] == "pipeline"]
    stages: dict[str, dict] = {}
    for j in jobs:
        if j["stage"] == "pipeline":
            continue
        created, started, ended = _t(j["created"]), _t(j["started"] or j["created"]), _t(j["ended"])
        first = first_progress(runs_dir / run_name / "jobs" / f"{j['id']:04d}" / "journal.jsonl")
        warm = (first - started) if first else 0.0
        s = stages.setdefault(
            j["stage"], {"jobs": 0, "spans": [], "starting_s": 0.0, "warming_s": 0.0, "working_s": 0.0}
        )
        s["jobs"] += 1
        s["spans"].append((created, ended))
        s["starting_s"] += started - created
        s["warming_s"] += warm
        s["working_s"] += ended - started - warm
    for s in stages.values():
        s["wall_s"] = covered(s.pop("spans"))
    wall = sum(_t(p["ended"]) - _t(p["created"]) for p in pipeline)
    return {
        "run": run_name,
        "wall_s": wall,
        "stages": stages,
        "between_stages_s": wall - sum(s["wall_s"] for s in stages.values()),
    }


def table(res: dict) -> str:
    st = res["stages"]
    rows = [
        f"Run `{res['run']}`: {res['wall_s'] / 60:.1f} min of wall time ({res.get('how', 'a finished run')}); "
        f"{os.cpu_count()} CPUs. Job columns are sums over the stage's jobs (two run side by side in "
        "group stages), so they can exceed the stage's wall time.",
        "",
        "| stage | jobs | wall s | share | starting s | warming up s | working s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in st.items():
        rows.append(
            f"| {name} | {s['jobs']} | {s['wall_s']:.0f} | {s['wall_s'] / res['wall_s']:.0%} | "
            f"{s['starting_s']:.1f} | {s['warming_s']:.1f} | {s['working_s']:.0f} |"
        )
    rows.append(
        f"| between stages (the orchestrator) | | {res['between_stages_s']:.0f} | "
        f"{res['between_stages_s'] / res['wall_s']:.0%} | | | |"
    )
    rows.append(
        f"| **whole run** | {sum(s['jobs'] for s in st.values())} | {res['wall_s']:.0f} | 100% | "
        f"{sum(s['starting_s'] for s in st.values()):.1f} | {sum(s['warming_s'] for s in st.values()):.1f} | "
        f"{sum(s['working_s'] for s in st.values()):.0f} |"
    )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="split this finished run instead of running the demo")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--name", default="demo_time")
    ap.add_argument("--set", "-S", action="append", default=[], help="extra settings for the demo's command")
    a = ap.parse_args()
    if a.run:
        runs_dir = Path(a.runs_dir) if a.runs_dir else ROOT / "runs"
        res = split(a.run, runs_dir)
    else:
        runs_dir = Path(tempfile.mkdtemp(prefix="stepadapt-demo-time-"))
        try:
            extra = [x for kv in a.set for x in ("-S", kv)]
            t = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "stepadapt_cli.main",
                    *demo_command(),
                    *extra,
                    "--name",
                    "demo",
                    "--runs-dir",
                    str(runs_dir),
                ],
                cwd=ROOT,
                check=True,
            )
            whole = time.perf_counter() - t
            res = split("demo", runs_dir)
            res["how"] = f"`make demo`'s command{' with ' + ' '.join(a.set) if a.set else ''} in a fresh runs folder"
            res["command_s"] = whole
            res["eval"] = json.loads((runs_dir / "demo" / "eval.json").read_text())
        finally:
            shutil.rmtree(runs_dir, ignore_errors=True)
    res["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = ROOT / "bench" / "results"
    (out / f"{a.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{a.name}.md").write_text(table(res) + "\n")
    print(table(res))


if __name__ == "__main__":
    main()
