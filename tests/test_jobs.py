"""The experiment manager with real subprocesses: `stepadapt run/resume/kill/runs/show/compare/logs`."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch

from core.manager.jobs import group_pids, pid_alive
from core.training.devices import bf16_native
from tests.conftest import MICRO, REPO, assert_clean_error, run_cli

# the whole method on a micro model: 3 groups, one proxy round, a few steps everywhere
FAST = [
    *MICRO,
    "-S",
    "train.log_every=10",
    "-S",
    "finetune.steps=4",
    "-S",
    "finetune.batch_size=8",
    "-S",
    "schedule.groups=3",
    "-S",
    "prune.rounds=1",
    "-S",
    "prune.images=32",
    "-S",
    "prune.eval_images=16",
    "-S",
    "prune.batches=1",
    "-S",
    "prune.batch_size=8",
    "-S",
    "sample.n=4",
    "-S",
    "sample.steps=5",
    "-S",
    "eval.loss_images=16",
    "-S",
    "eval.fid_n=8",
    "-S",
    "eval.steps=3",
]


def _db(runs_dir):
    con = sqlite3.connect(runs_dir / "stepadapt.db", timeout=30)
    con.row_factory = sqlite3.Row
    return con


def _jobs(runs_dir, run):
    """The run's job rows as stored, with log paths resolved: the store keeps them relative to the runs folder."""
    with _db(runs_dir) as con:
        rows = [dict(r) for r in con.execute("select * from jobs where run = ? order by id", [run])]
    for r in rows:
        if r.get("log_path"):
            r["log_path"] = str(Path(runs_dir) / r["log_path"])
    return rows


def _wait(cond, timeout=120, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_crash_lost_resume_then_listing_and_bad_input(runs_dir):
    """The whole method through `stepadapt run`, killed with SIGKILL mid-training (orchestrator and training job
    at once), marked lost, resumed to the end with nothing lost; then the listings and bad input."""
    rd = ["--runs-dir", runs_dir]
    p = run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "e2e",
        *FAST,
        "-S",
        "train.steps=60",
        "-S",
        "train.ckpt_every=15",
        "--detach",
        *rd,
        env={"STEPADAPT_STEP_PAUSE": "0.3", "STEPADAPT_HEARTBEAT": "0.3"},  # 8 s from step 32 to its end
        check=0,
    )
    assert "background" in p.stdout

    def base_running():
        js = [j for j in _jobs(runs_dir, "e2e") if j["stage"] == "base"]
        return js[0] if js and (js[0]["progress"] or 0) >= 32 else None

    base = _wait(base_running, what="base training past step 32")
    pipe = next(j for j in _jobs(runs_dir, "e2e") if j["stage"] == "pipeline")
    for j in (pipe, base):  # a crash: no chance to clean up
        os.killpg(j["pgid"], signal.SIGKILL)
    _wait(lambda: not pid_alive(base["pid"]) and not pid_alive(pipe["pid"]), 30, "processes to die")
    ckpt = torch.load(runs_dir / "e2e" / "checkpoints" / "base.pt", weights_only=True)
    assert 30 <= ckpt["step"] < 60
    lst = json.loads(run_cli("runs", "--json", *rd, check=0).stdout)
    assert lst[0]["status"] == "lost"
    assert {j["stage"]: j["status"] for j in _jobs(runs_dir, "e2e")} == {"pipeline": "lost", "base": "lost"}

    p = run_cli("resume", "e2e", *rd, check=0)
    # the final table compares the base and the progressive model
    assert "Table 1 style" in p.stdout and "base" in p.stdout and "progressive" in p.stdout
    assert "resuming from step" in run_cli("logs", "e2e", *rd, check=0).stdout
    run = runs_dir / "e2e"
    for f in (
        "schedule.json",
        "schedule.png",
        "eval.json",
        "models/base.pt",
        "models/progressive.pt",
        "models/control.pt",
        "samples/base_s5_seed0.png",
        "samples/progressive_s5_seed0.png",
        "samples/control_s5_seed0.png",
        "samples/side_by_side_s5_seed0.png",
        "report/index.html",
    ):
        assert (run / f).exists(), f
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["models"]) == {"base", "control", "progressive"}
    assert ev["models"]["control"]["train_steps"] == ev["models"]["progressive"]["train_steps"]
    assert ev["models"]["progressive"]["macs"] < ev["models"]["base"]["macs"]
    assert ev["models"]["progressive"]["fid_kind"].startswith("domain FID")
    jobs = _jobs(runs_dir, "e2e")
    assert [j["status"] for j in jobs if j["stage"] == "base"] == ["lost", "succeeded"]
    sched = json.loads((run / "schedule.json").read_text())
    nonempty = [g["index"] for g in sched["groups"] if g["size"]]
    assert sorted(j["group_index"] for j in jobs if j["stage"] == "finetune") == nonempty
    assert sorted(j["group_index"] for j in jobs if j["stage"] == "prune") == nonempty
    assert all(j["status"] == "succeeded" and j["exit_code"] == 0 for j in jobs[2:])
    assert all(os.path.exists(j["log_path"]) for j in jobs if j["log_path"])
    # nothing lost: every logged step exactly once in the store and in the metrics file; checkpoint complete
    with _db(runs_dir) as con:
        steps = [
            r[0]
            for r in con.execute(
                "select step from metrics where run='e2e' and stage='base' and key='loss' order by step"
            )
        ]
        arts = {r[0]: r[1] for r in con.execute("select path, sha256 from artifacts where run='e2e'")}
        run_status = con.execute("select status from runs where name='e2e'").fetchone()[0]
    assert steps == list(range(10, 61, 10)) and run_status == "succeeded"
    lines = (run / "metrics" / "base.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(10, 61, 10))
    assert torch.load(run / "checkpoints" / "base.pt", weights_only=True)["step"] == 60
    import hashlib

    assert arts["models/base.pt"] == hashlib.sha256((run / "models/base.pt").read_bytes()).hexdigest()

    lst = json.loads(run_cli("runs", "--json", *rd, check=0).stdout)
    assert [(r["name"], r["status"], r["stages_done"]) for r in lst] == [("e2e", "succeeded", 8)]
    show = json.loads(run_cli("show", "e2e", "--json", *rd, check=0).stdout)
    for g in show["groups"]:
        if g["size"]:
            assert g["macs"] <= g["budget_macs"] * 1.0001 and g["finetuned"]
    assert show["metrics_last"]["base"]["step"] == 60
    cmp = json.loads(run_cli("compare", "e2e", "e2e", "--json", *rd, check=0).stdout)
    assert [r["model"] for r in cmp["rows"]] == ["base", "control", "progressive"] * 2
    assert cmp["config_differences"] == {} and set(cmp["comparisons"]) == {"e2e"}
    base_job = [j for j in jobs if j["stage"] == "base"][-1]
    log = run_cli("logs", str(base_job["id"]), *rd, check=0).stdout
    assert "step 60/60" in log and "succeeded (exit 0)" in log
    assert "==> job" in run_cli("logs", "e2e", *rd, check=0).stdout

    # bad input: one clear line, non-zero exit
    assert_clean_error(run_cli("resume", "e2e", *rd))  # finished
    assert_clean_error(run_cli("resume", "nope", *rd))  # unknown
    assert_clean_error(run_cli("run", "--preset", "tiny", "--name", "e2e", *FAST, *rd))  # same name
    assert_clean_error(run_cli("kill", str(base_job["id"]), *rd))  # finished job
    assert_clean_error(run_cli("kill", "e2e", *rd))  # nothing running
    assert_clean_error(run_cli("logs", "nope", *rd))
    bad = runs_dir / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    p = run_cli("run", str(bad), "--name", "bad", *rd)
    assert_clean_error(p)
    assert "stepz" in p.stderr and not (runs_dir / "bad").exists()


def test_kill_stops_running_job_and_its_children(runs_dir):
    rd = ["--runs-dir", runs_dir]
    run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "long",
        *FAST,
        "-S",
        "train.steps=100000",
        "--method",
        "none",
        "--detach",
        *rd,
        check=0,
    )

    def base_started():
        js = [j for j in _jobs(runs_dir, "long") if j["stage"] == "base"]
        return js[0] if js and (js[0]["progress"] or 0) >= 5 else None

    base = _wait(base_started, what="base training")
    pipe = next(j for j in _jobs(runs_dir, "long") if j["stage"] == "pipeline")
    p = run_cli("kill", "long", "--grace", "20", *rd, check=0)
    assert "killed" in p.stdout
    for j in (pipe, base):
        assert not pid_alive(j["pid"]) and group_pids(j["pgid"]) == []
    st = {j["stage"]: (j["status"], j["exit_code"]) for j in _jobs(runs_dir, "long")}
    assert st["base"] == ("killed", 130)  # SIGINT: it checkpointed and exited 130
    assert st["pipeline"][0] == "killed"
    ck = torch.load(runs_dir / "long" / "checkpoints" / "base.pt", weights_only=True)
    assert ck["step"] >= 5
    assert json.loads(run_cli("runs", "--json", *rd, check=0).stdout)[0]["status"] == "killed"
    assert_clean_error(run_cli("kill", str(base["id"]), *rd))


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def test_a_killed_ddp_launcher_takes_its_ranks_with_it(runs_dir):
    """SIGKILL to a DDP job's process group reaches only torchrun's agent (the ranks run in sessions of their
    own); the ranks die with it instead of training on unseen, and the job is found lost."""
    rd = ["--runs-dir", runs_dir]
    run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "orphan",
        *FAST,
        "-S",
        "train.steps=100000",
        "--method",
        "none",
        "--parallel",
        "2",
        "--detach",
        *rd,
        check=0,
    )

    def base_started():
        js = [j for j in _jobs(runs_dir, "orphan") if j["stage"] == "base"]
        return js[0] if js and (js[0]["progress"] or 0) >= 3 else None

    base = _wait(base_started, what="base training on two ranks")
    ranks = _children(base["pgid"])  # the job's group is torchrun's agent; its pid is rank 0's
    assert len(ranks) == 2 and base["pid"] in ranks
    pipe = next(j for j in _jobs(runs_dir, "orphan") if j["stage"] == "pipeline")
    for j in (pipe, base):
        os.killpg(j["pgid"], signal.SIGKILL)
    _wait(lambda: not any(pid_alive(r) for r in ranks), 15, "the ranks to die with their launcher")
    assert {j["stage"]: j["status"] for j in _jobs(runs_dir, "orphan")}["base"] in ("running", "lost")
    assert json.loads(run_cli("runs", "--json", *rd, check=0).stdout)[0]["status"] == "lost"


def test_stage_one_on_two_cpu_slots_trains_as_two_ranks_stops_with_a_checkpoint_and_resumes(runs_dir):
    """`--parallel 2` on CPU: stage 1 is one job of two one-thread ranks (torchrun, DDP). `kill` stops both
    ranks with a checkpoint; `resume` continues it from there, and the control trains the same way."""
    rd = ["--runs-dir", runs_dir]
    # each step sleeps 0.25 s until the kill (a 20 s window, however slowly the ranks start); the resume does not
    paced = {"STEPADAPT_STEP_PAUSE": "0.25", "STEPADAPT_HEARTBEAT": "0.3"}
    run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "ddp",
        *FAST,
        "-S",
        "train.steps=80",
        "-S",
        "eval.fid=false",
        "--method",
        "none",
        "--parallel",
        "2",
        "--detach",
        *rd,
        env=paced,
        check=0,
    )

    def base_started():
        js = [j for j in _jobs(runs_dir, "ddp") if j["stage"] == "base"]
        return js[0] if js and (js[0]["progress"] or 0) >= 5 else None

    base = _wait(base_started, what="base training on two ranks")
    ranks = _children(base["pgid"])  # the job's group is torchrun's agent; its ranks run in sessions of their own
    assert len(ranks) == 2 and base["pid"] in ranks
    p = run_cli("kill", "ddp", "--grace", "20", *rd, check=0)
    assert "killed" in p.stdout
    assert group_pids(base["pgid"]) == [] and not any(pid_alive(r) for r in ranks)
    assert {j["stage"]: j["status"] for j in _jobs(runs_dir, "ddp")}["base"] == "killed"
    stopped = torch.load(runs_dir / "ddp" / "checkpoints" / "base.pt", weights_only=True)["step"]
    assert 5 <= stopped < 80
    log = open(base["log_path"]).read()
    assert (
        log.count("CPU threads") == 1
        and "1 CPU threads each on 2 ranks" in log
        and "2 processes (DDP)" in log
        and "Traceback" not in log
    )

    p = run_cli("resume", "ddp", "--parallel", "2", *rd, check=0)
    assert "all stages done" in p.stderr + p.stdout
    jobs = _jobs(runs_dir, "ddp")
    again = [j for j in jobs if j["stage"] == "base"][-1]
    log = open(again["log_path"]).read()
    assert f"resuming from step {stopped}" in log and "2 processes (DDP)" in log
    control = next(j for j in jobs if j["stage"] == "control")
    assert control["status"] == "succeeded" and "2 processes (DDP)" in open(control["log_path"]).read()
    assert torch.load(runs_dir / "ddp" / "checkpoints" / "base.pt", weights_only=True)["step"] == 80
    lines = (runs_dir / "ddp" / "metrics" / "base.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(10, 81, 10))  # each step once
    ev = json.loads((runs_dir / "ddp" / "eval.json").read_text())
    precision = ["bf16 autocast"] if bf16_native("cpu") else ["fp32"]  # recorded with each model
    assert {m: r["train_precision"] for m, r in ev["models"].items()} == {m: precision for m in ev["models"]}


WRITER = """
import sys
from core.store import open_store
s = open_store(sys.argv[1])
for i in range(int(sys.argv[3])):
    s.log_metrics([{"run": "w", "job": int(sys.argv[2]), "stage": "base", "group_index": None, "step": i,
                    "key": "loss", "value": float(i), "time": 0.0}])
"""

READER = """
import sys, time
from core.store import open_store
s = open_store(sys.argv[1])
n, reads = 0, 0
while n < int(sys.argv[2]):
    n = len(s.metrics("w"))
    reads += 1
print(reads)
"""


def test_two_writers_and_a_reader_lose_nothing(runs_dir):
    from core.store import open_store

    open_store(runs_dir)  # migrate once
    n = 300
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(runs_dir), str(k), str(n)], env=env) for k in (1, 2)]
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(runs_dir), str(2 * n)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and int(out) >= 1
    rows = open_store(runs_dir).metrics("w")
    assert sorted((r["job"], r["step"]) for r in rows) == [(k, i) for k in (1, 2) for i in range(n)]


def test_a_failed_group_job_ends_the_run_failed_within_seconds_and_resume_completes_it(runs_dir):
    """kill -9 of one group's fine-tune while its sibling trains and a third group waits: the orchestrator
    stops the sibling (it checkpoints), launches nothing more and ends the run `failed` (it used to wait
    forever on the queued group); `resume` then finishes every group."""
    rd = ["--runs-dir", runs_dir]
    env = {"STEPADAPT_HEARTBEAT": "0.3"}
    paced = {**env, "STEPADAPT_STEP_PAUSE": "0.25"}  # 10 s per fine-tune until the kill; the resume is not paced
    run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "fail",
        *FAST,
        "-S",
        "train.steps=10",
        "-S",
        "finetune.steps=40",
        "-S",
        "eval.fid=false",
        "-S",
        "control.enabled=false",  # not what this test is about
        "-S",
        "train.ckpt_every=20",
        "--method",
        "none",
        "--parallel",
        "2",
        "--grace",
        "5",
        "--detach",
        *rd,
        env=paced,
        check=0,
    )

    def two_training():
        ft = [j for j in _jobs(runs_dir, "fail") if j["stage"] == "finetune" and j["status"] == "running"]
        return ft if len(ft) == 2 and all((j["progress"] or 0) >= 2 for j in ft) else None

    ft = _wait(two_training, what="two group fine-tunes training")
    victim, sibling = sorted(ft, key=lambda j: j["group_index"])
    os.killpg(victim["pgid"], signal.SIGKILL)
    killed_at = time.time()
    _wait(lambda: _run_status(runs_dir, "fail") == "failed", 30, "the run to end failed")
    assert time.time() - killed_at < 30

    def pipeline_ended():  # the orchestrator's own job row is finished as its process exits, just after the run's
        return [j for j in _jobs(runs_dir, "fail") if j["stage"] == "pipeline" and j["status"] != "running"]

    _wait(pipeline_ended, 30, "the orchestrator's job to end")
    jobs = {(j["stage"], j["group_index"]): j for j in _jobs(runs_dir, "fail")}
    assert jobs[("finetune", victim["group_index"])]["status"] == "failed"
    assert jobs[("finetune", sibling["group_index"])]["status"] == "killed"
    assert jobs[("pipeline", None)]["status"] == "failed"
    assert [g for s, g in jobs if s == "finetune"] == sorted([victim["group_index"], sibling["group_index"]])
    pipe = jobs[("pipeline", None)]
    _wait(lambda: not pid_alive(sibling["pid"]) and not pid_alive(pipe["pid"]), 10, "the jobs' processes to exit")

    p = run_cli("resume", "fail", *rd, env=env, check=0)
    assert "all stages done" in p.stderr + p.stdout
    assert _run_status(runs_dir, "fail") == "succeeded"
    sib_logs = [
        j for j in _jobs(runs_dir, "fail") if j["stage"] == "finetune" and j["group_index"] == sibling["group_index"]
    ]
    assert "resuming from step" in open(sib_logs[-1]["log_path"]).read()


def _run_status(runs_dir, name):
    with _db(runs_dir) as con:
        return con.execute("select status from runs where name = ?", [name]).fetchone()[0]
