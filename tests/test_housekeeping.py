"""A run's lifecycle on real run folders: `rm` (confirmation, --keep-models, a running run refused, the store
rows gone), `runs --prune-missing`, `gc` (a finished run's checkpoints, --dry-run), `tag` and `note` (shown and
filtered), finding runs by prefix, `latest` and "did you mean", and job logs found from another folder and
after the runs folder moved."""

import json
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from core.runs import Run
from core.store import open_store
from tests.conftest import MICRO, REPO, assert_clean_error, run_cli

pytestmark = pytest.mark.xdist_group("housekeeping")  # its module fixture is built once, on one worker


def _train(rd, name, steps=2):
    run_cli("train", "--preset", "tiny", "--name", name, "--train-steps", steps, *MICRO, "--runs-dir", rd, check=0)


def _rows(rd, table, run):
    with sqlite3.connect(rd / "stepadapt.db") as db:
        return db.execute(f"select count(*) from {table} where run = ?", [run]).fetchone()[0]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    rd = tmp_path_factory.mktemp("house")
    _train(rd, "alpha-20250101")
    _train(rd, "beta-20250102")
    return rd


def test_prefix_latest_and_did_you_mean(two_runs):
    rd = ["--runs-dir", two_runs]
    assert json.loads(run_cli("show", "alp", "--json", *rd, check=0).stdout)["run"]["name"] == "alpha-20250101"
    assert json.loads(run_cli("show", "latest", "--json", *rd, check=0).stdout)["run"]["name"] == "beta-20250102"
    p = run_cli("show", "alhpa", *rd)
    assert_clean_error(p)
    assert "did you mean alpha-20250101?" in p.stderr
    _train(two_runs, "alpha-20250103")
    p = run_cli("show", "alpha", *rd)
    assert_clean_error(p)
    assert "ambiguous" in p.stderr and "alpha-20250101" in p.stderr and "alpha-20250103" in p.stderr
    run_cli("rm", "alpha-20250103", "--yes", *rd, check=0)


def test_tags_and_notes_are_shown_and_filter(two_runs):
    rd = ["--runs-dir", two_runs]
    assert "paper, lr=3e-4" in run_cli("tag", "alpha", "paper", "lr=3e-4", *rd, check=0).stdout
    run_cli("note", "alpha", "the", "first", "try", *rd, check=0)
    rows = json.loads(run_cli("runs", "--json", "--tag", "paper", *rd, check=0).stdout)
    assert [r["name"] for r in rows] == ["alpha-20250101"] and rows[0]["tags"] == {"paper": None, "lr": "3e-4"}
    assert [r["name"] for r in json.loads(run_cli("runs", "--json", "--tag", "lr=1e-3", *rd, check=0).stdout)] == []
    shown = run_cli("show", "alpha", *rd, env={"COLUMNS": "120"}, check=0).stdout
    assert "paper, lr=3e-4" in shown and "the first try" in shown
    run_cli("tag", "alpha", "--remove", "lr", *rd, check=0)
    assert json.loads(run_cli("runs", "--json", "--tag", "paper", *rd, check=0).stdout)[0]["tags"] == {"paper": None}
    assert_clean_error(run_cli("tag", "alpha", "--remove", "nosuch", *rd))
    assert_clean_error(run_cli("tag", "alpha", "bad key!", *rd))
    listed = json.loads(run_cli("runs", "--json", "--sort", "name", "--limit", "1", *rd, check=0).stdout)
    assert [r["name"] for r in listed] == ["alpha-20250101"] and listed[0]["bytes"] > 0


def test_gc_drops_only_finished_runs_checkpoints(two_runs):
    rd = ["--runs-dir", two_runs]
    ckpt = two_runs / "beta-20250102" / "checkpoints" / "base.pt"
    assert ckpt.exists()
    assert "would free 0B" in run_cli("gc", "--dry-run", *rd, check=0).stdout  # neither run has succeeded
    open_store(two_runs).update_run("beta-20250102", status="succeeded")
    dry = run_cli("gc", "--dry-run", *rd, check=0).stdout
    assert "base.pt" in dry and ckpt.exists()
    assert "freed" in run_cli("gc", *rd, check=0).stdout
    assert not ckpt.exists() and (two_runs / "beta-20250102" / "models" / "base.pt").exists()
    assert (two_runs / "alpha-20250101" / "checkpoints" / "base.pt").exists()


def test_rm_asks_refuses_a_running_run_and_removes_the_rows(two_runs, tmp_path):
    rd = ["--runs-dir", two_runs]
    _train(two_runs, "gamma")
    run_cli("tag", "gamma", "x", *rd, check=0)
    p = subprocess.run(
        [sys.executable, "-m", "stepadapt_cli.main", "rm", "gamma", *rd],
        cwd=REPO,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and (two_runs / "gamma").is_dir()  # answered no: nothing removed
    from core.manager.jobs import proc_start

    # a live process stands in for a running job of the run (a job without one is marked lost)
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"], start_new_session=True)
    time.sleep(0.2)
    store = open_store(two_runs)
    job = store.add_job(
        {
            "run": "gamma",
            "stage": "finetune",
            "group_index": 0,
            "status": "running",
            "heartbeat": time.time(),
            "pid": proc.pid,
            "pgid": proc.pid,
            "proc_start": proc_start(proc.pid),
        }
    )
    try:
        p = run_cli("rm", "gamma", "--yes", *rd)
        assert_clean_error(p)
        assert "is running" in p.stderr and (two_runs / "gamma" / "config.json").exists()
    finally:
        proc.kill()
        proc.wait()
    store.finish_job(job, "killed", None)
    out = run_cli("rm", "gamma", "--yes", "--keep-models", *rd, check=0).stdout
    assert "removed run gamma" in out and "kept" in out
    assert sorted(p.name for p in (two_runs / "gamma").iterdir()) == ["models"]
    assert _rows(two_runs, "jobs", "gamma") == 0 and _rows(two_runs, "run_tags", "gamma") == 0
    assert "gamma" not in [r["name"] for r in json.loads(run_cli("runs", "--json", *rd, check=0).stdout)]
    _train(two_runs, "delta")
    run_cli("rm", "delta", "-y", *rd, check=0)
    assert not (two_runs / "delta").exists() and _rows(two_runs, "metrics", "delta") == 0


def test_runs_prune_missing_forgets_ghosts(two_runs):
    rd = ["--runs-dir", two_runs]
    _train(two_runs, "ghost")
    shutil.rmtree(two_runs / "ghost")
    rows = json.loads(run_cli("runs", "--json", *rd, check=0).stdout)
    assert {r["name"]: r["status"] for r in rows}["ghost"] == "missing"
    p = run_cli("runs", "--json", "--prune-missing", *rd, check=0)
    assert "ghost" in p.stderr and "ghost" not in [r["name"] for r in json.loads(p.stdout)]


def test_logs_are_found_from_another_folder_and_after_the_runs_folder_moved(tmp_path):
    from core.manager.jobs import launch, settle

    home = tmp_path / "home"
    rd = home / "runs"
    rd.mkdir(parents=True)
    _train(rd, "logged")
    run = Run(rd / "logged")
    store = open_store(rd)
    job, proc = launch(store, run, "schedule")
    settle(store, job, proc.wait(timeout=120))
    with sqlite3.connect(rd / "stepadapt.db") as db:
        stored = db.execute("select log_path from jobs where id = ?", [job]).fetchone()[0]
        assert stored == f"logged/logs/{job:04d}-schedule.log"  # relative to the runs folder
        # an older row: the absolute path of a folder that has since moved
        db.execute(
            "update jobs set log_path = ? where id = ?", [f"/old/place/runs/logged/logs/{job:04d}-schedule.log", job]
        )
    moved = tmp_path / "elsewhere" / "runs"
    moved.parent.mkdir()
    shutil.move(str(rd), str(moved))
    out = run_cli("logs", "logged", "--runs-dir", moved, check=0).stdout
    assert "(log file missing)" not in out and f"job {job} schedule" in out and "started" in out
    assert run_cli("logs", "logged", "-n", "1", "--runs-dir", moved, check=0).stdout.count("\n") == 2
    assert_clean_error(run_cli("logs", "logged", "--stage", "finetune", "--runs-dir", moved))
    (moved / "logged" / "logs" / f"{job:04d}-schedule.log").unlink()
    assert run_cli("logs", "logged", "--runs-dir", moved, check=0).stdout.endswith("(log file missing)\n")
