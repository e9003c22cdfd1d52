"""The orchestrator: the whole method as one pipeline of tracked jobs (the stages are in ``stages/``).

    base -> schedule -> prune (per group) -> finetune (per group) -> assemble -> control -> sample -> eval

Each stage knows what is left to do from the run folder (``stages.pending``), so ``resume`` skips finished
stages and groups and continues interrupted ones from their checkpoints. Group jobs run in parallel, one per
free device slot: one per GPU (``CUDA_VISIBLE_DEVICES``), on CPU one at a time unless ``parallel`` says more.
With several slots, stage 1 and the control train as one job on all of them (``names.DDP_STAGES``).
The first failed job ends the run ``failed`` at once. ``Pipeline`` runs as a tracked ``pipeline`` job
(``start_detached``); the foreground ``stepadapt run`` starts the same job and follows it.
"""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import subprocess
import time
from typing import Callable, Optional

from core.errors import Interrupted, StageFailed, UserError
from core.manager import stages
from core.manager.jobs import launch, settle, stop_job
from core.manager.journal import ingest_active
from core.manager.lifecycle import mark_running, mark_settled
from core.names import CHECKPOINTING_STAGES, DDP_STAGES, GRACE_S, GROUP_STAGES, STAGES
from core.runs import Run, run_lock
from core.store import Store, utc_now


# -- the orchestrator --------------------------------------------------------------------------------
def device_slots(parallel: int = 1, gpus: Optional[list[int]] = None) -> list[str]:
    """One slot per GPU (``gpus``: indices, default all visible), or ``parallel`` CPU slots without CUDA.
    torch is asked only where a GPU driver is present (importing it costs seconds that listing and resuming on
    a CPU machine need not pay)."""
    if gpus is None and _gpu_driver():
        import torch

        if torch.cuda.is_available():
            gpus = list(range(torch.cuda.device_count()))
    if gpus:
        return [f"cuda:{i}" for i in gpus]
    return ["cpu"] * max(1, parallel)


def _gpu_driver() -> bool:
    """An NVIDIA or ROCm driver on this machine (without one, torch.cuda has no device to find)."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd"))


class Pipeline:
    """Runs the stages left of ``run`` as jobs; ``view(jobs)`` is called while waiting, ``log(line)`` on events."""

    def __init__(
        self,
        run: Run,
        store: Store,
        slots: list[str],
        grace: float = 10.0,
        poll: float = 0.1,
        log: Callable[[str], None] = print,
        view: Optional[Callable[[list[dict]], None]] = None,
        stages: tuple = STAGES,
        cores: Optional[int] = None,
    ):
        self.run, self.store, self.slots, self.grace, self.poll = run, store, slots, grace, poll
        self.cores = cores  # CPU cores this pipeline's jobs share (a study's arm: its part); None: the machine's
        self.log, self.view, self.stages = log, view, stages
        self.active: dict[int, tuple] = {}  # job id -> (Popen or slurm.SlurmHandle, slot, unit)
        self.launcher = run.config["launcher"]
        self.slurm = None
        self.busy_since, self.busy_said = None, False  # the store's write lock held by another process
        self.requeued: dict = {}  # (stage, unit) -> how often a preempted job of it was submitted again
        if self.launcher["kind"] == "slurm":
            from core.manager import slurm

            slurm.check_tools()
            self.slurm = slurm.Tracker(log)

    def execute(self) -> None:
        mark_running(self.store, self.run)
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM,)}
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for stage in self.stages:
                units = stages.pending(self.run, stage)
                if not units:
                    continue
                self._run_stage(stage, units)
            settled = mark_settled(self.store, self.run)  # first: the report shows the run's final status
            if (
                "eval" in self.stages
                and self.run.eval_file().exists()
                and (
                    not (self.run.report_dir() / "index.html").exists()
                    or self.run.eval_file().stat().st_mtime > (self.run.report_dir() / "index.html").stat().st_mtime
                )
            ):
                from core.manager.stages.eval import write_run_report

                write_run_report(self.run, self.store, self.log)
            if settled == "succeeded":
                self.log(f"run {self.run.name}: all stages done")
            else:  # some stages only (a study's shared stage 1): the run goes on later
                self.log(f"run {self.run.name}: {', '.join(self.stages)} done")
        except KeyboardInterrupt:
            self._stop_all()
            mark_settled(self.store, self.run, "killed")
            raise Interrupted(
                f"run {self.run.name} stopped; continue it with: stepadapt resume {shlex.quote(self.run.name)}"
            ) from None
        except Interrupted:
            self._stop_all()
            mark_settled(self.store, self.run, "killed")
            raise
        except StageFailed:
            mark_settled(self.store, self.run, "failed")
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _split_cores(self, ways: int) -> int:
        """CPU threads for each of ``ways`` processes side by side: this pipeline's cores split evenly."""
        return max(1, (self.cores or os.cpu_count() or 1) // ways)

    def _device_args(self, slot: str) -> dict:
        return {"device": "cuda" if slot.startswith("cuda") else "cpu"}

    def _run_stage(self, stage: str, units: list) -> None:
        """Launch the stage's units on free slots until all ended. The first failed job ends the stage at
        once: nothing more is launched, running siblings are stopped (training checkpoints on SIGINT) and
        ``StageFailed`` is raised, so the run ends ``failed`` and ``resume`` continues it."""
        if self.slurm is not None:
            return self._run_stage_slurm(stage, units)
        todo = list(units)
        free = list(self.slots) if stage in GROUP_STAGES else list(self.slots)[:1]
        side_by_side = min(len(free), len(todo)) if stage in GROUP_STAGES else 1
        threads = None  # CPU jobs side by side split the cores; oversubscribed OpenMP threads run several times slower
        if free[0] == "cpu" and (side_by_side > 1 or self.cores):
            threads = self._split_cores(side_by_side)
        while todo or self.active:
            while todo and free:
                self._launch(stage, todo.pop(0), free.pop(0), threads)
            time.sleep(self.poll)
            failed = self._patiently(lambda: self._poll_local(stage, free))
            if failed:
                self._fail(failed[0])
        if self.view:
            self.view(self.store.jobs(self.run.name))

    def _poll_local(self, stage: str, free: list) -> list[tuple]:
        """One look at the stage's local jobs: their journals (heartbeats, progress, metrics, calls), a stalled
        job killed (its own heartbeat rule: a stopped process would otherwise be waited on for ever), the ended
        ones settled; returns the failed ones."""
        from core.manager.jobs import kill_stalled, stalled

        ingest_active(self.store, self.run.name)
        for job_id in list(self.active):
            job = self.store.job(job_id)
            silent = stalled(job)
            if silent is not None:
                self.log(f"job {job_id}: no heartbeat for {silent:.0f} s; killing it")
                kill_stalled(self.store, job, silent)
        if self.view:
            self.view(self.store.jobs(self.run.name))
        return self._reap(stage, free)

    def _patiently(self, look: Callable[[], list]) -> list:
        """``look()``, unless another process holds the store's write lock past its busy timeout: then nothing
        is lost (the jobs write files; they are read on the next look), and it says once how long it has waited."""
        try:
            failed = look()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            self.busy_since = self.busy_since or time.time()
            if not self.busy_said:
                self.log(
                    f"store busy (another process holds its write lock) for {time.time() - self.busy_since:.0f}"
                    " s; waiting"
                )
                self.busy_said = True
            return []
        if self.busy_since:
            self.log(f"store free again after {time.time() - self.busy_since:.0f} s")
        self.busy_since, self.busy_said = None, False
        return failed

    def _run_stage_slurm(self, stage: str, units: list) -> None:
        """The stage's units as Slurm jobs, all submitted at once (a job array for a group stage); Slurm decides
        where and when they run. A preempted job (checkpointed on Slurm's signal) is submitted again."""
        self._submit(stage, list(units))
        while self.active:
            if self.view:
                self.view(self.store.jobs(self.run.name))
            time.sleep(max(self.poll, 0.5))
            failed = self._patiently(lambda: self._reap(stage, []))
            if failed:
                self._fail(failed[0])
        if self.view:
            self.view(self.store.jobs(self.run.name))

    def _fail(self, failed: tuple) -> None:
        """The first failed job ends the stage: stop its siblings, then ``StageFailed`` (a Slurm job's reason
        is in its message, a local one's in its log)."""
        self._stop_all()
        if self.view:
            self.view(self.store.jobs(self.run.name))
        job_id, what, job = failed
        why = (
            f"failed: {job['message'] or 'exit ' + str(job['exit_code'])}"
            if self.slurm is not None
            else f"failed (exit {job['exit_code']})"
        )
        raise StageFailed(
            f"job {job_id} ({what}) {why}; see stepadapt logs {job_id}; after fixing, continue with "
            f"stepadapt resume {shlex.quote(self.run.name)}"
        )

    def _submit(self, stage: str, units: list) -> None:
        from core.manager import slurm

        args = {"device": "cuda" if self.launcher["gpus_per_job"] else "cpu"}
        device = "slurm:gpu" if self.launcher["gpus_per_job"] else "slurm:cpu"
        from core.manager.slurm_state import time_limits

        submitted = slurm.submit_units(self.store, self.run, stage, units, args, self.launcher, self.slurm, device)
        limits = time_limits([handle.sid for _, handle in submitted])
        given = f"--time {self.launcher['time']}" if self.launcher["time"] else "no --time: the partition's"
        for unit, (job_id, handle) in zip(units, submitted):
            self.active[job_id] = (handle, None, unit)
            limit = limits.get(handle.sid, "unknown")
            self.store.update_job(job_id, slurm_time=limit)
            self.log(
                f"job {job_id}: {stage}{'' if unit is None else f' group {unit}'} submitted to Slurm "
                f"(job {handle.sid}, time limit {limit}, {given})"
            )

    def _ranks(self, stage: str) -> int:
        """How many processes train ``stage`` together: every slot for a whole-run training stage, as long as
        each rank gets at least one image of a step's batch; 1 otherwise."""
        if stage not in DDP_STAGES:
            return 1
        batch = self.run.config["train" if stage == "base" else "finetune"]["batch_size"]
        return len(self.slots) if 1 < len(self.slots) <= batch else 1

    def _launch(self, stage: str, unit, slot: str, threads: Optional[int]) -> None:
        if self._ranks(stage) > 1:  # one job on every slot: torchrun, DDP
            gpus = [x.split(":", 1)[1] for x in self.slots if x.startswith("cuda:")]
            if gpus:
                job_id, proc = launch(
                    self.store,
                    self.run,
                    stage,
                    unit,
                    {"device": "cuda"},
                    device="cuda:" + ",".join(gpus),
                    nproc=len(gpus),
                )
            else:  # CPU slots: one process per slot, the cores split between them
                job_id, proc = launch(
                    self.store,
                    self.run,
                    stage,
                    unit,
                    {"device": "cpu"},
                    device="cpu",
                    nproc=len(self.slots),
                    threads=self._split_cores(len(self.slots)),
                )
        else:
            job_id, proc = launch(
                self.store, self.run, stage, unit, self._device_args(slot), device=slot, threads=threads
            )
        self.active[job_id] = (proc, slot, unit)
        self.log(f"job {job_id}: {stage}{'' if unit is None else f' group {unit}'} started on {slot} (pid {proc.pid})")

    def _reap(self, stage: str, free: list) -> list[tuple]:
        """Settle the jobs that ended (their slots become free); returns the failed ones."""
        failed = []
        for job_id, (proc, slot, unit) in list(self.active.items()):
            rc = proc.poll()
            if rc is None:
                continue
            job = settle(self.store, job_id, rc)  # first: a busy store raises here and the job is looked at again
            del self.active[job_id]
            if slot is not None:
                free.append(slot)
            what = f"{stage}{'' if job['group_index'] is None else ' group ' + str(job['group_index'])}"
            self.log(
                f"job {job_id}: {what} {job['status']} (exit {rc})"
                + (f": {job['message']}" if job["status"] != "succeeded" and job["message"] else "")
            )
            if job["status"] == "preempted" and self.slurm is not None and stage not in CHECKPOINTING_STAGES:
                limit = job.get("slurm_time") or "unknown"
                raise Interrupted(
                    f"job {job_id} ({what}) was stopped by Slurm (time limit {limit}) before it "
                    f"finished, and {stage} cannot checkpoint mid-way: give it more time with "
                    f"stepadapt resume {shlex.quote(self.run.name)} --time MINUTES"
                )
            if job["status"] == "preempted" and self.slurm is not None:
                n = self.requeued.get((stage, unit), 0)
                if n < self.launcher["requeues"]:
                    self.requeued[(stage, unit)] = n + 1
                    self.log(
                        f"job {job_id}: {what} checkpointed on Slurm's signal; submitting it again "
                        f"({n + 1} of launcher.requeues {self.launcher['requeues']})"
                    )
                    self._submit(stage, [unit])
                    continue
                raise Interrupted(
                    f"job {job_id} ({what}) was stopped by Slurm's time limit or preemption "
                    f"{n + 1} times; continue with stepadapt resume {shlex.quote(self.run.name)} "
                    f"(a longer --time, or more launcher.requeues)"
                )
            if job["status"] == "killed":
                raise Interrupted(
                    f"job {job_id} ({what}) was killed; run {self.run.name} stopped "
                    f"(continue with stepadapt resume {shlex.quote(self.run.name)})"
                )
            if job["status"] != "succeeded":
                failed.append((job_id, what, job))
        return failed

    def _stop_all(self) -> None:
        """Stop every active job (SIGINT first: training checkpoints) and record how each ended."""
        for job_id, (proc, _, _) in list(self.active.items()):
            try:
                stop_job(self.store, job_id, self.grace, log=self.log)
            except UserError:  # it ended by itself meanwhile
                pass
            try:
                settle(self.store, job_id, proc.wait(timeout=self.grace))
            except subprocess.TimeoutExpired:
                self.log(f"job {job_id}: pid {proc.pid} still there after SIGKILL")
            self.active.pop(job_id, None)


def ensure_idle(store: Store, run: Run) -> None:
    """No job of ``run`` is active, and no process of any of its jobs lives, whatever its recorded status (a job
    recorded as ended whose process still trains would write the same files as the one a resume starts)."""
    from core.manager.jobs import job_alive

    for j in store.jobs(run.name, active=True):
        raise UserError(
            f"run {run.name} is running already (job {j['id']}, {j['stage']}, pid {j['pid']}); "
            f"stop it with stepadapt kill {shlex.quote(run.name)}"
        )
    for j in store.jobs(run.name):
        if j["pid"] and j["proc_start"] and job_alive(j):
            raise UserError(
                f"job {j['id']} ({j['stage']}) of run {run.name} is recorded {j['status']}, but its "
                f"process {j['pid']} still runs; stop it (kill {j['pid']}) before resuming"
            )


def start_detached(
    run: Run,
    store: Store,
    slots: list[str],
    grace: float = 10.0,
    cores: Optional[int] = None,
    stages: Optional[tuple] = None,
) -> tuple[int, int]:
    """Run the pipeline in the background as a tracked ``pipeline`` job; returns (job id, pid). Two at once
    cannot both start: the check that the run is idle and the launch happen under the run's writer lock.
    ``cores``: the CPU cores its jobs may use together (None: the machine's); ``stages``: only these (a
    study's shared stage 1), else all."""
    args = {"slots": slots, "grace": grace, "cores": cores, **({"stages": list(stages)} if stages else {})}
    with run_lock(run, "starting its pipeline", wait=5.0):
        ensure_idle(store, run)
        job_id, proc = launch(store, run, "pipeline", None, args, device=None)
    store.update_run(run.name, status="running")
    return job_id, proc.pid


def last_slots(store: Store, run: Run) -> Optional[list[str]]:
    """The device slots the run's last pipeline ran on (None when it never ran as a pipeline)."""
    for job in reversed(store.jobs(run.name)):
        slots = (job.get("args") or {}).get("slots") if job["stage"] == "pipeline" else None
        if slots:
            return list(slots)
    return None


def resume_run(store: Store, run: Run, slots: Optional[list[str]] = None, grace: float = GRACE_S) -> tuple[int, int]:
    """Start the rest of a stopped, failed, lost or partial run as a detached pipeline job; returns (job id,
    pid). ``slots`` None: the slots of its last pipeline (one CPU slot if it never had one)."""
    from core.runs import register_run

    _, row = register_run(run)
    if row["status"] == "succeeded":
        raise UserError(f"run {run.name} has finished (succeeded); nothing to resume")
    return start_detached(run, store, slots or last_slots(store, run) or device_slots(1), grace)


def stop_run(store: Store, name: str, grace: float = 10.0, log=lambda s: None) -> list[tuple[dict, str]]:
    """Stop a run: its orchestrator first (it launches nothing more), then every running job."""
    active = store.jobs(name, active=True)
    if not active:
        row = store.get_run(name)
        raise UserError(f"run {name} has no running jobs (it is {row['status'] if row else 'not started'})")
    active.sort(key=lambda j: j["stage"] != "pipeline")
    done = []
    for j in active:
        if store.job(j["id"])["status"] in ("queued", "running"):
            wait = 3 * grace if j["stage"] == "pipeline" else grace
            done.append((j, stop_job(store, j["id"], wait, log=log)))
    row = store.get_run(name)
    if row and row["status"] == "running":
        store.update_run(name, status="killed", ended=utc_now())  # the run's pipeline, gone, cannot say it
    return done


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
