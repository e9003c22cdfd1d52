"""Stage jobs on a real single-node Slurm (``tests/slurm_cluster.py``), submitted through submitit: a run end to
end with its group jobs as job arrays, jobs that never open the store, a job cancelled from outside and resumed
from its checkpoint, a job stopped by Slurm's time-limit signal and submitted again, and bad input."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import MICRO, REPO, assert_clean_error, run_cli
from tests.slurm_cluster import Cluster, missing

pytestmark = [
    pytest.mark.skipif(bool(missing()), reason=missing() or "Slurm available"),
    pytest.mark.xdist_group("slurm"),
]  # one test cluster: every test of this file on one worker

FAST = [
    *MICRO,
    "-S",
    "train.steps=4",
    "-S",
    "finetune.steps=2",
    "-S",
    "finetune.batch_size=8",
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
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield c
    c.stop()


def slurm_cli(cluster, *args, check=None, timeout=600):
    return run_cli(*args, env={"SLURM_CONF": str(cluster.conf)}, check=check, timeout=timeout)


def _store(runs_dir):
    from core.store import open_store

    return open_store(runs_dir)


def test_a_run_on_slurm_end_to_end_with_each_group_stage_as_one_job_array(cluster, runs_dir):
    """Every stage job is a Slurm job, the group jobs of a stage one array; every job wrote its journal and none
    opened the store (they run with STEPADAPT_NO_STORE: one that tried would have failed)."""
    p = slurm_cli(
        cluster,
        "run",
        "--preset",
        "tiny",
        "--name",
        "s",
        "--launcher",
        "slurm",
        "--partition",
        "debug",
        "--cpus-per-job",
        "1",
        *FAST,
        "--runs-dir",
        runs_dir,
        check=0,
    )
    assert "submitted to Slurm" in p.stderr and "time limit UNLIMITED, no --time: the partition's" in p.stderr
    scripts = list((runs_dir / "s" / "jobs" / "slurm").rglob("*_submission.sh"))
    assert scripts and not any("--time" in f.read_text() for f in scripts)  # no limit of ours: the partition's
    assert (runs_dir / "s" / "jobs" / "slurm").stat().st_mode & 0o777 == 0o700  # submitit's pickles: owner only
    store = _store(runs_dir)
    jobs = [j for j in store.jobs("s") if j["stage"] != "pipeline"]
    assert jobs and all(j["status"] == "succeeded" and j["launcher"] == "slurm" for j in jobs)
    assert all(j["slurm_state"] == "COMPLETED" and j["host"] for j in jobs)
    for stage in ("prune", "finetune"):
        ids = [j["slurm_job"] for j in jobs if j["stage"] == stage]
        assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1 and all("_" in i for i in ids), ids
    cfg = json.loads((runs_dir / "s" / "config.json").read_text())
    assert cfg["launcher"]["kind"] == "slurm" and cfg["launcher"]["time"] == 0
    assert all(j["slurm_time"] == "UNLIMITED" for j in jobs)
    g = next(j["group_index"] for j in jobs if j["stage"] == "finetune")
    assert store.metrics("s", stage="finetune", group=g) and (runs_dir / "s" / "report" / "index.html").exists()
    for j in jobs:
        log = open(j["log_path"]).read()
        assert "must not open the store" not in log and f"[slurm] job {j['slurm_job']}: time limit UNLIMITED" in log
        assert (runs_dir / "s" / "jobs" / f"{j['id']:04d}" / "journal.jsonl").exists()
    shown = json.loads(slurm_cli(cluster, "show", "s", "--json", "--runs-dir", runs_dir, check=0).stdout)
    assert all(j.get("slurm_job") and j["slurm_time"] == "UNLIMITED" for j in shown["jobs"] if j["stage"] != "pipeline")
    assert "(limit UNLIMITED)" in slurm_cli(cluster, "show", "s", "--runs-dir", runs_dir, check=0).stdout


def _start_run(cluster, name, settings, rd, env=None) -> subprocess.Popen:
    """`stepadapt run --launcher slurm` in the background (the test acts on the cluster meanwhile)."""
    env = {**os.environ, "SLURM_CONF": str(cluster.conf), "OMP_NUM_THREADS": "1", **(env or {})}
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
            "--launcher",
            "slurm",
            *settings,
            *rd,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(cond, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_signalled_job_checkpoints_and_is_resubmitted_and_a_cancelled_one_resumes_from_its_checkpoint(
    cluster, runs_dir
):
    """Slurm's time-limit warning (SIGUSR2, sent here with scancel --signal) makes a fine-tune checkpoint and
    report ``preempted``; the orchestrator submits it again and it continues. ``scancel`` of the job from outside
    stops it ``killed`` (checkpointed on SIGTERM) and the run with it; ``resume`` finishes it, and its curve
    has every logged step once."""
    rd = ["--runs-dir", runs_dir]
    long = [
        *FAST,
        "-S",
        "finetune.steps=100",
        "-S",
        "schedule.groups=1",
        "-S",
        "train.ckpt_every=20",
        "-S",
        "train.log_every=10",
        "-S",
        "prune.method=none",
        "-S",
        "control.enabled=false",  # not what this test is about: it would train the fine-tune's 100 steps again
        "--time",
        "30",
    ]
    store = _store(runs_dir)
    # its jobs' steps sleep 0.2 s (they inherit the environment): windows to signal in; the resume is not paced
    proc = _start_run(cluster, "c", long, rd, env={"STEPADAPT_STEP_PAUSE": "0.2", "STEPADAPT_HEARTBEAT": "0.3"})

    def finetune(min_progress):
        from core.manager.jobs import reconcile

        reconcile(store)
        js = [j for j in store.jobs("c") if j["stage"] == "finetune" and j["status"] == "running"]
        return js[-1] if js and (js[-1]["progress"] or 0) >= min_progress else None

    first = _wait(lambda: finetune(30), 240, "the fine-tune to pass step 30")
    listed = json.loads(slurm_cli(cluster, "runs", "--json", *rd, check=0).stdout)
    assert f"{first['slurm_job']} running" in next(r for r in listed if r["name"] == "c")["slurm"]
    cluster.run("scancel", "--signal=USR2", first["slurm_job"])
    second = _wait(
        lambda: (lambda j: j if j and j["id"] != first["id"] else None)(finetune(1)),
        120,
        "the fine-tune submitted again",
    )
    again = store.job(first["id"])
    assert again["status"] == "preempted" and "SIGUSR2" in again["message"]
    _wait(lambda: (store.job(second["id"]) or {}).get("progress", 0) > again["progress"], 120, "progress past it")
    cluster.run("scancel", second["slurm_job"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stepadapt resume c" in err
    killed = store.job(second["id"])
    assert killed["status"] == "killed", killed
    slurm_cli(cluster, "resume", "c", *rd, check=0)
    third = [j for j in store.jobs("c") if j["stage"] == "finetune"][-1]
    assert third["status"] == "succeeded"
    resumed = re.search(r"resuming from step (\d+)", open(third["log_path"]).read())
    assert resumed and int(resumed.group(1)) >= 30
    steps = [m["step"] for m in store.metrics("c", stage="finetune", key="loss")]
    assert steps == list(range(10, 101, 10))  # every logged step once: nothing lost, nothing twice
    assert store.get_run("c")["status"] == "succeeded"
    scripts = list((runs_dir / "c" / "jobs" / "slurm").rglob("*_submission.sh"))
    assert scripts and all(
        re.findall(r"^#SBATCH --time=.*$", f.read_text(), re.M) == ["#SBATCH --time=30"] for f in scripts
    )  # the user's limit, exactly
    assert all(j["slurm_time"] == "30:00" for j in store.jobs("c") if j["stage"] != "pipeline")


def test_a_stage_that_cannot_checkpoint_stopped_by_its_time_limit_is_one_line_not_a_resubmission_loop(
    cluster, runs_dir
):
    """Slurm's time-limit warning (SIGUSR2) to a sample job: it cannot checkpoint mid-way, so submitting it again
    would start it from nothing and meet the same limit; the run stops at once, saying how to give it more time."""
    rd = ["--runs-dir", runs_dir]
    slow = [*FAST, "-S", "sample.n=64", "-S", "sample.steps=100", "-S", "schedule.groups=1", "-S", "prune.method=none"]
    slow += ["-S", "control.enabled=false"]  # one Slurm job less before the sample job this test is about
    store = _store(runs_dir)
    proc = _start_run(cluster, "t", slow, rd)

    def sampling():
        from core.manager.jobs import reconcile

        reconcile(store)
        js = [j for j in store.jobs("t") if j["stage"] == "sample" and j["status"] == "running"]
        return js[-1] if js else None

    job = _wait(sampling, 300, "the sample job to run")
    time.sleep(2)
    cluster.run("scancel", "--signal=USR2", job["slurm_job"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "cannot checkpoint mid-way" in last and "stepadapt resume t --time" in last
    assert "Traceback" not in err
    assert [j["status"] for j in store.jobs("t") if j["stage"] == "sample"] == ["preempted"]  # not submitted again


def test_the_controller_going_away_mid_run_loses_no_job_and_the_run_completes(cluster, runs_dir):
    """slurmctld stops for 20 s while a fine-tune is submitted: the orchestrator says it does not answer, keeps
    the jobs' states from their journals, marks none lost, says when it answers again, and the run completes."""
    rd = ["--runs-dir", runs_dir]
    long = [
        *FAST,
        "-S",
        "finetune.steps=100",
        "-S",
        "schedule.groups=1",
        "-S",
        "prune.method=none",
        "-S",
        "control.enabled=false",
        "-S",
        "eval.fid=false",
    ]
    store = _store(runs_dir)
    proc = _start_run(cluster, "t", long, rd)
    _wait(lambda: [j for j in store.jobs("t") if j["stage"] == "finetune"], 240, "the fine-tune job")
    cluster.stop_controller()
    time.sleep(20)  # longer than squeue's own retries
    cluster.start_controller()
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert "controller does not answer" in err and "answers again" in err
    assert not [j for j in store.jobs("t") if j["status"] == "lost"]
    assert store.get_run("t")["status"] == "succeeded"


def test_a_submission_waits_for_the_controller_and_any_other_refusal_fails_at_once(cluster, monkeypatch):
    """sbatch against a controller stopped for longer than sbatch waits itself: the submission says the
    controller does not answer, tries again, and goes through once it is back (one job, not two);
    sbatch refusing for another reason raises at once."""
    import threading

    from core.manager import slurm

    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setattr(slurm, "UNREACHABLE_RETRY_S", 1.0)
    monkeypatch.setattr(slurm, "UNREACHABLE_WAIT_S", 90.0)
    said, tries = [], []

    def sbatch(*extra):
        def submit():
            tries.append(1)
            cmd = ["sbatch", "--parsable", "--output=/dev/null", *extra, "--wrap", "true"]
            return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

        return submit

    tracker = slurm.Tracker(said.append)
    cluster.stop_controller()
    threading.Timer(25.0, cluster.start_controller).start()  # sbatch itself gives up after ~9 s
    sid = slurm._submit_waiting_for_controller(sbatch(), tracker)
    assert re.fullmatch(r"\d+", sid) and len(tries) >= 2
    assert [s.split(" (")[0] for s in said] == [
        "Slurm's controller does not answer",
        "Slurm's controller answers again",
    ]
    tries.clear()
    with pytest.raises(subprocess.CalledProcessError):
        slurm._submit_waiting_for_controller(sbatch("--partition=nosuch"), slurm.Tracker(said.append))
    assert len(tries) == 1


def test_slurm_bad_input_is_one_line_and_loses_nothing(cluster, runs_dir, tmp_path):
    rd = ["--runs-dir", runs_dir]
    # no Slurm on PATH
    bare = {"PATH": os.path.dirname(sys.executable), "SLURM_CONF": str(cluster.conf)}
    p = run_cli("run", "--preset", "tiny", "--name", "np", "--launcher", "slurm", *FAST, *rd, env=bare)
    assert_clean_error(p)
    assert "sbatch" in p.stderr and "not found" in p.stderr
    assert not (runs_dir / "np").exists()
    # an unknown partition: sbatch's own words; the run stays resumable
    p = slurm_cli(
        cluster, "run", "--preset", "tiny", "--name", "bp", "--launcher", "slurm", "--partition", "nosuch", *FAST, *rd
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "invalid partition" in p.stderr.lower() or "nosuch" in p.stderr
    assert (runs_dir / "bp" / "config.json").exists()
    p = slurm_cli(
        cluster, "run", "--preset", "tiny", "--name", "bs", "--launcher", "slurm", "--sbatch", "novalue", *FAST, *rd
    )
    assert_clean_error(p)
    assert "KEY=VALUE" in p.stderr
    # a resume may change where the rest runs, not what it is
    p = slurm_cli(cluster, "resume", "bp", "--launcher", "local", *rd, check=0)
    cfg = json.loads((runs_dir / "bp" / "config.json").read_text())
    assert cfg["launcher"]["kind"] == "local" and cfg["launcher"]["partition"] == "nosuch"
    assert _store(runs_dir).get_run("bp")["status"] == "succeeded"
