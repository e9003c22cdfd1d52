"""Stage jobs on a Slurm cluster, submitted through submitit (``launcher.kind slurm``).

The orchestrator (the ``pipeline`` job) stays where it was started and owns the store; each unit of a stage
becomes one Slurm job running the same worker program as a local job (``run_worker``: ``python -m
core.manager.worker`` in process), the group jobs of a stage as one job array. The jobs share the runs folder with the
orchestrator (a network filesystem on a real cluster) and write only files: their spec, journal
(``journal``), log, checkpoints and models. ``STEPADAPT_NO_STORE`` is set in every job, so a job that tried
to open the SQLite store would fail.

A job's state: its journal says what the job itself reported (running, progress, its final status); Slurm
says what happened to it from outside, read with ``squeue`` (and ``sacct`` when the cluster has accounting;
many small clusters do not). A job that ended without writing its final status gets one from its Slurm state
(``AFTER``): cancelled -> killed, time limit -> killed, preempted -> preempted, node failure -> lost.

The one pickle in a runs folder is submitit's own: each job's function and arguments (``RUN/jobs/slurm/``), which
the job unpickles on its node. That folder is created private (mode 0700), so that nobody but its owner can
replace a job's file in a shared runs folder before the job starts.

Time limits: with no ``--time`` (``launcher.time`` 0) a job is submitted without one, so the partition's default
applies; a user's ``--time`` is passed as given. The limit each job got is recorded (``jobs.slurm_time``), shown
by ``show`` and printed in the job's log.

Time limits and preemption: Slurm sends SIGUSR2 ``launcher.signal_s`` seconds before it kills a job; the worker
takes it like Ctrl-C (training saves a checkpoint and stops) and reports ``preempted``. The orchestrator then
submits the unit again, resuming from that checkpoint, up to ``launcher.requeues`` times; after that the run
stops and ``stepadapt resume`` (e.g. with a longer ``--time``) continues it. Only the training stages
(``names.CHECKPOINTING_STAGES``) are submitted again: a prune, sample or eval job stopped that way would start
from nothing and meet the same limit, so the run stops at once with one line that says so and how to give it
more time. A resubmitted eval still reuses every model it finished (``eval.json`` and the feature arrays).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Optional

from core.errors import UserError
from core.manager.slurm_state import ACTIVE, query_states, settle_from_state
from core.names import DDP_STAGES

TOOLS = ("sbatch", "squeue", "scancel")
REFRESH_S = 1.0
FINAL_GRACE_S = 2.0  # after Slurm says a job ended, how long its journal may still bring its own final status
# sbatch's words when the controller is away (restarting, failing over): a submission waits for it, up to
# UNREACHABLE_WAIT_S, instead of failing the run; any other refusal fails at once
UNREACHABLE = ("unable to contact slurm controller", "connect failure", "socket timed out", "connection refused")
UNREACHABLE_WAIT_S = 300.0
UNREACHABLE_RETRY_S = 3.0


def check_tools() -> None:
    """Slurm's client tools on PATH, or one line saying what is missing."""
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        raise UserError(
            f"--launcher slurm: {', '.join(absent)} not found on PATH (no Slurm here?); install Slurm's "
            "client tools or use --launcher local"
        )


# -- states ----------------------------------------------------------------------------------------------
class Tracker:
    """Every submitted job's Slurm state, refreshed with one ``squeue`` call at most every ``REFRESH_S``."""

    def __init__(self, log=print):
        self.ids: set[str] = set()
        self.states: dict[str, str] = {}
        self.at = 0.0
        self.unreachable_since: Optional[float] = None
        self.log = log

    def state(self, sid: str) -> Optional[str]:
        self.ids.add(sid)
        if time.time() - self.at >= REFRESH_S:
            self.refresh()
        return self.states.get(sid)

    def refresh(self) -> None:
        self.at = time.time()
        got = query_states(sorted(self.ids))
        if got is None:
            self.controller_away("squeue failed")
            return
        self.controller_back()
        self.states.update(got)

    def controller_away(self, what: str) -> None:
        """Says once, when it starts, that the controller does not answer."""
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
            self.log(
                f"Slurm's controller does not answer ({what}); jobs keep their states from their journals "
                "meanwhile, and submissions wait for it"
            )

    def controller_back(self) -> None:
        if self.unreachable_since is not None:
            self.log("Slurm's controller answers again")
        self.unreachable_since = None


class SlurmHandle:
    """A submitted job as the orchestrator waits on it, shaped like ``subprocess.Popen``: ``poll()`` is None
    while Slurm runs it, then its exit code (from its journal, or from its Slurm state)."""

    def __init__(self, store, job_id: int, sid: str, tracker: Tracker):
        self.store, self.job_id, self.sid, self.tracker = store, job_id, sid, tracker
        self.pid = sid
        self.ended_at: Optional[float] = None  # when Slurm first said it ended
        self.state: Optional[str] = None

    def poll(self) -> Optional[int]:
        from core.manager.journal import ingest

        state = self.tracker.state(self.sid)
        if state is not None and state != self.state:  # a write only when Slurm's answer changed
            self.state = state
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


def run_worker(runs_dir: str, spec: str, nproc: int = 1) -> int:
    """What a Slurm job runs (pickled by submitit): the worker as a program, ``python -m core.manager.worker
    --runs-dir DIR --spec SPEC`` as a local job runs it, but in this process, so that the worker's own signal
    handlers (SIGTERM, SIGUSR2) replace submitit's. With ``nproc`` > 1 (stage 1 or the control on several GPUs
    of the node) under torchrun, one process per GPU (DDP), Slurm's signals passed on to it."""
    import runpy

    argv = ["--runs-dir", runs_dir, "--spec", spec]
    from core.manager.slurm_state import time_limits

    sid = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if sid:  # the job log says which limit the job got
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        sid = f"{sid}_{task}" if task and os.environ.get("SLURM_ARRAY_JOB_ID") else sid
        limit = None
        for attempt in range(5):  # a busy controller may not answer at once (squeue times out or errs)
            limit = time_limits([sid]).get(sid)
            if limit:
                break
            time.sleep(1 + attempt)
        print(f"[slurm] job {sid}: time limit {limit or 'unknown (squeue did not say)'}", file=sys.stderr, flush=True)
    if nproc > 1:
        return _torchrun(argv, nproc)
    sys.argv = ["core.manager.worker", *argv]
    try:
        runpy.run_module("core.manager.worker", run_name="__main__", alter_sys=True)
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if rc not in (0, 130):
        raise SystemExit(rc)  # Slurm shows the job FAILED; its journal has the reason
    return rc


def _torchrun(argv: list[str], nproc: int) -> int:
    import signal

    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "core.manager.worker",
            *argv,
        ]
    )
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(sig, lambda s, f: p.send_signal(s))
    rc = p.wait()
    if rc not in (0, 130):
        raise SystemExit(rc)
    return rc


# -- submitting ---------------------------------------------------------------------------------------------
def executor_for(run, settings: dict, stage: str, n: int):
    """A submitit executor with the run's ``launcher`` settings (folder: ``RUN/jobs/slurm``)."""
    import submitit

    private = run.path / "jobs" / "slurm"  # submitit's job files are pickles the job runs: only their owner writes
    private.mkdir(parents=True, exist_ok=True)
    os.chmod(private, 0o700)
    ex = submitit.SlurmExecutor(folder=str(private / "%j"), python=sys.executable, max_num_timeout=0)
    params = {
        "job_name": f"stepadapt-{run.name}-{stage}",
        "signal_delay_s": int(settings["signal_s"]),
        "stderr_to_stdout": True,
        "array_parallelism": max(1, n),
        "setup": [f"cd {shlex.quote(os.getcwd())}", "export STEPADAPT_NO_STORE=1 PYTHONUNBUFFERED=1"]
        + (
            [f"export OMP_NUM_THREADS={settings['cpus_per_job']} STEPADAPT_THREADS={settings['cpus_per_job']}"]
            if settings["cpus_per_job"]
            else []
        ),
    }
    for key, name in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("mem", "mem")):
        if settings[key]:
            params[name] = settings[key]
    # no --time: no limit in the script, so the partition's default applies (submitit would write its own 5 minutes)
    params["time"] = int(settings["time"]) if settings["time"] else None
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


def submit_units(
    store, run, stage: str, units: list, args: dict, settings: dict, tracker: Tracker, device: str
) -> list[tuple[int, SlurmHandle]]:
    """The units of ``stage`` as Slurm jobs (one job array for several); returns (job id, handle) for each.
    A refused submission fails the prepared jobs with sbatch's own words and is a ``UserError``."""
    from core.manager.journal import prepare_job, worker_args

    check_tools()
    prepared = [prepare_job(store, run, stage, u, args, device, "slurm") for u in units]
    ex = executor_for(run, settings, stage, len(units))
    runs_dir = str(run.path.parent.resolve())
    nproc = settings["gpus_per_job"] if stage in DDP_STAGES and settings["gpus_per_job"] > 1 else 1

    def submit():
        with ex.batch():
            return [ex.submit(run_worker, runs_dir, str(spec.resolve()), nproc) for _, spec, _ in prepared]

    try:
        jobs = _submit_waiting_for_controller(submit, tracker)
    except Exception as e:  # submitit raises what sbatch said (CalledProcessError, FailedJobError, ...)
        why = _sbatch_error(e)
        for job_id, _, _ in prepared:
            store.finish_job(job_id, "failed", None, f"sbatch refused it: {why}")
        raise UserError(f"Slurm refused the {stage} jobs: {why}") from None
    out = []
    for (job_id, spec, _), job in zip(prepared, jobs):
        store.update_job(
            job_id,
            slurm_job=str(job.job_id),
            status="queued",
            log_path=str(job.paths.stdout),
            command=["sbatch", *worker_args(run, spec)],
            heartbeat=time.time(),
        )
        out.append((job_id, SlurmHandle(store, job_id, str(job.job_id), tracker)))
    return out


def _submit_waiting_for_controller(submit, tracker: Tracker):
    """``submit()``, tried again every ``UNREACHABLE_RETRY_S`` while sbatch says the controller does not answer
    (one job array is one sbatch call, so a failed try submitted nothing), for up to ``UNREACHABLE_WAIT_S``;
    the tracker says when the controller goes away and comes back. Any other error is raised at once."""
    deadline = time.time() + UNREACHABLE_WAIT_S
    while True:
        try:
            jobs = submit()
        except Exception as e:
            if not any(w in _sbatch_error(e).lower() for w in UNREACHABLE) or time.time() >= deadline:
                raise
            tracker.controller_away("sbatch failed")
            time.sleep(UNREACHABLE_RETRY_S)
            continue
        tracker.controller_back()
        return jobs


def _sbatch_error(e: Exception) -> str:
    text = getattr(e, "stderr", None) or getattr(e, "output", None) or str(e)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in str(text).splitlines() if "error" in line.lower()] or [
        line.strip() for line in str(text).splitlines() if line.strip()
    ]
    return (lines[-1] if lines else type(e).__name__)[:300]
