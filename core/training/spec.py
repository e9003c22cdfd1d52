"""What one training job is (``TrainSpec``) and where its files go: plain data, importable without torch
(the stage modules build specs, and listing a run asks them what is left to do)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class TrainSpec:
    """One training job: what to train for how long, and where its state goes."""

    name: str  # "base", "group03", ...
    ckpt: Path  # resumable state
    model_out: Path  # EMA weights written at the end
    metrics: Path  # JSON lines
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
    channels_last: bool = True  # NHWC weights and inputs (oneDNN and cuDNN run these fastest)
    compile: bool = False  # torch.compile the forward/backward
    accum: int = 1  # micro-batches per optimiser step (batch_size is the total)
    timesteps: Optional[list[int]] = None  # None: all T
    distill: float = 0.0  # weight of matching the teacher's output (needs a teacher)
    ema_warmup: bool = False  # EMA decay min(decay, (1 + k) / (10 + k)) at step k (see ``ema_decay_at``)
    eval_every: int = 0  # with an evaluator: measure the EMA model every N steps (and at 0 and the end)
    evals: Optional[Path] = None  # JSON lines {"step", "value"} of those measurements
    best_out: Optional[Path] = None  # the EMA weights at the best (lowest) measurement so far
    snapshots: Optional[Path] = None  # a folder for the EMA weights at every measurement (stepNNNNNNN.pt)
    extra: dict = field(default_factory=dict)  # stored with the model artifact (group index, arch, ...)
    keep: list[int] = field(default_factory=list)  # milestones: steps whose EMA weights and state are kept
    milestones: Optional[Path] = None  # their folder (``milestone_paths``)


def stage_spec(run, name: str, cfg: dict, steps: int, seed: int, tuning: bool = False, **fields) -> TrainSpec:
    """A training job of ``run`` named ``name`` (its checkpoint, model and metrics files) with the config's
    training settings: stage 1's rate, batch and EMA, or with ``tuning`` the fine-tunes' (and their EMA warm-up,
    a log line every tenth of the steps at least, and accumulation only where the batch divides); ``fields``
    set the rest (timesteps, extra, ...)."""
    t = cfg["train"]
    rate = cfg["finetune"] if tuning else t
    settings = dict(
        name=name,
        ckpt=run.ckpt(name),
        model_out=run.model(name),
        metrics=run.metrics(name),
        steps=steps,
        batch_size=rate["batch_size"],
        lr=rate["lr"],
        ema_decay=rate["ema_decay"],
        seed=seed,
        weight_decay=t["weight_decay"],
        grad_clip=t["grad_clip"],
        log_every=min(t["log_every"], max(1, steps // 10)) if tuning else t["log_every"],
        ckpt_every=t["ckpt_every"],
        bf16=t["bf16"],
        workers=cfg["data"]["workers"],
        channels_last=t["channels_last"],
        compile=t["compile"],
        accum=t["accum"] if not tuning or rate["batch_size"] % t["accum"] == 0 else 1,
    )
    if tuning:
        settings["ema_warmup"] = rate["ema_warmup"]
    return TrainSpec(**{**settings, **fields})


def snapshot_path(folder: Path, step: int) -> Path:
    """The EMA weights a training job kept at ``step`` (``TrainSpec.snapshots``)."""
    return Path(folder) / f"step{step:07d}.pt"


def milestone_paths(folder: Path, step: int) -> tuple[Path, Path]:
    """The EMA weights (a model artifact, as ``models/base.pt``) and the training state (a checkpoint, what the
    control of a run forked from this milestone continues) that a training job kept at milestone ``step``."""
    return Path(folder) / f"step{step:07d}.pt", Path(folder) / f"step{step:07d}.state.pt"
