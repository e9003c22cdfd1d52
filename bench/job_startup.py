"""What starting jobs costs: one small pipeline run again and again, its jobs forked from the pre-started
worker (``core/manager/forked.py``) or each a new Python process (``STEPADAPT_FORKSERVER=0``), alternating
so both see the same machine state. Reports the median wall time of the whole pipeline and, per stage, of
its jobs (launch to end, summed over the stage's jobs, from the store's job rows).

    python bench/job_startup.py --repeat 3 --name job_startup
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MICRO = [
    "model.model_channels=16",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[16]",
    "diffusion.steps=100",
    "schedule.groups=3",
    "train.steps=4",
    "finetune.steps=2",
    "eval.fid=false",
    "sample.n=8",
]
MODES = {"forked": "1", "new process": "0"}


def one_run(runs_dir: Path, name: str, forkserver: str) -> dict:
    from core.store import open_store

    sets = [x for kv in MICRO for x in ("-S", kv)]
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stepadapt_cli.main",
            "run",
            "--preset",
            "tiny",
            "--name",
            name,
            *sets,
            "--parallel",
            "2",
            "--runs-dir",
            str(runs_dir),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "STEPADAPT_FORKSERVER": forkserver},
    )
    wall = time.perf_counter() - t
    stages: dict = {}
    for j in open_store(runs_dir).jobs(name):
        if j["stage"] != "pipeline" and j["ended"]:
            took = (
                dt.datetime.fromisoformat(j["ended"]).timestamp() - dt.datetime.fromisoformat(j["created"]).timestamp()
            )
            stages[j["stage"]] = stages.get(j["stage"], 0.0) + took
    return {"wall_s": wall, "stages": stages, "jobs": sum(1 for j in open_store(runs_dir).jobs(name))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--name", default="job_startup")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stepadapt-bench-"))
    runs = {m: [] for m in MODES}
    try:
        for i in range(a.repeat):
            for mode, flag in MODES.items():
                runs[mode].append(one_run(tmp, f"{flag}-{i}", flag))
                print(f"{mode}: {runs[mode][-1]['wall_s']:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stages = list(runs["forked"][0]["stages"])
    med = {
        m: {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "stages": {s: statistics.median(r["stages"].get(s, 0.0) for r in rs) for s in stages},
        }
        for m, rs in runs.items()
    }
    out = {
        "repeat": a.repeat,
        "cpus": os.cpu_count(),
        "config": MICRO,
        "jobs_per_run": runs["forked"][0]["jobs"],
        "median": med,
        "runs": runs,
    }
    res = ROOT / "bench" / "results"
    (res / f"{a.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    f, n = med["forked"], med["new process"]
    lines = [
        f"A micro pipeline ({out['jobs_per_run']} jobs, `--parallel 2`), median of {a.repeat} runs per mode, "
        f"alternating; {out['cpus']} CPUs.",
        "",
        "| | new process per job s | forked from the pre-started worker s | ratio |",
        "|---|---:|---:|---:|",
        f"| whole pipeline | {n['wall_s']:.1f} | {f['wall_s']:.1f} | {f['wall_s'] / n['wall_s']:.2f} |",
    ]
    for s in stages:
        lines.append(
            f"| {s} jobs (sum) | {n['stages'][s]:.1f} | {f['stages'][s]:.1f} | "
            f"{f['stages'][s] / max(n['stages'][s], 1e-9):.2f} |"
        )
    (res / f"{a.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
