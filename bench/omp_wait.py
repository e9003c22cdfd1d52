"""What OpenMP's wait policy does to a CPU training job when something else uses a core.

    python bench/omp_wait.py [--steps 15] [--repeats 2] [--name omp_wait]

`tiny`'s stage-1 training step (bench/training.py, all cores) with OMP_WAIT_POLICY=ACTIVE (libgomp's default:
threads spin at every barrier) and PASSIVE (they sleep), on an idle machine and beside one busy single-thread
process (a matmul loop: any other program, a test run, a second job). Median seconds per step of the repeats,
both policies alternating. Writes bench/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"


def step_time(policy: str, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        name = str(Path(tmp) / "t")
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "training.py"),
                "--presets",
                "tiny",
                "--steps",
                str(steps),
                "--name",
                name,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "OMP_WAIT_POLICY": policy},
        )
        return json.loads(Path(name + ".json").read_text())["rows"][0]["seconds_per_step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="omp_wait")
    a = ap.parse_args()
    res: dict = {"cpus": os.cpu_count(), "steps": a.steps, "repeats": a.repeats, "s_per_step": {}}
    for load in ("idle", "beside one busy thread"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load != "idle" else None
        try:
            runs = {p: [] for p in ("ACTIVE", "PASSIVE")}
            for _ in range(a.repeats):
                for p in runs:
                    runs[p].append(step_time(p, a.steps))
                    print(f"{load}, {p}: {runs[p][-1]:.3f} s/step", file=sys.stderr)
        finally:
            if busy:
                busy.kill()
        res["s_per_step"][load] = {p: {"median": statistics.median(v), "runs": v} for p, v in runs.items()}
    res["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = ROOT / "bench" / "results"
    (out / f"{a.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    s = res["s_per_step"]
    idle, busy = s["idle"], s["beside one busy thread"]
    md = [
        f"`tiny` stage-1 training step, batch 32, all {res['cpus']} cores (torch's default threads), median of "
        f"{a.repeats} runs of {a.steps} steps per cell, policies alternating; commit {res['commit']}.",
        "",
        "| machine | ACTIVE (spin) s/step | PASSIVE (sleep) s/step | PASSIVE / ACTIVE |",
        "|---|---:|---:|---:|",
    ]
    for load, v in s.items():
        md.append(
            f"| {load} | {v['ACTIVE']['median']:.3f} | {v['PASSIVE']['median']:.3f} | "
            f"{v['PASSIVE']['median'] / v['ACTIVE']['median']:.2f} |"
        )
    md += [
        "",
        f"Beside one busy thread a spinning job is {busy['ACTIVE']['median'] / idle['ACTIVE']['median']:.1f}x "
        f"slower than idle, a sleeping one {busy['PASSIVE']['median'] / idle['PASSIVE']['median']:.1f}x.",
    ]
    (out / f"{a.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
