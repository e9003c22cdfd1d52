"""The orchestrator against faults from outside: a job that hangs (``kill -STOP``) and a store whose write lock
another process holds longer than the busy timeout."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from tests.conftest import MICRO, REPO


def _start(runs_dir, name, *settings, env=None):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stepadapt_cli.main",
            "run",
            "--preset",
            "tiny",
            "--name",
            name,
            *MICRO,
            "-S",
            "train.steps=4",
            "-S",
            "schedule.groups=1",
            "-S",
            "prune.method=none",
            "-S",
            "control.enabled=false",
            "-S",
            "eval.fid=false",
            "-S",
            "eval.loss_images=8",
            "-S",
            "sample.n=2",
            "-S",
            "sample.steps=2",
            *settings,
            "--runs-dir",
            str(runs_dir),
        ],
        cwd=REPO,
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _job(runs_dir, name, stage):
    con = sqlite3.connect(runs_dir / "stepadapt.db", timeout=60)
    try:
        con.row_factory = sqlite3.Row
        row = con.execute("select * from jobs where run = ? and stage = ? order by id desc", [name, stage]).fetchone()
        return dict(row) if row else None
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


def _wait(cond, seconds, what):
    end = time.time() + seconds
    while time.time() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_hung_job_is_killed_by_its_own_orchestrator_and_the_stage_fails_as_lost(runs_dir):
    """kill -STOP of a fine-tune: the orchestrator notices the silence itself (its heartbeat rule), kills the job's
    group and fails the stage in one line, instead of waiting for ever; the stopped process is gone."""
    p = _start(runs_dir, "hang", "-S", "finetune.steps=100000", env={"STEPADAPT_STALE": "6"})
    job = _wait(
        lambda: (lambda j: j if j and j["status"] == "running" and j["pid"] else None)(
            _job(runs_dir, "hang", "finetune")
        ),
        240,
        "the fine-tune to run",
    )
    os.kill(job["pid"], signal.SIGSTOP)
    try:
        out, err = p.communicate(timeout=120)
    finally:
        os.kill(job["pid"], signal.SIGCONT) if os.path.exists(f"/proc/{job['pid']}") else None
    assert p.returncode == 1, err
    assert "no heartbeat for" in err and "stepadapt resume hang" in err.strip().splitlines()[-1]
    assert _job(runs_dir, "hang", "finetune")["status"] == "lost"
    assert not os.path.exists(f"/proc/{job['pid']}") or open(f"/proc/{job['pid']}/stat").read().split()[2] == "Z"


def test_a_write_lock_held_past_the_busy_timeout_delays_the_run_and_loses_nothing(runs_dir):
    """Another process holds BEGIN EXCLUSIVE on the store for longer than the busy timeout (2 s here) while the
    run's jobs work: the orchestrator says the store is busy, waits, and the run still succeeds."""
    p = _start(runs_dir, "busy", "-S", "finetune.steps=60", env={"STEPADAPT_BUSY_S": "2"})
    _wait(
        lambda: (lambda j: j and j["status"] == "running")(_job(runs_dir, "busy", "finetune")),
        240,
        "the fine-tune to run",
    )
    con = sqlite3.connect(runs_dir / "stepadapt.db", timeout=60, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    time.sleep(8)
    con.execute("COMMIT")
    con.close()
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "store busy" in err and "store free again" in err
    assert _job(runs_dir, "busy", "eval")["status"] == "succeeded"


def _ppid(pid):
    raw = open(f"/proc/{pid}/stat").read()
    return int(raw[raw.rfind(")") + 2 :].split()[1])


def test_killing_the_fork_server_takes_its_jobs_and_resume_trains_each_group_once(runs_dir):
    """SIGKILL to the pre-started worker that forks the jobs, during the fine-tunes: its jobs stop with it
    (checkpointed on the parent-death SIGUSR1) instead of training on as orphans; no job is recorded as ended
    while its process lives; resume trains each group on from its checkpoint, every logged step once."""
    p = _start(
        runs_dir,
        "orphans",
        "-S",
        "finetune.steps=48",
        "-S",
        "schedule.groups=2",
        "-S",
        "train.log_every=10",
        "--parallel",
        "2",
        env={"STEPADAPT_STEP_PAUSE": "0.3", "STEPADAPT_HEARTBEAT": "0.3"},  # 14 s to kill in; the resume is not paced
    )
    jobs = _wait(
        lambda: (
            lambda js: (
                js if len(js) == 2 and all(j["status"] == "running" and (j["progress"] or 0) > 5 for j in js) else None
            )
        )([j for j in _jobs(runs_dir, "orphans") if j["stage"] == "finetune"]),
        300,
        "both fine-tunes to run",
    )
    server = _ppid(jobs[0]["pid"])
    assert server == _ppid(jobs[1]["pid"]) and server != p.pid
    os.kill(server, signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0
    _wait(
        lambda: (
            not any(
                os.path.exists(f"/proc/{j['pid']}") and open(f"/proc/{j['pid']}/stat").read().split()[2] != "Z"
                for j in jobs
            )
        ),
        30,
        "the fine-tunes to stop with their server",
    )
    assert all(
        j["status"] in ("killed", "failed", "lost") for j in _jobs(runs_dir, "orphans") if j["stage"] == "finetune"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepadapt_cli.main",
            "resume",
            "orphans",
            "--parallel",
            "2",
            "--runs-dir",
            str(runs_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(runs_dir / "stepadapt.db")
    for g in (0, 1):
        steps = [
            s
            for (s,) in con.execute(
                "select step from metrics where run = 'orphans' and stage = 'finetune' "
                "and group_index = ? and key = 'loss' order by step",
                [g],
            )
        ]
        assert steps == list(range(4, 49, 4)), (
            g,
            steps,
        )  # logged every 48 // 10 steps, each once: nothing lost, nothing twice


def _jobs(runs_dir, name):
    con = sqlite3.connect(runs_dir / "stepadapt.db", timeout=60)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("select * from jobs where run = ? order by id", [name])]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()
