"""Where the test suite's time goes: per test, its wall time and the CPU time of everything it started.

A test's subprocesses include detached orchestrators, fork servers and Slurm's job steps, which
``RUSAGE_CHILDREN`` never sees. Each xdist worker is put in a cgroup of its own (cgroup v1 ``cpuacct``, as root);
a test's CPU is its worker's cgroup usage over the test, so every descendant counts. Without such a cgroup the
script says so and stops.

    python bench/suite_cpu.py [-n 2] [--name NAME] [-- PYTEST ARGS]

Writes bench/results/NAME.{json,md} (default ``suite_cpu``): the totals (wall, worker time, CPU), the CPU share
spent by processes that only imported torch and exited, the slowest tests, and the time per file. The CPU total
over the cores is the floor of the suite's wall time, whatever the number of workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CGROUP = Path("/sys/fs/cgroup/cpuacct")

# the pytest plugin, written to a temporary folder and loaded with -p: a cgroup per worker, a row per test
PLUGIN = """
import json, os, time
import pytest

_dir = os.environ["SUITE_CPU_DIR"]
_cg = os.path.join(os.environ["SUITE_CPU_CGROUP"], os.environ.get("PYTEST_XDIST_WORKER", "main"))
_rows = []


def _usage():
    with open(os.path.join(_cg, "cpuacct.usage")) as f:
        return int(f.read()) / 1e9


def pytest_sessionstart(session):
    os.makedirs(_cg, exist_ok=True)
    with open(os.path.join(_cg, "tasks"), "w") as f:
        f.write(str(os.getpid()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    t0, c0 = time.time(), _usage()
    yield
    _rows.append({"test": item.nodeid, "wall": time.time() - t0, "cpu": _usage() - c0, "left": _left_behind()})


def _left_behind():
    # the processes of this worker's cgroup that outlive the test: the worker aside, each is something a test
    # started and did not stop
    me = os.getpid()
    out = []
    with open(os.path.join(_cg, "cgroup.procs")) as f:
        pids = [int(x) for x in f.read().split()]
    for pid in pids:
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append(cmd[:200])
    return out


def pytest_sessionfinish(session):
    w = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(_dir, f"rows-{w}.json"), "w") as f:
        json.dump(_rows, f)
"""

# every Python process of the run writes its CPU time at exit, and whether it had imported torch
SITE = """
import atexit, json, os, resource, sys


def _record():
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.path.join(os.environ["SUITE_CPU_DIR"], "procs.jsonl"), "a") as f:
        cmd = " ".join(a for a in sys.argv[:3] if not a.startswith("/tmp"))
        f.write(json.dumps({"cpu": r.ru_utime + r.ru_stime, "torch": "torch" in sys.modules, "cmd": cmd}) + "\\n")


atexit.register(_record)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--workers", type=int, default=2)
    ap.add_argument("--name", default="suite_cpu")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args()
    if not (CGROUP / "cpuacct.usage").exists() or not os.access(CGROUP, os.W_OK):
        sys.exit(f"error: needs a writable cgroup v1 cpuacct hierarchy at {CGROUP} (run as root)")
    work = Path(tempfile.mkdtemp(prefix="suite-cpu-"))
    (work / "suite_cpu_plugin.py").write_text(PLUGIN)
    (work / "sitecustomize.py").write_text(SITE)
    cg = CGROUP / f"suite-cpu-{os.getpid()}"
    cg.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", SUITE_CPU_DIR=str(work), SUITE_CPU_CGROUP=str(cg))
    env["PYTHONPATH"] = os.pathsep.join([str(work), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", str(a.workers), "--dist", "loadgroup", "-p"]
    cmd += ["suite_cpu_plugin", *a.pytest_args]
    t0 = time.time()
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    wall = time.time() - t0
    rows = [r for f in work.glob("rows-*.json") for r in json.loads(f.read_text())]
    procs = [json.loads(line) for line in (work / "procs.jsonl").read_text().splitlines()]
    total_cpu = sum(r["cpu"] for r in rows)
    torch_only = [p["cpu"] for p in procs if p["torch"] and p["cpu"] < 2.5]  # imported torch, did little else
    by_file: dict[str, list[float]] = {}
    for r in rows:
        f = by_file.setdefault(r["test"].split("::")[0], [0.0, 0.0, 0])
        f[0], f[1], f[2] = f[0] + r["wall"], f[1] + r["cpu"], f[2] + 1
    out = {
        "workers": a.workers,
        "exit_code": rc,
        "tests": len(rows),
        "wall_s": wall,
        "worker_s": sum(r["wall"] for r in rows),
        "cpu_s": total_cpu,
        "python_processes": len(procs),
        "torch_processes": sum(p["torch"] for p in procs),
        "short_torch_processes": len(torch_only),
        "short_torch_cpu_s": sum(torch_only),
        "cpu_model": _cpu_model(),
        "by_command": _by_command(procs),
        "slowest": sorted(rows, key=lambda r: -r["wall"])[: a.top],
        "left_behind": [{"test": r["test"], "processes": r["left"]} for r in rows if r.get("left")],
        "files": {k: {"wall": v[0], "cpu": v[1], "tests": v[2]} for k, v in by_file.items()},
    }
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / f"{a.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (res / f"{a.name}.md").write_text(_markdown(out))
    print(_markdown(out))
    for d in [*cg.iterdir(), cg]:  # the workers' cgroups, then this run's (one that still holds a process stays)
        if d.is_dir():
            try:
                d.rmdir()
            except OSError:
                pass


def _by_command(procs: list[dict]) -> list[dict]:
    """Python processes grouped by what they ran (the script or module and the stepadapt command): how many,
    their CPU, how many imported torch. Processes forked from a fork server exit without atexit and are not
    here (their CPU is in the tests' totals)."""
    out: dict[str, dict] = {}
    for p in procs:
        words = [w.rsplit("/", 1)[-1] for w in p.get("cmd", "?").split()]
        key = " ".join(words[:2]) if words and words[0] in ("main.py", "-m") else (words[0] if words else "?")
        o = out.setdefault(key, {"command": key, "processes": 0, "cpu": 0.0, "torch": 0})
        o["processes"], o["cpu"], o["torch"] = o["processes"] + 1, o["cpu"] + p["cpu"], o["torch"] + p["torch"]
    return sorted(out.values(), key=lambda o: -o["cpu"])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _markdown(o: dict) -> str:
    lines = [
        f"{o['tests']} tests with -n {o['workers']} on {o['cpu_model']} (exit {o['exit_code']}): wall "
        f"{o['wall_s']:.0f} s, worker time {o['worker_s']:.0f} s, CPU of every descendant {o['cpu_s']:.0f} s "
        f"(floor on {os.cpu_count()} cores: {o['cpu_s'] / os.cpu_count():.0f} s).",
        f"{o['python_processes']} Python processes, {o['torch_processes']} of them imported torch; "
        f"{o['short_torch_processes']} of those used under 2.5 s of CPU in all ({o['short_torch_cpu_s']:.0f} s).",
        "",
        "| test | wall s | CPU s | CPU/wall |",
        "|---|---:|---:|---:|",
    ]
    for r in o["slowest"]:
        lines.append(f"| {r['test']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['cpu'] / max(r['wall'], 1e-9):.2f} |")
    if o["left_behind"]:
        lines += ["", "Processes alive in the worker's cgroup after a test (each counted once, at the first test):", ""]
        seen: set[str] = set()
        for r in o["left_behind"]:
            new = [c for c in r["processes"] if c not in seen]
            seen.update(new)
            lines += [f"- {r['test']}: " + "; ".join(f"`{c[:120]}`" for c in new)] if new else []
    lines += ["", "| process | count | imported torch | CPU s |", "|---|---:|---:|---:|"]
    for c in o["by_command"][:20]:
        lines.append(f"| `{c['command']}` | {c['processes']} | {c['torch']} | {c['cpu']:.0f} |")
    lines += ["", "| file | tests | wall s | CPU s |", "|---|---:|---:|---:|"]
    for k, v in sorted(o["files"].items(), key=lambda kv: -kv[1]["wall"]):
        lines.append(f"| {k} | {v['tests']} | {v['wall']:.0f} | {v['cpu']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
