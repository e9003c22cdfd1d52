"""The training loop shared by stage 1 (all timesteps) and stage 2 (one group's timesteps).

``TrainLoop`` is split into the steps of a run: ``setup`` (model, EMA, optimiser on the device), ``resume``
(state from the checkpoint), ``step`` (one optimisation step: L_hybrid = L_simple + lambda L_vlb on a batch,
Eq. 16 of IDDPM, see ``diffusion.training_losses``), ``log`` (metrics), ``checkpoint``, and the signal
handling that turns SIGINT/SIGTERM into a checkpoint and ``Interrupted``.

Determinism: batch k comes from ``data.BatchStream`` (a function of (seed, k)); the timesteps and
noise of step k come from generators seeded by (seed, k); the only global-RNG consumer (dropout)
has its state saved in the checkpoint. So ``resume`` gives the same weights as an uninterrupted run.

``STEPADAPT_STEP_PAUSE`` (seconds, read when a loop starts) makes every step sleep that long after it: a
stop-and-resume test gets a window in which to stop a job without paying for hundreds of real steps.

Under ``torch.distributed`` (torchrun), every rank takes an equal slice of each step's batch (the batch,
timesteps and noise are the same functions of (seed, step) as on one device, so the gradient is the
same mean), gradients are averaged by DDP, and only rank 0 writes files and calls the hooks.
bf16 autocast (``spec.bf16``) where the device computes bf16 natively: CUDA, and CPUs with AMX
(``devices.bf16_native``); channels-last; on CUDA fused AdamW; ``spec.compile`` compiles the model;
``spec.accum`` splits each step's batch into micro-batches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from core.errors import Interrupted, UserError
from core.model.diffusion import GaussianDiffusion, TimestepSampler, to_model_range
from core.runs import atomic_torch_save, load_torch, sweep_partial_writes
from core.training.data import batches
from core.training.devices import autocast, distributed
from core.training.spec import TrainSpec, milestone_paths, snapshot_path  # noqa: F401 (the loop's spec, here as before)


def _pause_s() -> float:
    """``STEPADAPT_STEP_PAUSE`` from the job's environment (a forked job's, not its server's), in seconds."""
    raw = os.environ.get("STEPADAPT_STEP_PAUSE") or "0"
    try:
        pause = float(raw)
    except ValueError:
        pause = -1.0
    if not 0 <= pause < 60:
        raise UserError(f"STEPADAPT_STEP_PAUSE={raw!r}: give seconds from 0 to 60")
    return pause


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def ema_decay_at(decay: float, step: int, warmup: bool) -> float:
    """The EMA decay after optimiser step ``step`` (1-based). With warmup, min(decay, (1 + k) / (10 + k)): a
    short fine-tune from a just-pruned model would otherwise keep decay^k of that damaged start in its EMA
    (0.99^100 = 37% after 100 steps); with warmup the EMA follows the model early and averages later."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def _step_seed(seed: int, step: int, salt: int) -> int:
    return (seed * 1_000_003 + step * 7 + salt) % (2**63)


PARENT_DEATH = getattr(signal, "SIGUSR1", signal.SIGTERM)  # what a forked job gets when its server dies


class StopFlag:
    """SIGINT/SIGTERM (and SIGUSR2, Slurm's warning before a time limit or preemption, and SIGUSR1, a forked job's
    parent-death signal: its server died) set a flag; the loop finishes its step, checkpoints and stops. A second
    signal stops at once, unless it is the parent-death signal, which one stop already answers (``kill`` stops a
    job and then its server exits: that is one stop, not two)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR2", signal.SIGTERM), PARENT_DEATH):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == PARENT_DEATH:
                return
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():  # once stopping, a later parent-death signal has nothing left to stop
            signal.signal(s, signal.SIG_IGN if s == PARENT_DEATH and self.signum is not None else h)


class ProgressLine:
    """A rich progress bar on a terminal; a plain line every ``log_every`` steps otherwise."""

    def __init__(self, name: str, start: int, total: int, enabled: bool):
        self.total, self.name, self.enabled = total, name, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(f"[bold]{name}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.task = self.bar.add_task(name, total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, info: str, logged: bool):
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled and logged:
            print(f"[{self.name}] step {step}/{self.total} {info}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop metric lines past the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= after_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in keep))


class TrainLoop:
    """One training job (``spec``) of ``model``; ``run()`` trains it and returns the last logged metrics.

    Hooks: ``on_start(step)`` once with the step training starts from (0, or the checkpoint's),
    ``on_step(done, total)`` after every step, ``on_log(record)`` with every logged record."""

    def __init__(
        self,
        spec: TrainSpec,
        model: torch.nn.Module,
        diffusion: GaussianDiffusion,
        data,
        *,
        resume: bool = False,
        device: torch.device | str = "cpu",
        progress: bool = True,
        on_log: Optional[Callable[[dict], None]] = None,
        on_start: Optional[Callable[[int], None]] = None,
        on_step: Optional[Callable[[int, int], None]] = None,
        teacher: Optional[torch.nn.Module] = None,
        evaluator: Optional[Callable[[torch.nn.Module], float]] = None,
    ):
        self.spec, self.model, self.diffusion, self.data = spec, model, diffusion, data
        self.evaluator = evaluator if spec.eval_every > 0 else None
        self.best = {"step": None, "value": None}  # the lowest measurement so far (kept in the checkpoint)
        self.teacher = teacher if spec.distill > 0 else None
        self.device = torch.device(device)
        self.dist, self.rank, self.world = distributed()
        self.main = self.rank == 0
        self.hooks = {"on_log": on_log, "on_start": on_start, "on_step": on_step} if self.main else {}
        self.progress = progress and self.main
        self.cuda = self.device.type == "cuda"
        self.pause = _pause_s()
        self.setup()
        if self.main:  # a job killed while writing leaves partial files: large at real sizes
            sweep_partial_writes(spec.ckpt)
            sweep_partial_writes(spec.model_out)
        if spec.ckpt.exists() and not resume:
            raise UserError(f"{spec.ckpt} exists; pass --resume to continue it (nothing was overwritten)")
        self.start = self.resume() if spec.ckpt.exists() else self.fresh()

    # -- setup and resume -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Model, EMA copy and optimiser on the device; the network that runs the steps (DDP, compiled)."""
        spec = self.spec
        self.model.to(self.device)
        if spec.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, fused=True if self.cuda else None
        )
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
        if spec.compile:
            self.net = torch.compile(self.net)
        self.sampler = TimestepSampler(
            spec.timesteps if spec.timesteps is not None else range(self.diffusion.num_timesteps)
        )
        self.autocast = autocast(self.device, spec.bf16)
        self.precision = "bf16 autocast" if isinstance(self.autocast, torch.autocast) else "fp32"
        self.precisions = {self.precision}  # every precision this model was trained at (kept in its files)
        if self.teacher is not None:
            self.teacher = self.teacher.to(self.device).eval().requires_grad_(False)
            if spec.channels_last:
                self.teacher.to(memory_format=torch.channels_last)
        self.gen_cpu = torch.Generator()
        self.gen_dev = torch.Generator(device=self.device)

    def fresh(self) -> int:
        """From step 0: metric lines of an earlier attempt that died before its first checkpoint go."""
        torch.manual_seed(self.spec.seed)
        if self.main:
            truncate_metrics(self.spec.metrics, 0)
            if self.spec.evals is not None:
                truncate_metrics(self.spec.evals, -1)
        return 0

    def resume(self) -> int:
        """Weights, EMA, optimiser and RNG state from the checkpoint; returns its step."""
        spec = self.spec
        state = load_torch(spec.ckpt, "checkpoint", self.device)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            if state["opt"] is not None:  # None: a base imported from elsewhere starts a fresh optimiser
                self.opt.load_state_dict(state["opt"])
        except (OSError, RuntimeError, KeyError, ValueError, EOFError) as e:
            raise UserError(f"cannot resume from {spec.ckpt}: {type(e).__name__}: {e}") from None
        for group in self.opt.param_groups:  # the spec's rate holds (the control continues stage 1 at another)
            group["lr"] = spec.lr
        torch.set_rng_state(state["rng"]["torch"])
        if self.cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.best = state.get("best") or self.best
        self.precisions |= set(state.get("precisions", ()))  # the earlier attempts' (another machine's, perhaps)
        if self.main:
            truncate_metrics(spec.metrics, state["step"])
            if spec.evals is not None:
                truncate_metrics(spec.evals, state["step"])
        return state["step"]

    # -- one optimisation step ------------------------------------------------------------------------
    def batch(self, step: int, stream):
        """Step ``step``'s images, timesteps and noise (this rank's slice of them)."""
        spec = self.spec
        x0 = to_model_range(next(stream).to(self.device, non_blocking=True))
        self.gen_cpu.manual_seed(_step_seed(spec.seed, step, 1))
        self.gen_dev.manual_seed(_step_seed(spec.seed, step, 2))
        t = self.sampler.sample(x0.shape[0], self.gen_cpu, self.device)
        noise = torch.randn(x0.shape, generator=self.gen_dev, device=self.device)
        if self.world > 1:
            x0, t, noise = x0[self.rank :: self.world], t[self.rank :: self.world], noise[self.rank :: self.world]
        if spec.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        return x0, t, noise

    def step(self, x0, t, noise, step: int = 0) -> torch.Tensor:
        """Gradient of the mean loss over the batch (in ``accum`` micro-batches), clip, AdamW, EMA.
        Returns [loss, mse, vb, distill] of the step."""
        self.opt.zero_grad(set_to_none=True)
        k = max(1, min(self.spec.accum, x0.shape[0]))
        parts = list(zip(x0.tensor_split(k), t.tensor_split(k), noise.tensor_split(k)))
        total = torch.zeros(4, device=self.device)
        for i, (xc, tc, nc) in enumerate(parts):
            w = xc.shape[0] / x0.shape[0]
            sync_later = self.world > 1 and i < len(parts) - 1 and hasattr(self.net, "no_sync")
            with self.net.no_sync() if sync_later else contextlib.nullcontext(), self.autocast:
                terms = self.diffusion.training_losses(self.net, xc, tc, nc, self.teacher, self.spec.distill)
                part = terms["loss"].mean() * w
            part.backward()
            zero = torch.zeros_like(terms["mse"])
            vb, dist = terms.get("vb", zero).mean(), terms.get("distill", zero).mean()
            total += torch.stack([part.detach(), terms["mse"].mean().detach() * w, vb.detach() * w, dist.detach() * w])
        if self.spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.grad_clip)
        self.opt.step()
        ema_update(self.ema, self.model, ema_decay_at(self.spec.ema_decay, step + 1, self.spec.ema_warmup))
        return total

    # -- logging and checkpoints ----------------------------------------------------------------------
    def log(self, done: int, acc: torch.Tensor, n: int, since: float) -> dict:
        """The mean of the last ``n`` steps (over every rank) as a record: to the metrics file and ``on_log``."""
        if self.world > 1:
            self.dist.all_reduce(acc)
            acc /= self.world
        vals = (acc / n).tolist()
        now = time.time()
        rec = {
            "step": done,
            "loss": vals[0],
            "mse": vals[1],
            "vb": vals[2],
            "it_s": n / max(now - since, 1e-9),
            "time": now,
        }
        if self.teacher is not None:
            rec["distill"] = vals[3]
        if not all(math.isfinite(v) for v in vals):
            raise UserError(
                f"{self.spec.name}: loss became {vals[0]} at step {done}; last good checkpoint: {self.spec.ckpt}"
            )
        if self.main:
            with self.spec.metrics.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        self._hook("on_log", rec)
        return rec

    def checkpoint(self, step: int, path: Optional[Path] = None) -> None:
        """The resumable state at ``step`` (to ``spec.ckpt`` unless ``path`` says where)."""
        if not self.main:
            return
        atomic_torch_save(
            {
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "step": step,
                "best": self.best,
                "precisions": sorted(self.precisions),
                "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if self.cuda else None},
                "spec": {k: str(v) if isinstance(v, Path) else v for k, v in self.spec.__dict__.items()},
            },
            path or self.spec.ckpt,
        )

    def keep_milestone(self, step: int) -> None:
        """Milestone ``step`` (``spec.keep``): the EMA weights as a model artifact and the training state beside them,
        so that a run forked from it (``fork RUN@STEP``) starts exactly there."""
        if not self.main or self.spec.milestones is None:
            return
        model, state = milestone_paths(self.spec.milestones, step)
        self.checkpoint(step, state)
        atomic_torch_save(
            {
                "state": self.ema.state_dict(),
                "step": step,
                "precisions": sorted(self.precisions),
                "milestone": True,
                **self.spec.extra,
            },
            model,
        )

    def evaluate(self, step: int) -> None:
        """Measure the EMA model (lower is better): a line in ``spec.evals``, and ``spec.best_out`` when it is the
        best so far (Fig. 6 of the paper: quality during fine-tuning peaks, then over-fits)."""
        if self.evaluator is None or not self.main:
            return
        value = float(self.evaluator(self.ema))
        self.spec.evals.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.evals, "a") as f:
            f.write(json.dumps({"step": step, "value": value}) + "\n")
        if self.spec.snapshots is not None:  # for measures of the whole model later (FID during fine-tuning)
            atomic_torch_save(
                {"state": self.ema.state_dict(), "step": step, **self.spec.extra},
                snapshot_path(self.spec.snapshots, step),
            )
        if self.best["value"] is None or value < self.best["value"]:
            self.best = {"step": step, "value": value}
            if self.spec.best_out is not None:
                atomic_torch_save(
                    {"state": self.ema.state_dict(), "step": step, "best_value": value, **self.spec.extra},
                    self.spec.best_out,
                )

    def stopping(self, stop: StopFlag) -> bool:
        """Whether a signal asked to stop; every rank stops at the same step (the signal may reach them apart)."""
        flag = stop.signum is not None
        if self.world > 1:
            t = torch.tensor([float(flag)], device=self.device)
            self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def _hook(self, name: str, *args) -> None:
        if self.hooks.get(name):
            self.hooks[name](*args)

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> dict:
        spec, start = self.spec, self.start
        self._hook("on_start", start)
        if self.main:
            print(
                f"[{spec.name}] {self.precision} on {self.device.type}"
                + (f", {self.world} processes (DDP)" if self.world > 1 else ""),
                file=sys.stderr,
                flush=True,
            )
        spec.metrics.parent.mkdir(parents=True, exist_ok=True)
        bar = ProgressLine(spec.name, start, spec.steps, self.progress)
        last, acc, n, t0, since = {"step": start}, torch.zeros(4, device=self.device), 0, time.time(), time.time()
        self.model.train()
        stream = batches(self.data, spec.batch_size, spec.seed, start, spec.steps, spec.workers, pin=self.cuda)
        if start == 0 and self.evaluator is not None:
            self.evaluate(0)  # the starting point (a just-pruned model) as step 0 of the curve
        try:
            with StopFlag() as stop:
                for step in range(start, spec.steps):
                    acc += self.step(*self.batch(step, stream), step=step)
                    n, done = n + 1, step + 1
                    logged = done % spec.log_every == 0 or done == spec.steps
                    if logged:
                        last = self.log(done, acc, n, since)
                        acc.zero_()
                        n, since = 0, time.time()
                    if self.evaluator is not None and (done % spec.eval_every == 0 or done == spec.steps):
                        self.evaluate(done)
                    self._hook("on_step", done, spec.steps)
                    bar.update(
                        done, f"loss {last.get('loss', float('nan')):.4f} {last.get('it_s', 0):.1f} it/s", logged
                    )
                    if done in spec.keep:
                        self.keep_milestone(done)
                    if done % spec.ckpt_every == 0 and done != spec.steps:
                        self.checkpoint(done)
                    if self.pause:
                        time.sleep(self.pause)
                    if self.stopping(stop):
                        self.checkpoint(done)
                        e = Interrupted(
                            f"{spec.name}: stopped by {signal.Signals(stop.signum or signal.SIGINT).name} "
                            f"at step {done}; checkpoint saved, continue with --resume"
                        )
                        e.signum = stop.signum
                        raise e
                if spec.steps > start or not spec.ckpt.exists():
                    self.checkpoint(spec.steps)
        finally:
            bar.close()
        self.finish()
        return {**last, "elapsed_s": time.time() - t0}

    def finish(self) -> None:
        """The EMA weights as the job's model artifact (rank 0), then every rank waits for it."""
        if self.main:
            atomic_torch_save(
                {
                    "state": self.ema.state_dict(),
                    "step": self.spec.steps,
                    "precisions": sorted(self.precisions),
                    **self.spec.extra,
                },
                self.spec.model_out,
            )
        if self.world > 1:
            self.dist.barrier()


def train(spec: TrainSpec, model: torch.nn.Module, diffusion: GaussianDiffusion, data, **options) -> dict:
    """Train ``model`` per ``spec`` (see ``TrainLoop``, whose keyword options it takes: resume, device, progress,
    the hooks, teacher, evaluator); returns the final metrics. Writes the checkpoint, the metrics file and the EMA
    model. ``resume``: continue from an existing checkpoint (else one is an error). ``teacher``: the model whose
    output the student matches with weight ``spec.distill``. ``evaluator``: a measurement of the EMA model (lower
    is better) taken every ``spec.eval_every`` steps."""
    return TrainLoop(spec, model, diffusion, data, **options).run()
