"""Wall time and peak memory of the commands users wait on while looking at runs, each in a fresh process.

Runs every command REPEAT times against one runs folder and reports the median wall time and the median
peak resident memory (the child's ru_maxrss), and whether torch was imported. ``--repo`` times another
checkout of stepadapt (e.g. a worktree of an older commit) against the same folder, so before and after are
measured in one run on the same machine state:

    python bench/listing.py --runs-dir runs --run table4-tiny-proxy --repo /work/dev --name listing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from stepadapt_cli.main import cli
try:
    cli(sys.argv[1:], prog_name="stepadapt")
except SystemExit:
    pass
sys.stderr.write("\\nTORCH\\n" if "torch" in sys.modules else "\\nNO-TORCH\\n")
"""


def commands(run: str, other: str) -> list[list[str]]:
    return [
        ["--help"],
        ["runs"],
        ["runs", "--json"],
        ["show", run],
        ["show", run, "--json"],
        ["compare", run, other, "--json"],
        ["logs", run],
        ["llm-log", run],
        ["schedule", "--run", run, "--json"],
        ["kill", run],
    ]


def measure(repo: Path, args: list[str], runs_dir: str) -> dict:
    """One fresh process: wall seconds and whether torch was imported."""
    extra = ["--runs-dir", runs_dir] if args != ["--help"] else []
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", PROBE, *args, *extra],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    return {"wall_s": time.perf_counter() - t, "torch": p.stderr.rstrip().endswith("\nTORCH")}


def measure_rss(repo: Path, args: list[str], runs_dir: str) -> float:
    """Peak resident memory of one run, in MB (GNU time's "Maximum resident set size")."""
    extra = ["--runs-dir", runs_dir] if args != ["--help"] else []
    p = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-c", PROBE, *args, *extra],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    line = next(ln for ln in p.stderr.splitlines() if "Maximum resident set size" in ln)
    return int(line.split()[-1]) / 1024


def bench(repo: Path, runs_dir: str, run: str, other: str, repeat: int) -> list[dict]:
    rows = []
    for args in commands(run, other):
        walls, torch = [], False
        for _ in range(repeat):
            m = measure(repo, args, runs_dir)
            walls.append(m["wall_s"])
            torch = torch or m["torch"]
        rss = statistics.median(measure_rss(repo, args, runs_dir) for _ in range(3))
        rows.append(
            {
                "command": "stepadapt " + " ".join(args),
                "wall_s": statistics.median(walls),
                "rss_mb": rss,
                "torch": torch,
            }
        )
        print(
            f"{repo.name:>6}  {rows[-1]['command']:<50} {rows[-1]['wall_s']:6.2f} s  {rss:6.0f} MB  "
            f"{'torch' if torch else ''}",
            file=sys.stderr,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--run", required=True, help="a finished run to show")
    ap.add_argument("--other", default=None, help="a second run for compare (default: --run)")
    ap.add_argument("--repo", default=None, help="another checkout to time as 'before'")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--name", default="listing")
    a = ap.parse_args()
    runs_dir = str(Path(a.runs_dir).resolve())
    other = a.other or a.run
    out = {
        "runs_dir": runs_dir,
        "runs": len([p for p in Path(runs_dir).iterdir() if (p / "config.json").exists()]),
        "repeat": a.repeat,
        "cpus": os.cpu_count(),
        "after": bench(ROOT, runs_dir, a.run, other, a.repeat),
    }
    res = ROOT / "bench" / "results"
    if a.repo:
        out["before"] = bench(Path(a.repo).resolve(), runs_dir, a.run, other, a.repeat)
    elif (res / f"{a.name}.json").exists():  # keep the "before" column measured earlier
        out["before"] = json.loads((res / f"{a.name}.json").read_text()).get("before", [])
    (res / f"{a.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    before = {r["command"]: r for r in out.get("before", [])}
    lines = [
        f"{out['runs']} runs in the folder; median of {a.repeat} fresh processes (time) and of 3 (peak RSS); "
        f"{out['cpus']} CPUs",
        "",
        "| command | before s | before MB | after s | after MB | torch after |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in out["after"]:
        b = before.get(r["command"], {})
        fmt = lambda v, s: "-" if v is None else s.format(v)
        lines.append(
            f"| `{r['command']}` | {fmt(b.get('wall_s'), '{:.2f}')} | {fmt(b.get('rss_mb'), '{:.0f}')} | "
            f"{r['wall_s']:.2f} | {r['rss_mb']:.0f} | {'yes' if r['torch'] else 'no'} |"
        )
    (res / f"{a.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {res / (a.name + '.json')} and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
