"""What Slurm says about jobs, for the parts of the manager that only ask (``jobs.reconcile``, ``jobs.stop_job``):
states from ``squeue`` and ``sacct``, the status a job gets from its final state, and ``scancel``. Submitting
is ``slurm``'s."""

from __future__ import annotations

import subprocess
import time
from typing import Optional

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "STAGE_OUT",
    "SIGNALING",
    "RESV_DEL_HOLD",
}
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


def _killed_by_usr2(job: dict) -> bool:
    try:
        with open(job.get("log_path") or "", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4000))
            return b"User defined signal 2" in f.read()
    except OSError:
        return False


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


def time_limits(ids: list[str]) -> dict[str, str]:
    """{slurm id: the time limit Slurm gave the job} as squeue prints it (``UNLIMITED``, ``5:00``, ``1-00:00:00``);
    {} when squeue cannot say."""
    if not ids:
        return {}
    p = _run(["squeue", "-h", "-t", "all", "-r", "-o", "%i|%l", "-j", ",".join(sorted({i.split("_")[0] for i in ids}))])
    out = dict(line.split("|", 1) for line in p.stdout.splitlines() if "|" in line) if p.returncode == 0 else {}
    return {i: out[i].strip() for i in ids if i in out}


def settle_from_state(store, job: dict, state: str) -> None:
    """A job that Slurm ended and that wrote no final status of its own: its status from the Slurm state. One
    that Slurm's SIGUSR2 killed before the worker could take it (it came while the process started: Slurm may send
    it up to a minute early) counts as preempted, to be submitted again."""
    status, why = AFTER.get(state, ("lost", f"ended in Slurm as {state}"))
    if state == "FAILED" and _killed_by_usr2(job):
        status, why = "preempted", "Slurm's SIGUSR2 came before the job could checkpoint (while it started)"
    if job.get("kill_requested") and status in ("killed", "lost", "failed"):
        status, why = "killed", "cancelled (stepadapt kill)"
    store.finish_job(job["id"], status, None, f"{why}; Slurm job {job.get('slurm_job')} {state}")


def cancel(job: dict, log=lambda s: None) -> None:
    """``scancel`` a job: Slurm sends SIGTERM (the worker checkpoints and stops), SIGKILL after KillWait."""
    if job.get("slurm_job"):
        p = _run(["scancel", str(job["slurm_job"])])
        log(
            f"job {job['id']}: scancel {job['slurm_job']}"
            + ("" if p.returncode == 0 else f" failed: {p.stderr.strip()}")
        )


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
