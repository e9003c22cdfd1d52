"""A journal is data: anyone who can write one file in a runs folder can append to it. What the third round of
attacks did with one (issue 28: findings 1, 3, 4, 8 and 12), planted in real journals and ingested into a real
store, and what the owner does now."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.manager import journal
from core.manager.jobs import pid_alive, proc_start, stop_job
from core.manager.journal import Journal, ingest
from core.runs import Run
from core.store import open_store
from tests.conftest import REPO, run_cli


def _job(store, runs_dir, name="r", stage="prune", group=0, **fields):
    """A run (if new) and a running job of it with its folder, as ``prepare_job`` makes them."""
    if store.get_run(name) is None:
        (runs_dir / name).mkdir()
        store.add_run({"name": name, "status": "running", "path": str(runs_dir / name)})
    job_id = store.add_job(
        {"run": name, "stage": stage, "group_index": group, "journal_offset": 0, "status": "running", **fields}
    )
    Run(runs_dir / name).job_dir(job_id).mkdir(parents=True)
    return job_id, Journal(Run(runs_dir / name).job_dir(job_id))


def _plant(j, *lines):
    """Append raw lines to a journal, as an attacker with write access to the runs folder does."""
    with open(j.path, "a") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def _metric(step, **names):
    return {"step": step, "key": "loss", "value": 1.0, "time": 0.0, **names}


def _sleeper(**kw):
    """A real process that sleeps a minute (a job's stand-in, or an unrelated victim)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **kw)


def test_a_journal_cannot_write_or_delete_another_runs_rows_and_is_stamped_with_its_own(runs_dir, capsys):
    """Finding 1: three lines in one job's journal dropped another run's curve, added a forged metric and filed
    an LLM call under the other run. Now every row is stamped with the job's run, id, stage and group; records
    naming others are ignored, counted and warned about once; `drop` reaches only the job's own stage and
    group."""
    store = open_store(runs_dir)
    victim, vj = _job(store, runs_dir, "victim", "base", None)
    vj.log_metrics([_metric(s, run="victim", job=victim, stage="base", group_index=None) for s in (1, 2, 3)])
    ingest(store, store.job(victim))
    job_id, j = _job(store, runs_dir, "r", "finetune", 0)
    j.log_metrics([_metric(s, run="r", job=job_id, stage="finetune", group_index=0) for s in (1, 2, 3)])
    _plant(
        j,
        {"k": "drop", "run": "victim", "stage": "base", "group": None, "step": 0},
        {"k": "metrics", "rows": [_metric(99, run="victim", stage="base", group_index=None)]},
        {"k": "call", "id": 1, "row": {"run": "victim", "group_index": 0, "request_key": "k"}},
        {"k": "drop", "run": "r", "stage": "finetune", "group": 1, "step": 0},  # a sibling group's curve
        {"k": "drop", "run": "r", "stage": "base", "group": None, "step": 0},  # its own run's stage 1
        {"k": "metrics", "rows": [_metric(7, job=victim)]},  # its run, another job's id
        {"k": "round", "row": {"run": "r", "group_index": 3, "round": 0}},
        {"k": "artifact", "row": {"run": "victim", "path": "x", "kind": "plan"}},
        {"k": "metrics", "rows": [_metric(4)]},  # names nothing: stamped
        {"k": "drop", "run": "r", "stage": "finetune", "group": 0, "step": 2},
    )  # its own: allowed
    assert ingest(store, store.job(job_id)) == 3
    assert [m["step"] for m in store.metrics("victim")] == [1, 2, 3]
    assert store.calls("victim") == [] and store.rounds("r") == [] and store.artifacts("victim") == []
    mine = store.metrics("r")
    assert [m["step"] for m in mine] == [1, 2]  # step 3 and 4 dropped by its own drop, nothing else
    assert {(m["run"], m["job"], m["stage"], m["group_index"]) for m in mine} == {("r", job_id, "finetune", 0)}
    err = capsys.readouterr().err
    assert err.count("warning:") == 1, err
    assert f"job {job_id} (run r, finetune group 0): ignored 8 journal record(s)" in err
    _plant(j, {"k": "metrics", "rows": [_metric(5, run="victim")]}, {"k": "metrics", "rows": [_metric(5)]})
    assert ingest(store, store.job(job_id)) == 1
    assert capsys.readouterr().err == ""  # warned once per job
    assert journal.FOREIGN[str(j.path)] == 9
    assert [m["step"] for m in store.metrics("r")] == [1, 2, 5] and len(store.metrics("victim")) == 3


def test_a_journal_cannot_set_the_pid_that_kill_signals_nor_keep_a_job_alive(runs_dir, capsys):
    """Finding 3: a `job` record naming an unrelated process got that process killed by `kill`, and a heartbeat
    of 1e300 kept a job from ever being lost. Now pid, pgid and start time are the launcher's, the heartbeat is
    clamped to the owner's clock and progress and total to sane ranges."""
    store = open_store(runs_dir)
    victim, proc = _sleeper(), _sleeper(start_new_session=True)
    try:
        job_id, j = _job(
            store, runs_dir, pid=proc.pid, pgid=proc.pid, proc_start=proc_start(proc.pid), heartbeat=time.time()
        )
        _plant(
            j,
            {"k": "job", "fields": {"pid": victim.pid, "proc_start": proc_start(victim.pid)}},
            {"k": "job", "fields": {"pgid": victim.pid}},
            {"k": "job", "fields": {"proc_start": 1, "heartbeat": 1e300, "progress": -5, "total": 1e30}},
            {"k": "job", "fields": {"total": 10**30}},
        )
        before = time.time()
        assert ingest(store, store.job(job_id)) == 2
        row = store.job(job_id)
        assert (row["pid"], row["pgid"], row["proc_start"]) == (proc.pid, proc.pid, proc_start(proc.pid))
        assert before <= row["heartbeat"] <= time.time()
        assert (row["progress"], row["total"]) == (0, 2**53)
        err = capsys.readouterr().err
        assert "journal line 2 skipped: unknown field 'pgid' in fields" in err
        assert "journal line 4 skipped: total is out of range" in err and "ignored 1 journal record(s)" in err

        time.sleep(1.5)  # the clamped heartbeat goes stale: another process's reconcile finds the job lost
        code = "import sys; from core.manager.jobs import open_reconciled; open_reconciled(sys.argv[1])"
        subprocess.run(
            [sys.executable, "-c", code, str(runs_dir)],
            cwd=REPO,
            check=True,
            env={**os.environ, "STEPADAPT_STALE": "1"},
        )
        assert store.job(job_id)["status"] == "lost" and "no heartbeat" in store.job(job_id)["message"]

        store.update_job(job_id, status="running", heartbeat=time.time())
        assert stop_job(store, job_id, grace=2.0) == "killed"
        assert proc.wait(timeout=10) != 0 and victim.poll() is None and pid_alive(victim.pid)
    finally:
        for p in (victim, proc):
            p.kill()
            p.wait()


CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_pid_is_taken_only_for_a_process_the_launcher_started(runs_dir):
    """A DDP job's rank 0 (a child of torchrun, the launched process) says its pid: that one is kept, with the
    start time the owner reads itself (not the record's)."""
    store = open_store(runs_dir)
    proc = subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        rank0 = int(proc.stdout.readline())
        job_id, j = _job(store, runs_dir, pid=proc.pid, pgid=proc.pid, proc_start=proc_start(proc.pid))
        _plant(j, {"k": "job", "fields": {"pid": rank0, "proc_start": 12345}})
        ingest(store, store.job(job_id))
        row = store.job(job_id)
        assert (row["pid"], row["pgid"], row["proc_start"]) == (rank0, proc.pid, proc_start(rank0))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


BAD = [
    ("[1, 2]", "not a JSON object"),
    ('"job"', "not a JSON object"),
    ('{"k": "finish"}', "finish record without 'status'"),
    ('{"k": "finish", "status": "exploded"}', "status 'exploded' is not one of"),
    ('{"k": "job", "fields": {"status": "succeeded"}}', "status 'succeeded' is not one of queued, running"),
    ('{"k": "teleport"}', "unknown kind 'teleport'"),
    (
        '{"k": "metrics", "rows": [{"step": 1, "key": "loss", "value": 1, "colour": "red"}]}',
        "unknown field 'colour' in a metrics row",
    ),
    ('{"k": "metrics", "rows": [{"step": 18446744073709551616, "key": "loss", "value": 1}]}', "step is out of range"),
    ('{"k": "metrics", "rows": [{"key": "loss", "value": 1}]}', "a metrics row without step, key or value"),
    ('{"k": "metrics", "rows": {"step": 1}}', "rows is not a list"),
    ('{"k": "job", "fields": {"progress": "many"}}', "progress must be a number"),
    ('{"k": "job", "fields": {"heartbeat": NaN}}', "heartbeat is not a number"),
    ('{"k": "call_set", "id": 1, "fields": {"nope": 1}}', "unknown field 'nope' in fields"),
    ('{"k": "call", "id": -1, "row": {}}', "id must be an integer >= 0"),
    ('{"k": "drop", "run": "r", "stage": "prune", "group": 0}', "drop record without 'step'"),
    ('{"k": "artifact", "row": {"path": "x", "kind": "virus"}}', "kind 'virus' is not one of"),
    ('{"k": "metrics", "extra": 1, "rows": []}', "unknown field 'extra' in a metrics record"),
    ("[" * 100000 + "]" * 100000, "not JSON"),
    ('{"k": "metr', "not JSON"),
]


def test_bad_journal_lines_are_skipped_with_a_warning_and_never_block_a_listing(runs_dir):
    """Finding 4: any of these single lines in an active job's journal made every `runs`, `show`, `resume` and
    TUI call fail with `internal error`. Each is skipped with a warning naming the job and its line, the offset
    moves on, the good lines around them land, and the other run's job is ingested too."""
    store = open_store(runs_dir)
    other, oj = _job(store, runs_dir, "other", "base", None)
    oj.log_metrics([_metric(1)])
    job_id, j = _job(store, runs_dir)
    j.log_metrics([_metric(1)])
    _plant(j, *[line for line, _ in BAD])
    j.log_metrics([_metric(2)])
    p = run_cli("runs", "--json", "--runs-dir", runs_dir)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert {r["name"] for r in json.loads(p.stdout)} == {"r", "other"}
    for n, (_, why) in enumerate(BAD, start=2):
        said = f"warning: job {job_id} (run r, prune group 0): journal line {n} skipped: {why}"
        assert said in p.stderr, p.stderr
    assert p.stderr.count("warning:") == len(BAD)
    assert [m["step"] for m in store.metrics("r")] == [1, 2] and len(store.metrics("other")) == 1
    assert store.job(job_id)["journal_offset"] == j.path.stat().st_size
    p = run_cli("runs", "--json", "--runs-dir", runs_dir, check=0)
    assert "warning" not in p.stderr  # skipped once, never read again


def test_an_artifact_is_a_file_inside_its_run_hashed_by_the_owner(runs_dir, tmp_path, capsys):
    """Finding 8: an artifact record with path ../../../../../etc/passwd, and one with a forged sha256 for
    models/base.pt, were stored as they were. Paths are now normalised (relative, no '..', no symlink, a regular
    file inside the run) and the owner hashes the file itself."""
    store = open_store(runs_dir)
    job_id, j = _job(store, runs_dir)
    run = runs_dir / "r"
    (run / "models").mkdir()
    (run / "models" / "base.pt").write_bytes(b"the real weights")
    outside = tmp_path / "secret"
    outside.write_text("not the run's")
    (run / "models" / "link.pt").symlink_to(outside)
    (run / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(run / "models" / "fifo.pt")
    bad = [
        "../../../../../etc/passwd",
        "/etc/passwd",
        "models/../../r/models/base.pt",
        "models/link.pt",
        "elsewhere/secret",
        "models/fifo.pt",
        "models/missing.pt",
        "",
        ".",
        "models\\base.pt",
    ]
    for path in bad:
        j.add_artifact({"path": path, "kind": "model"})
    j.add_artifact(
        {"run": "r", "job": job_id, "path": "./models//base.pt", "kind": "model", "sha256": "0" * 64, "bytes": 1}
    )
    assert ingest(store, store.job(job_id)) == 1
    assert [(a["path"], a["sha256"], a["bytes"]) for a in store.artifacts("r")] == [
        ("models/base.pt", hashlib.sha256(b"the real weights").hexdigest(), 16)
    ]
    err = capsys.readouterr().err
    assert err.count("skipped: artifact") == len(bad), err


def test_ingested_text_is_capped(runs_dir, capsys):
    """Finding 12: a 50 MB journal message went into jobs.message (and `runs` then took 466 MB). A message is cut
    at 4 KiB with a marker, an answer at 256 KiB, a key longer than 4 KiB refuses its record, and a line over
    4 MiB is skipped."""
    store = open_store(runs_dir)
    job_id, j = _job(store, runs_dir)
    j.update_job(job_id, message="x" * 50_000)
    cid = j.log_call({"request_key": "k", "response_text": "z" * 300_000})
    j.log_call({"request_key": "k" * 5000})
    _plant(j, json.dumps({"k": "job", "fields": {"message": "w" * (5 << 20)}}))
    j.update_call(cid, parsed={"keep": 0.5})
    assert ingest(store, store.job(job_id)) == 3
    message = store.job(job_id)["message"]
    assert message == "x" * 4096 + " [... 45904 characters cut]"
    answer = store.calls("r")[0]["response_text"]
    assert len(answer) < 256 * 1024 + 64 and answer.endswith("characters cut]")
    assert len(store.calls("r")) == 1 and store.calls("r")[0]["parsed"] == {"keep": 0.5}
    err = capsys.readouterr().err
    assert "line 3 skipped: request_key is longer than 4096 characters" in err
    assert "line 4 skipped: longer than 4194304 bytes" in err
    j.finish_job(job_id, "failed", 1, "y" * 10_000)
    assert ingest(store, store.job(job_id)) == 1
    assert store.job(job_id)["message"] == "y" * 4096 + " [... 5904 characters cut]"


INGEST = """
import sys
from core.manager.journal import ingest
from core.store import open_store
store = open_store(sys.argv[1])
print(ingest(store, store.job(1)), len(store.metrics("r")))
"""


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_journal_that_is_not_a_regular_file_is_not_read(runs_dir, kind):
    """A journal replaced by a FIFO (a read would wait forever: the owner runs with a timeout here) or by a
    symlink to another file is not read."""
    store = open_store(runs_dir)
    job_id, j = _job(store, runs_dir)
    assert job_id == 1
    if kind == "fifo":
        os.mkfifo(j.path)
    else:
        target = runs_dir / "elsewhere.jsonl"
        target.write_text(json.dumps({"k": "metrics", "rows": [_metric(1)]}) + "\n")
        j.path.symlink_to(target)
    p = subprocess.run(
        [sys.executable, "-c", INGEST, str(runs_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.returncode == 0 and p.stdout.split() == ["0", "0"], p.stderr
