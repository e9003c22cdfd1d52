"""Tracked subprocess jobs: every stage (and every group of a stage) runs as ``python -m core.manager.worker``.

A job never opens the store: it reads its spec and appends its heartbeat, progress, metrics, LLM calls and
artifacts to the journal in its own folder (``journal``), which the owner of the store ingests (the
orchestrator while it waits, and ``reconcile`` before any command reads job states).

A job row (see ``store``) holds its pid, process group, the process start time and a heartbeat. A job is
alive only if its pid exists with the recorded start time (a reused pid is another process) and is not a
zombie; a running job whose process is gone, or whose heartbeat is older than ``STALE_S``, is marked
``lost`` by ``reconcile`` (every CLI/TUI start calls it). Stopping a job sends SIGINT to its process
group (training checkpoints and exits 130), then SIGTERM, then SIGKILL, each after a grace period.

Devices: a job's ``device`` is ``cpu`` or ``cuda:N``; for ``cuda:N`` the child sees only that GPU
(``CUDA_VISIBLE_DEVICES=N``) and uses it as ``cuda``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from core.errors import EXIT_INTERRUPTED, UserError
from core.manager import forked
from core.manager.journal import prepare_job, worker_args
from core.manager.procs import pid_alive, proc_start, stat_fields  # noqa: F401 (process identity, here as before)
from core.store import Books, Store, open_store, utc_now

HEARTBEAT_S = float(os.environ.get("STEPADAPT_HEARTBEAT", "3"))
STALE_S = float(os.environ.get("STEPADAPT_STALE", "120"))


def job_alive(job: dict) -> bool:
    return pid_alive(job.get("pid"), job.get("proc_start"))


def group_pids(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (Linux)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = stat_fields(int(d.name))
            if f and int(f[2]) == pgid and f[0] not in ("Z", "X"):
                out.append(int(d.name))
    return out


# -- reconcile ---------------------------------------------------------------------------------------
def reconcile(store: Store) -> list[int]:
    """Mark running jobs whose process is gone or silent as lost, and their runs too; returns the job ids."""
    from core.manager.journal import ingest

    if store.readonly:
        return []  # a read-only runs folder is shown as it is
    lost = []
    for job in store.jobs(active=True):
        ingest(store, job)
    lost += _reconcile_slurm(store)
    now = time.time()
    for job in store.jobs(active=True):
        if job.get("launcher") == "slurm":
            continue  # another machine's process: Slurm says whether it lives (above)
        if job["status"] == "queued" and job["pid"] is None:
            continue  # its launcher fills in the pid right after the fork
        gone = not job_alive(job)
        silent = job["heartbeat"] is not None and now - job["heartbeat"] > STALE_S
        if gone or silent:
            why = "process gone" if gone else f"no heartbeat for {now - job['heartbeat']:.0f} s"
            if store.finish_job(job["id"], "lost", None, f"lost: {why}"):
                lost.append(job["id"])
    active = {j["run"] for j in store.jobs(active=True)}
    for run in store.list_runs():
        if run["status"] == "running" and run["name"] not in active:
            store.update_run(run["name"], status="lost", ended=utc_now())
    return lost


def _reconcile_slurm(store: Store) -> list[int]:
    """Slurm jobs that Slurm has ended without their own final status: settled from their Slurm state."""
    jobs = [j for j in store.jobs(active=True) if j.get("launcher") == "slurm" and j.get("slurm_job")]
    if not jobs:
        return []
    from core.manager import slurm_state as slurm

    states = slurm.query_states([j["slurm_job"] for j in jobs])
    if states is None:  # the controller does not answer: nothing can be said yet
        return []
    out = []
    for j in jobs:
        state = states.get(j["slurm_job"])
        if state and state not in slurm.ACTIVE:
            slurm.settle_from_state(store, j, state)
            out.append(j["id"])
        elif state:
            store.update_job(j["id"], slurm_state=state)
    return out


# -- launching ---------------------------------------------------------------------------------------
def child_env(device: Optional[str], threads: Optional[int] = None, owner: bool = False) -> dict:
    """The worker's environment; ``owner``: the orchestrator, the one job that may open the store."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if owner:
        env.pop("STEPADAPT_NO_STORE", None)
    else:
        env["STEPADAPT_NO_STORE"] = "1"
    for key, val in forked.OMP_ENV.items():
        env.setdefault(key, val)
    if threads:  # CPU jobs side by side share the cores instead of each using all of them
        env["OMP_NUM_THREADS"] = env["STEPADAPT_THREADS"] = str(threads)
    if device and device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    return env


def launch(
    store: Store,
    run,
    stage: str,
    group: Optional[int] = None,
    args: Optional[dict] = None,
    device: str = "cpu",
    nproc: int = 1,
    threads: Optional[int] = None,
) -> tuple[int, subprocess.Popen]:
    """Start ``stage`` (of ``group``) of ``run`` as a worker subprocess in its own process group."""
    job_id, spec, log_path = prepare_job(store, run, stage, group, args, device, "local")
    try:
        log = open(log_path, "ab")
    except OSError as e:
        store.finish_job(job_id, "failed", None, f"cannot open log: {e}")
        raise UserError(f"cannot write the job log {log_path}: {e.strerror or e}") from None

    worker = worker_args(run, spec)
    if nproc > 1:  # several GPUs for one job: torchrun (DDP), one process per GPU
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *worker]
    else:
        cmd = [sys.executable, *worker]
    env = child_env(device, threads, owner=stage == "pipeline")
    try:
        if nproc == 1 and stage != "pipeline" and forked.enabled():  # a fork of the pre-started worker
            p = forked.start(worker[1], worker[2:], env, str(log_path))  # worker: ["-m", MODULE, *ARGS]
        else:
            p = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=os.getcwd(),
            )
    except OSError as e:
        store.finish_job(job_id, "failed", None, f"cannot start: {e}")
        raise UserError(f"cannot start a worker process: {e}") from None
    finally:
        log.close()
    store.update_job(
        job_id,
        command=cmd,
        pid=p.pid,
        pgid=p.pid,
        proc_start=proc_start(p.pid),
        status="running",
        started=utc_now(),
        heartbeat=time.time(),
        log_path=run.in_runs_folder(log_path),  # relative to the runs folder (the store reads it back from there)
    )
    return job_id, p


def settle(store: Store, job_id: int, returncode: int) -> dict:
    """After ``wait()``: the job's journal ingested, then a final status if its worker could not write one
    (e.g. SIGKILL)."""
    from core.manager.journal import ingest

    ingest(store, store.job(job_id))
    job = store.job(job_id)
    if job["status"] in ("queued", "running"):
        if job["kill_requested"]:
            store.finish_job(job_id, "killed", returncode)
        elif returncode < 0:
            sig = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else -returncode
            store.finish_job(job_id, "failed", returncode, f"killed by {sig} (out of memory?)")
        else:
            store.finish_job(job_id, "failed" if returncode else "succeeded", returncode)
    return store.job(job_id)


def stalled(job: dict, now: Optional[float] = None) -> Optional[float]:
    """Seconds since a running local job's last heartbeat when that is more than ``STALE_S`` (a stopped or hung
    process: ``kill -STOP``, a deadlock), else None."""
    if job.get("launcher") == "slurm" or job["status"] not in ("queued", "running") or job["heartbeat"] is None:
        return None
    silent = (now or time.time()) - job["heartbeat"]
    return silent if silent > STALE_S else None


def kill_stalled(store: Store, job: dict, silent: float) -> None:
    """A job silent for ``silent`` seconds: SIGKILL to its process group (a stopped process cannot checkpoint, and
    one that woke up later must not write on), then ``lost`` with the reason."""
    for sig in (signal.SIGKILL, signal.SIGCONT):  # SIGKILL ends even a stopped process (CONT lets it die at once)
        _signal(job, sig)
    store.finish_job(job["id"], "lost", None, f"lost: no heartbeat for {silent:.0f} s (stopped or hung; killed)")


# -- stopping ----------------------------------------------------------------------------------------
def _signal(job: dict, sig: int) -> None:
    try:
        if job.get("pgid") and job["pgid"] == job["pid"]:
            os.killpg(job["pgid"], sig)
        else:
            os.kill(job["pid"], sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(job: dict, seconds: float) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if not job_alive(job) and not (job.get("pgid") == job.get("pid") and group_pids(job["pgid"])):
            return True
        time.sleep(0.1)
    return False


def stop_job(store: Store, job_id: int, grace: float = 10.0, log=lambda s: None) -> str:
    """SIGINT, then SIGTERM, then SIGKILL (each after ``grace`` seconds) to the job's process group.
    Returns the job's final status."""
    job = store.job(job_id)
    if job is None:
        raise UserError(f"no job {job_id}")
    if job["status"] not in ("queued", "running"):
        raise UserError(f"job {job_id} ({job['stage']}) is not running: it is {job['status']}")
    store.update_job(job_id, kill_requested=1)
    if job.get("launcher") == "slurm":
        from core.manager import slurm_state as slurm

        slurm.cancel(job, log)
        slurm.wait_final(store, job, 3 * grace)
    elif job_alive(job):
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            _signal(job, sig)
            log(f"job {job_id}: sent {sig.name}")
            if _wait_gone(job, wait):
                break
    # the worker writes 'killed' itself when it could (in its journal); otherwise do it here
    from core.manager.journal import ingest

    ingest(store, store.job(job_id))
    store.finish_job(job_id, "killed", None, "killed")
    return store.job(job_id)["status"]


# -- heartbeat ---------------------------------------------------------------------------------------
class Heartbeat:
    """A thread that writes the job's heartbeat, progress and message every ``HEARTBEAT_S`` seconds."""

    def __init__(self, books: Books, job_id: int):
        self.books, self.job_id = books, job_id
        self.progress = None
        self.total = None
        self.message = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="heartbeat")

    def set(self, progress: Optional[int] = None, total: Optional[int] = None, message: Optional[str] = None):
        if progress is not None:
            self.progress = progress
        if total is not None:
            self.total = total
        if message is not None:
            self.message = message

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _beat(self, books) -> None:
        fields = {"heartbeat": time.time()}
        for k in ("progress", "total", "message"):
            if getattr(self, k) is not None:
                fields[k] = getattr(self, k)
        try:
            books.update_job(self.job_id, **fields)
        except (sqlite3.Error, OSError):  # a busy or full disk must not kill the job; the next beat retries
            pass

    def _loop(self) -> None:
        books = self.books.for_thread()  # a store needs its own connection: sqlite connections are per thread
        while True:
            self._beat(books)
            if self._stop.wait(HEARTBEAT_S):
                self._beat(books)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Tracked:
    """This process as job ``job_id`` while the ``with`` block runs: its pid and heartbeat, then its final
    status from how the block ended (succeeded; killed for a signal or ``Interrupted``, exit 130; failed
    otherwise, with the error line), written to ``books`` (the store, or the job's journal) before the exception
    goes on. ``rc`` and ``message`` say how it ended. The worker and every stage command run on its own keep
    their books with it."""

    def __init__(self, books: Books, job_id: int):
        self.store, self.job_id = books, job_id
        self.status, self.rc, self.message = "failed", 1, None

    def __enter__(self) -> "Heartbeat":
        import socket

        self.store.update_job(
            self.job_id,
            pid=os.getpid(),
            proc_start=proc_start(os.getpid()),
            status="running",
            heartbeat=time.time(),
            started=utc_now(),
            host=socket.gethostname(),
        )
        self.hb = Heartbeat(self.store, self.job_id).start()
        return self.hb

    def __exit__(self, kind, exc, tb) -> None:
        usr2 = getattr(signal, "SIGUSR2", None)
        if kind is None:
            self.status, self.rc = "succeeded", 0
        elif issubclass(kind, KeyboardInterrupt):
            self.status, self.rc, self.message = "killed", EXIT_INTERRUPTED, "stopped by signal"
        elif issubclass(kind, UserError):
            self.status = "killed" if exc.exit_code == EXIT_INTERRUPTED else "failed"
            self.rc, self.message = exc.exit_code, str(exc)
        else:
            self.message = f"internal error {kind.__name__}: {exc}"
        if kind is not None and usr2 is not None and getattr(exc, "signum", None) == usr2:
            self.status = "preempted"  # Slurm warned of its time limit or a preemption: checkpointed, to resubmit
            self.message = (self.message or "stopped") + " (SIGUSR2: Slurm's time limit or a preemption ahead)"
        self.hb.stop()
        self.store.finish_job(self.job_id, self.status, self.rc, self.message[:500] if self.message else None)


def open_reconciled(runs_dir) -> Store:
    store = open_store(runs_dir)
    reconcile(store)
    return store
