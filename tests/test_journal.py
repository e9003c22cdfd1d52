"""Jobs write their books to a journal in their own folder and never open the SQLite store; the owner of the
store ingests each journal exactly once (``core/manager/journal.py``)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from core.manager.journal import Journal, ingest, read_lines
from core.runs import Run
from core.store import open_store
from tests.conftest import REPO


def _job(store, runs_dir, name="r"):
    (runs_dir / name).mkdir(exist_ok=True)
    store.add_run({"name": name, "status": "running", "path": str(runs_dir / name)})
    job_id = store.add_job({"run": name, "stage": "prune", "group_index": 0, "journal_offset": 0, "status": "running"})
    folder = Run(runs_dir / name).job_dir(job_id)
    folder.mkdir(parents=True)
    return job_id, Journal(folder)


def test_a_journal_lands_in_the_store_once_with_its_calls_rounds_and_status(runs_dir):
    """Metrics, an LLM call set later, a round that refers to the call by its journal number, an artifact, a
    heartbeat and the final status: all in the store after one ingest; ingesting again adds nothing."""
    store = open_store(runs_dir)
    job_id, j = _job(store, runs_dir)
    j.update_job(job_id, heartbeat=123.0, progress=3, total=10, message="busy", host="node7")
    j.log_metrics(
        [
            {
                "run": "r",
                "job": job_id,
                "stage": "prune",
                "group_index": 0,
                "step": s,
                "key": "loss",
                "value": 1.0 / s,
                "time": 0.0,
            }
            for s in (1, 2, 3)
        ]
    )
    cid = j.log_call(
        {
            "run": "r",
            "group_index": 0,
            "session": "s",
            "round": 0,
            "seq": 0,
            "attempt": 0,
            "model_asked": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "request_key": "k",
        }
    )
    j.update_call(cid, parsed={"keep": 0.5})
    j.log_round({"run": "r", "group_index": 0, "session": "s", "round": 0, "loss": 0.25, "accepted": 1, "call_id": cid})
    (runs_dir / "r" / "prune").mkdir()
    (runs_dir / "r" / "prune" / "group00.json").write_text("{}")
    j.add_artifact({"run": "r", "job": job_id, "path": "prune/group00.json", "kind": "plan", "sha256": "x", "bytes": 1})
    j.finish_job(job_id, "succeeded", 0)
    assert ingest(store, store.job(job_id)) == 7
    assert ingest(store, store.job(job_id)) == 0
    job = store.job(job_id)
    assert (job["status"], job["exit_code"], job["progress"], job["message"], job["host"]) == (
        "succeeded",
        0,
        3,
        "busy",
        "node7",
    )
    assert [m["step"] for m in store.metrics("r")] == [1, 2, 3]
    call = store.calls("r")[0]
    assert call["parsed"] == {"keep": 0.5} and call["job"] == job_id
    assert store.rounds("r")[0]["call_id"] == call["id"]
    assert [(a["path"], a["sha256"], a["bytes"]) for a in store.artifacts("r")] == [
        ("prune/group00.json", hashlib.sha256(b"{}").hexdigest(), 2)
    ]  # the file's own, not the record's


def test_a_line_being_written_waits_and_a_late_running_record_does_not_undo_a_final_status(runs_dir):
    store = open_store(runs_dir)
    job_id, j = _job(store, runs_dir)
    j.log_metrics(
        [
            {
                "run": "r",
                "job": job_id,
                "stage": "prune",
                "group_index": 0,
                "step": 1,
                "key": "loss",
                "value": 1.0,
                "time": 0.0,
            }
        ]
    )
    with open(j.path, "a") as f:
        f.write('{"k": "metrics", "rows": [')  # a write in progress
    recs, end = read_lines(j.path, 0)
    assert len(recs) == 1 and end < j.path.stat().st_size
    assert ingest(store, store.job(job_id)) == 1
    store.finish_job(job_id, "killed", None, "killed")
    with open(j.path, "a") as f:
        f.write("]}\n")
    j.update_job(job_id, status="running", heartbeat=5.0)
    ingest(store, store.job(job_id))
    assert store.job(job_id)["status"] == "killed" and store.job(job_id)["heartbeat"] == 5.0


WRITER = """
import sys
from pathlib import Path
from core.manager.journal import Journal
j, n = Journal(Path(sys.argv[1])), int(sys.argv[2])
for s in range(n):
    j.log_metrics([{"run": "r", "job": 1, "stage": "prune", "group_index": 0, "step": s, "key": "loss", "value": s,
                    "time": 0.0}])
"""

INGESTER = """
import sys, time
from pathlib import Path
from core.manager.journal import ingest
from core.store import open_store
store, deadline = open_store(Path(sys.argv[1])), time.time() + 60
while time.time() < deadline:
    ingest(store, store.job(1))
    if store.db.execute("select count(*) from metrics").fetchone()[0] >= int(sys.argv[2]):
        break
"""


def test_two_owners_ingesting_one_journal_at_once_apply_each_record_exactly_once(runs_dir):
    """A writer appends while two processes ingest side by side: every value lands once, none twice."""
    store = open_store(runs_dir)
    job_id, j = _job(store, runs_dir)
    assert job_id == 1
    n = 400
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(j.path.parent), str(n)], env=env, cwd=REPO)
    owners = [
        subprocess.Popen([sys.executable, "-c", INGESTER, str(runs_dir), str(n)], env=env, cwd=REPO) for _ in range(2)
    ]
    assert writer.wait(timeout=120) == 0 and [p.wait(timeout=120) for p in owners] == [0, 0]
    ingest(store, store.job(job_id))
    steps = [m["step"] for m in store.metrics("r")]
    assert sorted(steps) == list(range(n))
    assert store.job(job_id)["journal_offset"] == j.path.stat().st_size


def test_a_job_process_cannot_open_the_store(runs_dir):
    """Workers run with STEPADAPT_NO_STORE: opening the database is an error, so a stage that tried would fail
    its job (every pipeline test would see it)."""
    code = "import sys; from pathlib import Path; from core.store import open_store; open_store(Path(sys.argv[1]))"
    p = subprocess.run(
        [sys.executable, "-c", code, str(runs_dir)],
        env={**os.environ, "STEPADAPT_NO_STORE": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "must not open the store" in p.stderr
    assert not (runs_dir / "stepadapt.db").exists()


@pytest.mark.parametrize("forkserver", ["1", "0"])
def test_a_pipeline_job_leaves_its_records_in_its_journal_and_they_reach_the_store(runs_dir, forkserver):
    """A micro run's stage jobs, forked from the pre-started worker or each a new Python process
    (STEPADAPT_FORKSERVER=0): each has a spec, a journal and its own log in RUN/jobs/NNNN/; the store holds
    their final states, metrics and artifacts, ingested from those journals."""
    from tests.conftest import MICRO, run_cli

    run_cli(
        "run",
        "--preset",
        "tiny",
        "--name",
        "j",
        *MICRO,
        "-S",
        "train.steps=4",
        "-S",
        "finetune.steps=2",
        "-S",
        "schedule.groups=2",
        "-S",
        "prune.method=magnitude",
        "-S",
        "prune.images=16",
        "-S",
        "prune.eval_images=8",
        "-S",
        "prune.batches=1",
        "-S",
        "prune.batch_size=8",
        "-S",
        "sample.n=4",
        "-S",
        "sample.steps=3",
        "-S",
        "eval.loss_images=16",
        "-S",
        "eval.fid_n=8",
        "-S",
        "eval.steps=3",
        "-S",
        "finetune.batch_size=8",
        "--runs-dir",
        runs_dir,
        env={"STEPADAPT_FORKSERVER": forkserver},
        check=0,
    )
    store = open_store(runs_dir)
    jobs = [j for j in store.jobs("j") if j["stage"] != "pipeline"]
    assert jobs and all(j["status"] == "succeeded" for j in jobs)
    for j in jobs:
        log = open(j["log_path"]).read()
        assert f"[job {j['id']}] succeeded (exit 0)" in log  # its own output, in its log
        assert "OMP_WAIT_POLICY=PASSIVE" in log  # the policy its OpenMP runtime read (a forked job's: its server's)
        folder = Run(runs_dir / "j").job_dir(j["id"])
        assert json.loads((folder / "spec.json").read_text())["stage"] == j["stage"]
        kinds = [json.loads(line)["k"] for line in (folder / "journal.jsonl").read_text().splitlines()]
        assert kinds[0] == "job" and kinds[-1] == "finish"
        assert j["journal_offset"] == (folder / "journal.jsonl").stat().st_size
    pipeline_log = next(j for j in store.jobs("j") if j["stage"] == "pipeline")["log_path"]
    assert "Warning" not in open(pipeline_log).read()  # e.g. runpy's, from re-running an imported main module
    base_rows = store.metrics("j", stage="base", key="loss")
    assert base_rows and base_rows[-1]["step"] == 4
    base = json.loads((runs_dir / "j" / "meta.json").read_text())["base"]  # recorded as stage 1's job finished
    model = (runs_dir / "j" / "models" / "base.pt").read_bytes()
    assert base == {"origin": "trained", "sha256": hashlib.sha256(model).hexdigest(), "bytes": len(model)}
    assert any(a["kind"] == "report" for a in store.artifacts("j"))
    assert (runs_dir / "j" / "report" / "index.html").exists()


def test_store_and_journal_are_both_books(tmp_path):
    """What a job writes goes through one protocol (``core.store.Books``), which both the store and the job's
    journal implement, with the same signatures."""
    import inspect

    from core.manager.journal import Journal
    from core.store import Books, Store

    for cls in (Store, Journal):
        for name, proto in inspect.getmembers(Books, inspect.isfunction):
            if name.startswith("_"):
                continue
            impl = getattr(cls, name, None)
            assert impl is not None, (cls.__name__, name)
            assert list(inspect.signature(impl).parameters) == list(inspect.signature(proto).parameters), (
                cls.__name__,
                name,
            )
    assert isinstance(Store(tmp_path / "s.db"), Books)
