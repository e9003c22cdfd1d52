"""The other control at equal inference cost, ``dense-small``: what a user does instead of the method. A dense
UNet of the run's design whose width gives the progressive model's MACs averaged over timesteps, trained from
fresh weights on all timesteps for as many steps as the progressive model had in all (stage 1 plus every
group's fine-tune), with stage 1's settings (``models/dense-small.pt``).

Its width is the ``model.model_channels`` whose MACs come nearest the target; GroupNorm's group count is the
largest divisor of that width up to ``model.norm_groups``. Off by default (``control.dense``): it trains a whole
model from scratch, as long as stage 1 and the fine-tunes together, the most expensive arm of a comparison.
"""

from __future__ import annotations

import math

from core.config import model_arch, single_stage
from core.errors import UserError
from core.manager.stages.control import added_steps, run_training, train_spec
from core.method.fields import artifact_fields, artifact_step
from core.training.spec import TrainSpec, stage_spec

NAME = "dense-small"
GROUPED = False


def wanted(cfg: dict) -> bool:
    """Whether a run with ``cfg`` has a dense-small control (it needs a cheaper progressive model to match)."""
    return bool(cfg["control"].get("dense")) and not single_stage(cfg) and cfg["prune"]["method"] != "none"


def pending(run) -> list:
    if not wanted(run.config):
        return []
    added, base = added_steps(run), artifact_step(run.model("base"))
    done = artifact_fields(run.model(NAME))
    return [] if added is not None and base is not None and done.get("total_steps") == base + added else [None]


def narrower(arch: dict, width: int) -> dict:
    """``arch`` at ``model_channels`` = ``width``, with GroupNorm groups dividing it (at most the original's)."""
    groups = max(g for g in range(1, arch["norm_groups"] + 1) if width % g == 0)
    return {**arch, "model_channels": width, "norm_groups": groups}


def width_for(cfg: dict, target_macs: float) -> tuple[dict, int]:
    """The narrower architecture whose MACs are nearest ``target_macs`` (widths whose attention channels split
    into the run's heads), and its MACs."""
    from core.model.macs import count
    from core.model.unet import build_unet

    arch, m = model_arch(cfg), cfg["model"]
    heads = max(1, m["num_heads"])
    # channel multipliers of the levels with attention (their resolution listed) and of the middle block
    attn = [mult for i, mult in enumerate(m["channel_mult"]) if m["image_size"] // 2**i in m["attention_resolutions"]]
    attn.append(m["channel_mult"][-1])
    best = None
    for width in range(2, arch["model_channels"] + 1):
        if any((width * mult) % heads for mult in attn):
            continue
        cand = narrower(arch, width)
        macs = count(build_unet(cand, seed=0), m["image_size"], m["in_channels"])["macs"]
        if best is None or abs(math.log(macs / target_macs)) < abs(math.log(best[1] / target_macs)):
            best = (cand, macs)
    return best


def work(ctx) -> None:
    run_training(ctx, train_dense, NAME)


def train_dense(run, device="cpu", log=print, on_total=None, hooks=None) -> TrainSpec:
    """Find the width (once) and train (or resume) the dense-small control of ``run``; returns its ``TrainSpec``."""
    from core.method.artifacts import load_progressive
    from core.model.macs import progressive_cost
    from core.model.unet import build_unet

    cfg = run.config
    if not wanted(cfg):
        raise UserError("this run has no dense-small control (control.dense off, or nothing pruned)")
    added, base = added_steps(run), artifact_step(run.model("base"))
    if added is None or base is None or not run.model("progressive").exists():
        raise UserError("the dense-small control matches the progressive model's cost and steps: finish it first")
    m = cfg["model"]
    target = progressive_cost(load_progressive(run.model("progressive")), m["image_size"], m["in_channels"])["avg_all"][
        "macs"
    ]
    earlier = artifact_fields(run.ckpt(NAME)).get("spec", {}).get("extra", {})
    if earlier.get("target_macs") == target and earlier.get("total_steps") == base + added:
        arch, macs = earlier["arch"], earlier["macs"]  # resuming: the width found before
    else:
        if run.ckpt(NAME).exists():
            run.ckpt(NAME).unlink()  # the progressive model or its steps changed: start again
        arch, macs = width_for(cfg, target)
    spec = stage_spec(
        run,
        NAME,
        cfg,
        base + added,
        cfg["seed"] + 104_729,
        extra={
            "arch": arch,
            "stage": NAME,
            "target_macs": target,
            "macs": macs,
            "total_steps": base + added,
            "added_steps": added,
        },
    )
    log(
        f"dense-small control: {arch['model_channels']} channels ({macs / 1e9:.4f} GMACs, "
        f"{macs / target:.3f}x the progressive model's average), "
        f"{'resuming' if spec.ckpt.exists() else 'training from fresh weights'} for {spec.steps} steps "
        "(stage 1 and every fine-tune together)"
    )
    return train_spec(spec, build_unet(arch, seed=spec.seed), cfg, device, on_total, hooks)
