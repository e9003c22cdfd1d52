"""Stage jobs on a Slurm cluster, submitted through submitit (``launcher.kind slurm``).

The orchestrator (the ``pipeline`` job) stays where it was started and owns the store; each unit of a stage
becomes one Slurm job running the same worker entry point as a local job (``run_worker`` ->
``worker.main``), the group jobs of a stage as one job array. The jobs share the runs folder with the
orchestrator (a network filesystem on a real cluster) and write only files: their spec, journal
(``journal``), log, checkpoints and models. ``STEPADAPT_NO_STORE`` is set in every job, so a job that tried
to open the SQLite store would fail.

A job's state: its journal says what the job itself reported (running, progress, its final status); Slurm
says what happened to it from outside, read with ``squeue`` (and ``sacct`` when the cluster has accounting;
many small clusters do not). A job that ended without writing its final status gets one from its Slurm state
(``AFTER``): cancelled -> killed, time limit -> killed, preempted -> preempted, node failure -> lost.

Time limits and preemption: Slurm sends SIGUSR2 ``launcher.signal_s`` seconds before it kills a job; the worker
takes it like Ctrl-C (training saves a checkpoint and stops) and reports ``preempted``. The orchestrator then
submits the unit again, resuming from that checkpoint, up to ``launcher.requeues`` times; after that the run
stops and ``stepadapt resume`` (e.g. with a longer ``--time``) continues it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from core.errors import UserError

TOOLS = ("sbatch", "squeue", "scancel")
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD"}
# the status (and why) of a job that ended without writing its own, by its final Slurm state
AFTER = {
    "CANCELLED": ("killed", "cancelled in Slurm (scancel)"),
    "TIMEOUT": ("killed", "reached its Slurm time limit"),
    "DEADLINE": ("killed", "reached its Slurm deadline"),
    "PREEMPTED": ("preempted", "preempted by Slurm"),
    "NODE_FAIL": ("lost", "its Slurm node failed"),
    "BOOT_FAIL": ("lost", "its Slurm node failed to boot"),
    "OUT_OF_MEMORY": ("failed", "out of memory (Slurm)"),
    "FAILED": ("failed", "failed in Slurm before it could report (see its log)"),
    "COMPLETED": ("lost", "ended in Slurm without reporting a final status"),
}
REFRESH_S = 1.0
FINAL_GRACE_S = 2.0  # after Slurm says a job ended, how long its journal may still bring its own final status


def check_tools() -> None:
    """Slurm's client tools on PATH, or one line saying what is missing."""
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        raise UserError(f"--launcher slurm: {', '.join(absent)} not found on PATH (no Slurm here?); install Slurm's "
                        "client tools or use --launcher local")


def run_worker(runs_dir: str, spec: str) -> int:
    """What a Slurm job runs (pickled by submitit): the local worker's entry point, in this process."""
    from core.manager import worker

    rc = worker.main(["--runs-dir", runs_dir, "--spec", spec])
    if rc not in (0, 130):
        raise SystemExit(rc)  # Slurm shows the job FAILED; its journal has the reason
    return rc


# -- states ----------------------------------------------------------------------------------------------
def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 1, "", str(e))


def query_states(ids: list[str]) -> Optional[dict[str, str]]:
    """{slurm id: state} from squeue (finished jobs stay listed for ``MinJobAge``), then sacct for the ones it no
    longer lists (when the cluster has accounting); None when the controller does not answer."""
    if not ids:
        return {}
    p = _run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(sorted({i.split("_")[0] for i in ids}))])
    if p.returncode != 0 and "Invalid job id" not in p.stderr:
        return None
    states = {}
    for line in p.stdout.splitlines():
        sid, _, state = line.strip().partition("|")
        states[sid] = state.split()[0] if state else ""
    gone = [i for i in ids if i not in states]
    if gone:
        q = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(gone)])
        if q.returncode == 0:
            for line in q.stdout.splitlines():
                sid, _, state = line.partition("|")
                if sid in gone and state:
                    states[sid] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


class Tracker:
    """Every submitted job's Slurm state, refreshed with one ``squeue`` call at most every ``REFRESH_S``."""

    def __init__(self, say=print):
        self.ids: set[str] = set()
        self.states: dict[str, str] = {}
        self.at = 0.0
        self.unreachable_since: Optional[float] = None
        self.say = say

    def state(self, sid: str) -> Optional[str]:
        self.ids.add(sid)
        if time.time() - self.at >= REFRESH_S:
            self.refresh()
        return self.states.get(sid)

    def refresh(self) -> None:
        self.at = time.time()
        got = query_states(sorted(self.ids))
        if got is None:
            if self.unreachable_since is None:
                self.unreachable_since = time.time()
                self.say("Slurm's controller does not answer (squeue failed); jobs keep their states from their "
                         "journals meanwhile")
            return
        if self.unreachable_since is not None:
            self.say("Slurm's controller answers again")
        self.unreachable_since = None
        self.states.update(got)


class SlurmHandle:
    """A submitted job as the orchestrator waits on it, shaped like ``subprocess.Popen``: ``poll()`` is None
    while Slurm runs it, then its exit code (from its journal, or from its Slurm state)."""

    def __init__(self, store, job_id: int, sid: str, tracker: Tracker):
        self.store, self.job_id, self.sid, self.tracker = store, job_id, sid, tracker
        self.pid = sid
        self.ended_at: Optional[float] = None  # when Slurm first said it ended

    def poll(self) -> Optional[int]:
        from core.manager.journal import ingest

        state = self.tracker.state(self.sid)
        if state is not None:
            self.store.update_job(self.job_id, slurm_state=state)
        ingest(self.store, self.store.job(self.job_id))
        job = self.store.job(self.job_id)
        if state is None or state in ACTIVE:
            if state in ("RUNNING", "COMPLETING") and job["status"] == "queued":
                self.store.update_job(self.job_id, status="running")
            return None
        if job["status"] not in ("queued", "running"):
            return job["exit_code"] if job["exit_code"] is not None else 1
        self.ended_at = self.ended_at or time.time()
        if time.time() - self.ended_at < FINAL_GRACE_S:
            return None  # its last journal lines may still be on their way (a network filesystem)
        settle_from_state(self.store, job, state)
        return self.store.job(self.job_id)["exit_code"] or 1

    def wait(self, timeout: Optional[float] = None) -> int:
        end = None if timeout is None else time.time() + timeout
        while True:
            rc = self.poll()
            if rc is not None:
                return rc
            if end is not None and time.time() > end:
                raise subprocess.TimeoutExpired(f"slurm job {self.sid}", timeout)
            time.sleep(0.5)


def settle_from_state(store, job: dict, state: str) -> None:
    """A job that Slurm ended and that wrote no final status of its own: its status from the Slurm state."""
    status, why = AFTER.get(state, ("lost", f"ended in Slurm as {state}"))
    if job.get("kill_requested") and status in ("killed", "lost", "failed"):
        status, why = "killed", "cancelled (stepadapt kill)"
    store.finish_job(job["id"], status, None, f"{why}; Slurm job {job.get('slurm_job')} {state}")


# -- submitting ---------------------------------------------------------------------------------------------
def executor_for(run, settings: dict, stage: str, n: int):
    """A submitit executor with the run's ``launcher`` settings (folder: ``RUN/jobs/slurm``)."""
    import submitit

    ex = submitit.SlurmExecutor(folder=str(run.path / "jobs" / "slurm" / "%j"), python=sys.executable,
                                max_num_timeout=0)
    params = {"job_name": f"stepadapt-{run.name}-{stage}", "signal_delay_s": int(settings["signal_s"]),
              "stderr_to_stdout": True, "array_parallelism": max(1, n),
              "setup": [f"cd {_q(os.getcwd())}", "export STEPADAPT_NO_STORE=1 PYTHONUNBUFFERED=1"]
              + ([f"export OMP_NUM_THREADS={settings['cpus_per_job']} STEPADAPT_THREADS={settings['cpus_per_job']}"]
                 if settings["cpus_per_job"] else [])}
    for key, name in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("mem", "mem")):
        if settings[key]:
            params[name] = settings[key]
    if settings["time"]:
        params["time"] = int(settings["time"])
    if settings["cpus_per_job"]:
        params["cpus_per_task"] = int(settings["cpus_per_job"])
    if settings["gpus_per_job"]:
        params["gpus_per_node"] = int(settings["gpus_per_job"])
    extra = {k.strip().lstrip("-"): v.strip() for k, v in (x.split("=", 1) for x in settings.get("sbatch") or [])}
    if extra:
        params["additional_parameters"] = extra
    try:
        ex.update_parameters(**params)
    except ValueError as e:
        raise UserError(f"bad Slurm settings: {str(e).splitlines()[0]}") from None
    return ex


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def submit_units(store, run, stage: str, units: list, args: dict, settings: dict, tracker: Tracker,
                 device: str) -> list[tuple[int, SlurmHandle]]:
    """The units of ``stage`` as Slurm jobs (one job array for several); returns (job id, handle) for each.
    A refused submission fails the prepared jobs with sbatch's own words and is a ``UserError``."""
    from core.manager.jobs import prepare_job, worker_args

    check_tools()
    prepared = [prepare_job(store, run, stage, u, args, device, "slurm") for u in units]
    ex = executor_for(run, settings, stage, len(units))
    runs_dir = str(run.path.parent.resolve())
    try:
        with ex.batch():
            jobs = [ex.submit(run_worker, runs_dir, str(spec.resolve())) for _, spec, _ in prepared]
    except Exception as e:  # submitit raises what sbatch said (CalledProcessError, FailedJobError, ...)
        why = _sbatch_error(e)
        for job_id, _, _ in prepared:
            store.finish_job(job_id, "failed", None, f"sbatch refused it: {why}")
        raise UserError(f"Slurm refused the {stage} jobs: {why}") from None
    out = []
    for (job_id, spec, _), job in zip(prepared, jobs):
        store.update_job(job_id, slurm_job=str(job.job_id), status="queued", log_path=str(job.paths.stdout),
                         command=["sbatch", *worker_args(run, spec)], heartbeat=time.time())
        out.append((job_id, SlurmHandle(store, job_id, str(job.job_id), tracker)))
    return out


def _sbatch_error(e: Exception) -> str:
    text = getattr(e, "stderr", None) or getattr(e, "output", None) or str(e)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in str(text).splitlines() if "error" in line.lower()] or \
        [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def cancel(job: dict, log=lambda s: None) -> None:
    """``scancel`` a job: Slurm sends SIGTERM (the worker checkpoints and stops), SIGKILL after KillWait."""
    if job.get("slurm_job"):
        p = _run(["scancel", str(job["slurm_job"])])
        log(f"job {job['id']}: scancel {job['slurm_job']}" + ("" if p.returncode == 0 else f" failed: {p.stderr.strip()}"))


def wait_final(store, job: dict, seconds: float) -> Optional[str]:
    """Wait for a Slurm job to end; its final Slurm state, or None if it did not within ``seconds``."""
    end = time.time() + seconds
    while time.time() < end:
        got = query_states([job["slurm_job"]]) or {}
        state = got.get(job["slurm_job"])
        if state and state not in ACTIVE:
            return state
        time.sleep(0.5)
    return None
