"""The whole method as one pipeline of tracked jobs:

    base -> schedule -> prune (per group) -> finetune (per group) -> assemble -> sample -> eval

Each stage knows what is left to do from the run folder (``pending``), so ``resume`` skips finished stages
and groups and continues interrupted ones from their checkpoints. Group jobs run in parallel, one per free
device slot: one per GPU (``CUDA_VISIBLE_DEVICES``), on CPU one at a time unless ``parallel`` says more.
``Pipeline`` is the orchestrator (in the foreground CLI or as a detached ``pipeline`` job); ``STAGE_WORK``
holds what a worker process does for each stage.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .errors import UserError
from .jobs import launch, settle, stop_job
from .runs import Run
from .store import Store, _now

STAGES = ("base", "schedule", "prune", "finetune", "assemble", "sample", "eval")
GROUP_STAGES = ("prune", "finetune")


# -- what is left ------------------------------------------------------------------------------------
def _ckpt_step(path) -> int:
    if not path.exists():
        return -1
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["step"])
    except Exception:
        return -1


def _nonempty_groups(run: Run) -> list[int]:
    data = json.loads((run.path / "schedule.json").read_text())
    return [g["index"] for g in data["groups"] if g["size"] > 0]


def sample_paths(run: Run) -> dict[str, object]:
    s = run.config["sample"]
    return {w: run.samples() / f"{w}_s{s['steps']}_seed0.png" for w in ("base", "progressive")}


def pending(run: Run, stage: str) -> list[Optional[int]]:
    """Units of ``stage`` still to do: group indices for group stages, ``[None]`` or ``[]`` otherwise."""
    cfg = run.config
    if stage == "base":
        done = run.model("base").exists() and _ckpt_step(run.ckpt("base")) >= cfg["train"]["steps"]
        return [] if done else [None]
    if stage == "schedule":
        return [] if (run.path / "schedule.json").exists() else [None]
    if stage == "prune":
        if cfg["prune"]["method"] == "none":
            return []
        from .prune_stage import prune_record_path

        return [g for g in _nonempty_groups(run) if not prune_record_path(run, g).exists()]
    if stage == "finetune":
        from .finetune import group_stage

        return [g for g in _nonempty_groups(run)
                if not (run.model(group_stage(g)).exists()
                        and _ckpt_step(run.ckpt(group_stage(g))) >= cfg["finetune"]["steps"])]
    if stage == "assemble":
        from .finetune import group_stage

        out = run.model("progressive")
        if not out.exists():
            return [None]
        newest = max(run.model(group_stage(g)).stat().st_mtime for g in _nonempty_groups(run))
        return [] if out.stat().st_mtime >= newest else [None]
    if stage == "sample":
        return [] if all(p.exists() for p in sample_paths(run).values()) else [None]
    if stage == "eval":
        return [] if (run.path / "eval.json").exists() else [None]
    raise ValueError(stage)


# -- what a worker does ------------------------------------------------------------------------------
@dataclass
class WorkContext:
    run: Run
    store: Store
    job: dict
    device: torch.device
    heartbeat: object
    log: Callable[[str], None] = print
    artifacts: list = field(default_factory=list)

    @property
    def group(self) -> Optional[int]:
        return self.job["group_index"]

    def produced(self, path, kind: str) -> None:
        self.artifacts.append((path, kind))

    def train_hooks(self, stage: str, group: Optional[int]) -> dict:
        """on_start/on_step/on_log for ``train``: progress to the heartbeat, logged values to ``metrics``."""
        run, job = self.run.name, self.job["id"]

        def on_start(step):
            dropped = self.store.drop_metrics_after(run, stage, group, step)
            if step:
                self.log(f"resuming from step {step} (dropped {dropped} metric rows logged after it)")

        def on_step(done, total):
            self.heartbeat.set(progress=done, total=total)

        def on_log(rec):
            self.store.log_metrics([{"run": run, "job": job, "stage": stage, "group_index": group,
                                     "step": rec["step"], "key": k, "value": float(v), "time": rec["time"]}
                                    for k, v in rec.items() if k not in ("step", "time")])
            self.heartbeat.set(message=f"loss {rec['loss']:.4f}, {rec['it_s']:.1f} it/s")

        return {"on_start": on_start, "on_step": on_step, "on_log": on_log}


def _work_base(ctx: WorkContext) -> None:
    from .data import load_dataset
    from .diffusion import create_diffusion
    from .train import base_spec, train
    from .unet import build_unet

    cfg = ctx.run.config
    data = load_dataset(cfg)
    spec = base_spec(ctx.run, cfg)
    ctx.heartbeat.set(progress=0, total=spec.steps)
    model = build_unet(cfg["model"], seed=cfg["seed"])
    train(spec, model, create_diffusion(cfg), data, resume=spec.ckpt.exists(), device=ctx.device,
          **ctx.train_hooks("base", None))
    ctx.produced(spec.model_out, "model")
    ctx.produced(spec.ckpt, "checkpoint")


def _work_schedule(ctx: WorkContext) -> None:
    from .finetune import run_schedule
    from .schedule import plot_schedule

    sched = run_schedule(ctx.run)
    plot_schedule(sched, ctx.run.path / "schedule.png")
    ctx.log(f"schedule: {len(sched.nonempty)} non-empty groups of {sched.n_groups}; "
            f"average budget {sched.to_json()['avg_budget_ratio']:.4f} F")
    ctx.produced(ctx.run.path / "schedule.json", "schedule")
    ctx.produced(ctx.run.path / "schedule.png", "plot")


def proxy_settings(cfg: dict):
    from .proxy import ProxySettings

    p = cfg["prune"]
    return ProxySettings(model=p["llm"], api_base=p["api_base"] or None, rounds=p["rounds"], seed=cfg["seed"])


def _work_prune(ctx: WorkContext) -> None:
    from .prune_stage import prune_groups, prune_record_path

    cfg = ctx.run.config
    method = cfg["prune"]["method"]
    ctx.heartbeat.set(message=f"pruning with {method}")

    def log(msg):
        ctx.log(msg)
        ctx.heartbeat.set(message=msg[:120])

    prune_groups(ctx.run, method, str(ctx.group), device=ctx.device, log=log,
                 proxy=proxy_settings(cfg) if method == "proxy" else None)
    ctx.produced(prune_record_path(ctx.run, ctx.group), "plan")


def _work_finetune(ctx: WorkContext) -> None:
    from .finetune import finetune_groups, group_stage

    g = ctx.group
    ctx.heartbeat.set(progress=0, total=ctx.run.config["finetune"]["steps"])
    finetune_groups(ctx.run, str(g), None, ctx.device, log=ctx.log,
                    hooks=lambda gg: ctx.train_hooks("finetune", gg))
    ctx.produced(ctx.run.model(group_stage(g)), "model")
    ctx.produced(ctx.run.ckpt(group_stage(g)), "checkpoint")


def _work_assemble(ctx: WorkContext) -> None:
    from .finetune import assemble

    if assemble(ctx.run) is None:
        raise UserError("not every non-empty group has a fine-tuned model; run the finetune stage first")
    ctx.produced(ctx.run.model("progressive"), "model")


def _work_sample(ctx: WorkContext) -> None:
    from .diffusion import create_diffusion
    from .progressive import load_progressive
    from .sampling import sample_images, save_grid
    from .unet import load_unet

    cfg = ctx.run.config
    s, m = cfg["sample"], cfg["model"]
    paths = sample_paths(ctx.run)
    total = 2 * -(-s["n"] // s["batch_size"]) * s["steps"]
    done = [0]

    def tick(k):
        done[0] += k
        ctx.heartbeat.set(progress=done[0], total=total)

    for which, path in paths.items():
        model = (load_progressive(ctx.run.model("progressive"), ctx.device) if which == "progressive"
                 else load_unet(ctx.run.model("base"), ctx.device))
        ctx.heartbeat.set(message=f"sampling {s['n']} images from the {which} model, {s['steps']} steps")
        imgs = sample_images(model, create_diffusion(cfg), s["n"], image_size=m["image_size"],
                             channels=m["in_channels"], steps=s["steps"], batch_size=s["batch_size"], seed=0,
                             method=s["method"], device=ctx.device, progress=tick,
                             channels_last=s["channels_last"])
        save_grid(imgs, path)
        ctx.log(f"{which}: {path}")
        ctx.produced(path, "samples")


def _work_eval(ctx: WorkContext) -> None:
    from .eval import evaluate_run

    from .report import write_report

    evaluate_run(ctx.run, ctx.device, log=ctx.log, progress=lambda d, t: ctx.heartbeat.set(progress=d, total=t))
    ctx.produced(ctx.run.path / "eval.json", "eval")
    html, _ = write_report(ctx.run, [], ctx.run.path / "report")
    ctx.log(f"report: {html}")
    ctx.produced(html, "report")


STAGE_WORK: dict[str, Callable[[WorkContext], None]] = {
    "base": _work_base, "schedule": _work_schedule, "prune": _work_prune, "finetune": _work_finetune,
    "assemble": _work_assemble, "sample": _work_sample, "eval": _work_eval,
}


# -- the orchestrator --------------------------------------------------------------------------------
class StageFailed(UserError):
    exit_code = 1


class Stopped(UserError):
    exit_code = 130


def device_slots(parallel: int = 1, gpus: Optional[list[int]] = None) -> list[str]:
    """One slot per GPU (``gpus``: indices, default all visible), or ``parallel`` CPU slots without CUDA."""
    if gpus is None and torch.cuda.is_available():
        gpus = list(range(torch.cuda.device_count()))
    if gpus:
        return [f"cuda:{i}" for i in gpus]
    return ["cpu"] * max(1, parallel)


class Pipeline:
    """Runs the stages left of ``run`` as jobs; ``view(jobs)`` is called while waiting, ``say(line)`` on events."""

    def __init__(self, run: Run, store: Store, slots: list[str], grace: float = 10.0, poll: float = 0.5,
                 say: Callable[[str], None] = print, view: Optional[Callable[[list[dict]], None]] = None,
                 stages: tuple = STAGES):
        self.run, self.store, self.slots, self.grace, self.poll = run, store, slots, grace, poll
        self.say, self.view, self.stages = say, view, stages
        self.active: dict[int, tuple] = {}  # job id -> (Popen, slot)

    def execute(self) -> None:
        row = self.store.get_run(self.run.name)
        self.store.update_run(self.run.name, status="running", started=row.get("started") or _now(), ended=None)
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM,)}
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for stage in self.stages:
                units = pending(self.run, stage)
                if not units:
                    continue
                self._run_stage(stage, units)
            self.store.update_run(self.run.name, status="succeeded", ended=_now())
            self.say(f"run {self.run.name}: all stages done")
        except KeyboardInterrupt:
            self._stop_all()
            self.store.update_run(self.run.name, status="killed", ended=_now())
            raise Stopped(f"run {self.run.name} stopped; continue it with: stepadapt resume {self.run.name}") from None
        except Stopped:
            self._stop_all()
            self.store.update_run(self.run.name, status="killed", ended=_now())
            raise
        except StageFailed:
            self.store.update_run(self.run.name, status="failed", ended=_now())
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _device_args(self, slot: str) -> dict:
        return {"device": "cuda" if slot.startswith("cuda") else "cpu"}

    def _run_stage(self, stage: str, units: list) -> None:
        """Launch the stage's units on free slots until all ended. The first failed job ends the stage at
        once: nothing more is launched, running siblings are stopped (training checkpoints on SIGINT) and
        ``StageFailed`` is raised, so the run ends ``failed`` and ``resume`` continues it."""
        todo = list(units)
        free = list(self.slots) if stage in GROUP_STAGES else list(self.slots)[:1]
        threads = None
        if free[0] == "cpu" and len(free) > 1 and stage in GROUP_STAGES:
            threads = max(1, (os.cpu_count() or 1) // min(len(free), len(todo)))
        while todo or self.active:
            while todo and free:
                self._launch(stage, todo.pop(0), free.pop(0), threads)
            if self.view:
                self.view(self.store.jobs(self.run.name))
            time.sleep(self.poll)
            failed = self._reap(stage, free)
            if failed:
                self._stop_all()
                if self.view:
                    self.view(self.store.jobs(self.run.name))
                job_id, what, job = failed[0]
                raise StageFailed(f"job {job_id} ({what}) failed (exit {job['exit_code']}); see stepadapt logs "
                                  f"{job_id}; after fixing, continue with stepadapt resume {self.run.name}")
        if self.view:
            self.view(self.store.jobs(self.run.name))

    def _launch(self, stage: str, unit, slot: str, threads: Optional[int]) -> None:
        gpus = [x.split(":", 1)[1] for x in self.slots if x.startswith("cuda:")]
        if stage == "base" and len(gpus) > 1:  # stage 1 on every GPU: torchrun, DDP
            job_id, proc = launch(self.store, self.run, stage, unit, {"device": "cuda"},
                                  device="cuda:" + ",".join(gpus), nproc=len(gpus))
        else:
            job_id, proc = launch(self.store, self.run, stage, unit, self._device_args(slot), device=slot,
                                  threads=threads)
        self.active[job_id] = (proc, slot)
        self.say(f"job {job_id}: {stage}{'' if unit is None else f' group {unit}'} started on {slot} (pid {proc.pid})")

    def _reap(self, stage: str, free: list) -> list[tuple]:
        """Settle the jobs that ended (their slots become free); returns the failed ones."""
        failed = []
        for job_id, (proc, slot) in list(self.active.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self.active[job_id]
            free.append(slot)
            job = settle(self.store, job_id, rc)
            what = f"{stage}{'' if job['group_index'] is None else ' group ' + str(job['group_index'])}"
            self.say(f"job {job_id}: {what} {job['status']} (exit {rc})"
                     + (f": {job['message']}" if job["status"] != "succeeded" and job["message"] else ""))
            if job["status"] == "killed":
                raise Stopped(f"job {job_id} ({what}) was killed; run {self.run.name} stopped "
                              f"(continue with stepadapt resume {self.run.name})")
            if job["status"] != "succeeded":
                failed.append((job_id, what, job))
        return failed

    def _stop_all(self) -> None:
        """Stop every active job (SIGINT first: training checkpoints) and record how each ended."""
        for job_id, (proc, _) in list(self.active.items()):
            try:
                stop_job(self.store, job_id, self.grace, log=self.say)
            except UserError:  # it ended by itself meanwhile
                pass
            try:
                settle(self.store, job_id, proc.wait(timeout=self.grace))
            except subprocess.TimeoutExpired:
                self.say(f"job {job_id}: pid {proc.pid} still there after SIGKILL")
            self.active.pop(job_id, None)


def ensure_idle(store: Store, run: Run) -> None:
    for j in store.jobs(run.name, active=True):
        raise UserError(f"run {run.name} is running already (job {j['id']}, {j['stage']}, pid {j['pid']}); "
                        f"stop it with stepadapt kill {run.name}")


def start_detached(run: Run, store: Store, slots: list[str], grace: float = 10.0) -> tuple[int, int]:
    """Run the pipeline in the background as a tracked ``pipeline`` job; returns (job id, pid)."""
    ensure_idle(store, run)
    job_id, proc = launch(store, run, "pipeline", None, {"slots": slots, "grace": grace}, device=None)
    store.update_run(run.name, status="running")
    return job_id, proc.pid


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
        store.update_run(name, status="killed", ended=_now())
    return done


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt

