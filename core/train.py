"""Training loop shared by stage 1 (all timesteps) and stage 2 (one group's timesteps).

Determinism: batch k comes from ``data.BatchStream`` (a function of (seed, k)); the timesteps and
noise of step k come from generators seeded by (seed, k); the only global-RNG consumer (dropout)
has its state saved in the checkpoint. So ``resume`` gives the same weights as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .data import batches, to_model_range
from .diffusion import GaussianDiffusion, TimestepSampler
from .errors import UserError
from .runs import atomic_torch_save


class Interrupted(UserError):
    exit_code = 130


@dataclass
class TrainSpec:
    """One training job: what to train for how long, and where its state goes."""

    name: str                          # "base", "group03", ...
    ckpt: Path                         # resumable state
    model_out: Path                    # EMA weights written at the end
    metrics: Path                      # JSON lines
    steps: int
    batch_size: int
    lr: float
    ema_decay: float
    seed: int
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 100
    ckpt_every: int = 1000
    bf16: bool = True
    workers: int = 0
    channels_last: bool = True         # NHWC weights and inputs (oneDNN and cuDNN run these fastest)
    compile: bool = False              # torch.compile the forward/backward
    accum: int = 1                     # micro-batches per optimiser step (batch_size is the total)
    timesteps: Optional[list[int]] = None  # None: all T
    extra: dict = field(default_factory=dict)  # stored with the model artifact (group index, arch, ...)


def base_spec(run, cfg: dict, steps: Optional[int] = None, **changes) -> TrainSpec:
    """The stage-1 job of ``run`` as its config says (``changes`` override spec fields)."""
    t = cfg["train"]
    spec = TrainSpec(
        name="base", ckpt=run.ckpt("base"), model_out=run.model("base"), metrics=run.metrics("base"),
        steps=t["steps"] if steps is None else steps, batch_size=t["batch_size"], lr=t["lr"],
        ema_decay=t["ema_decay"], seed=cfg["seed"], weight_decay=t["weight_decay"], grad_clip=t["grad_clip"],
        log_every=t["log_every"], ckpt_every=t["ckpt_every"], bf16=t["bf16"], workers=cfg["data"]["workers"],
        channels_last=t["channels_last"], compile=t["compile"], accum=t["accum"],
        extra={"arch": cfg["model"], "stage": "base"},
    )
    for key, val in changes.items():
        setattr(spec, key, val)
    return spec


def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {name} asked for but CUDA is not available")
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta."""
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)


def _distributed():
    """(torch.distributed, rank, world size) when a process group is up, else (None, 0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def init_distributed() -> Optional[torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; returns this rank's device, else None."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _step_seed(seed: int, step: int, salt: int) -> int:
    return (seed * 1_000_003 + step * 7 + salt) % (2 ** 63)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class _Progress:
    """A rich progress bar on a terminal; a plain line every ``log_every`` steps otherwise."""

    def __init__(self, name: str, start: int, total: int, enabled: bool):
        self.total, self.name = total, name
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task(name, total=total, completed=start, info="")
            self.bar.start()
        self.enabled = enabled

    def update(self, step: int, info: str, logged: bool):
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled and logged:
            print(f"[{self.name}] step {step}/{self.total} {info}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Drop metric lines past the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= after_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            continue
    path.write_text("".join(l + "\n" for l in keep))


def train(spec: TrainSpec, model: torch.nn.Module, diffusion: GaussianDiffusion, data, *,
          resume: bool = False, device: torch.device | str = "cpu", progress: bool = True,
          on_log: Optional[Callable[[dict], None]] = None, on_start: Optional[Callable[[int], None]] = None,
          on_step: Optional[Callable[[int, int], None]] = None) -> dict:
    """Train ``model`` per ``spec``; returns the final metrics. Writes ckpt, metrics and the EMA model.

    Hooks: ``on_start(step)`` once with the step training starts from (0, or the checkpoint's),
    ``on_step(done, total)`` after every step, ``on_log(record)`` with every logged record.

    Under ``torch.distributed`` (torchrun), every rank takes an equal slice of each step's batch (the batch,
    timesteps and noise are the same functions of (seed, step) as on one device, so the gradient is the
    same mean), gradients are averaged by DDP, and only rank 0 writes files and calls the hooks.
    On CUDA: bf16 autocast, channels-last, fused AdamW; ``spec.compile`` compiles the model;
    ``spec.accum`` splits each step's batch into micro-batches."""
    import copy

    device = torch.device(device)
    dist, rank, world = _distributed()
    main = rank == 0
    if not main:
        on_log = on_start = on_step = None
        progress = False
    cuda = device.type == "cuda"
    model.to(device)
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay,
                            fused=True if cuda else None)
    start = 0
    if spec.ckpt.exists():
        if not resume:
            raise UserError(f"{spec.ckpt} exists; pass --resume to continue it (nothing was overwritten)")
        try:
            state = torch.load(spec.ckpt, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
        except Exception as e:
            raise UserError(f"cannot resume from {spec.ckpt}: {type(e).__name__}: {e}") from None
        start = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if main:
            _truncate_metrics(spec.metrics, start)
    else:
        torch.manual_seed(spec.seed)

    if on_start:
        on_start(start)
    sampler = TimestepSampler(spec.timesteps if spec.timesteps is not None else range(diffusion.num_timesteps))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and spec.bf16 else contextlib.nullcontext())
    spec.metrics.parent.mkdir(parents=True, exist_ok=True)

    def save(step):
        if not main:
            return
        atomic_torch_save({
            "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else None},
            "spec": {k: str(v) if isinstance(v, Path) else v for k, v in spec.__dict__.items()},
        }, spec.ckpt)

    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if spec.compile:
        net = torch.compile(net)
    bar = _Progress(spec.name, start, spec.steps, progress)
    last = {"step": start}
    acc = torch.zeros(3, device=device)
    n_acc, t0, t_last = 0, time.time(), time.time()
    gen_cpu = torch.Generator()
    gen_dev = torch.Generator(device=device)
    model.train()
    stream = batches(data, spec.batch_size, spec.seed, start, spec.steps, spec.workers, pin=cuda)
    try:
        with _StopFlag() as stop:
            for step in range(start, spec.steps):
                x0 = to_model_range(next(stream).to(device, non_blocking=True))
                gen_cpu.manual_seed(_step_seed(spec.seed, step, 1))
                gen_dev.manual_seed(_step_seed(spec.seed, step, 2))
                t = sampler.sample(x0.shape[0], gen_cpu, device)
                noise = torch.randn(x0.shape, generator=gen_dev, device=device)
                if world > 1:  # this rank's slice of the step's batch
                    x0, t, noise = x0[rank::world], t[rank::world], noise[rank::world]
                if spec.channels_last:
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                    noise = noise.contiguous(memory_format=torch.channels_last)
                opt.zero_grad(set_to_none=True)
                k = max(1, min(spec.accum, x0.shape[0]))
                parts = list(zip(x0.tensor_split(k), t.tensor_split(k), noise.tensor_split(k)))
                loss = mse = vb = 0.0
                for i, (xc, tc, nc) in enumerate(parts):
                    w = xc.shape[0] / x0.shape[0]
                    sync = (world > 1 and i < len(parts) - 1)
                    with (net.no_sync() if sync and hasattr(net, "no_sync") else contextlib.nullcontext()), autocast:
                        terms = diffusion.training_losses(net, xc, tc, nc)
                        part = terms["loss"].mean() * w
                    part.backward()
                    loss = loss + part.detach()
                    mse = mse + terms["mse"].mean().detach() * w
                    vb = vb + terms.get("vb", torch.zeros_like(part)).mean().detach() * w
                if spec.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
                opt.step()
                ema_update(ema, model, spec.ema_decay)
                acc += torch.stack([loss, mse, vb])
                n_acc += 1
                done = step + 1
                logged = done % spec.log_every == 0 or done == spec.steps
                if logged:
                    if world > 1:  # the mean over every rank's slice
                        dist.all_reduce(acc)
                        acc /= world
                    vals = (acc / n_acc).tolist()
                    now = time.time()
                    rec = {"step": done, "loss": vals[0], "mse": vals[1], "vb": vals[2],
                           "it_s": n_acc / max(now - t_last, 1e-9), "time": now}
                    if not all(math.isfinite(v) for v in vals):
                        raise UserError(f"{spec.name}: loss became {vals[0]} at step {done}; "
                                        f"last good checkpoint: {spec.ckpt}")
                    if main:
                        with spec.metrics.open("a") as f:
                            f.write(json.dumps(rec) + "\n")
                    last = rec
                    if on_log:
                        on_log(rec)
                    acc.zero_()
                    n_acc, t_last = 0, now
                if on_step:
                    on_step(done, spec.steps)
                bar.update(done, f"loss {last.get('loss', float('nan')):.4f} {last.get('it_s', 0):.1f} it/s", logged)
                if done % spec.ckpt_every == 0 and done != spec.steps:
                    save(done)
                stopping = stop.signum is not None
                if world > 1:  # every rank stops at the same step (the signal may reach them apart)
                    flag = torch.tensor([float(stopping)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stopping = bool(flag.item())
                if stopping:
                    save(done)
                    raise Interrupted(f"{spec.name}: stopped by signal at step {done}; "
                                      f"checkpoint saved, continue with --resume")
            if spec.steps > start or not spec.ckpt.exists():
                save(spec.steps)
    finally:
        bar.close()
    if main:
        atomic_torch_save({"state": ema.state_dict(), "step": spec.steps, **spec.extra}, spec.model_out)
    if world > 1:
        dist.barrier()
    last = dict(last)
    last["elapsed_s"] = time.time() - t0
    return last
