"""The control at equal inference cost, ``uniform``: what a user does without the method. One copy of stage 1
pruned, with one criterion for all timesteps, to the progressive model's MACs averaged over timesteps, then
fine-tuned on all timesteps for as many steps and images as every group's fine-tune together
(``models/uniform.pt``, its plan in ``prune/uniform.json``).

The equal-compute control asks "is it the extra steps?"; this one asks "why not prune one model to the same
average cost?" (the Diff-Pruning recipe). The method pays over it only if giving each timestep group its own
budget beats one budget for all at the same average MACs.

The criterion is the run's ``prune.method`` when it is an importance criterion; a run pruned by the LLM proxy
prunes its uniform control by magnitude, the proxy's own starting criterion (the proxy searches one group's
timesteps at a time, and its recorded calls belong to the groups). Runs without pruning (``prune.method none``,
the two-stage variant) have no uniform control: their progressive model costs what the base costs.
Off by default (``control.uniform``): it adds a pruning and as many training steps as the control.
"""

from __future__ import annotations

from core.config import single_stage
from core.errors import UserError
from core.manager.stages.control import added_steps, all_timesteps_spec, run_training, train_spec
from core.method.fields import artifact_fields
from core.names import IMPORTANCE_METHODS
from core.training.spec import TrainSpec

NAME = "uniform"
GROUPED = False


def wanted(cfg: dict) -> bool:
    """Whether a run with ``cfg`` has a uniform control."""
    return (
        bool(cfg["control"].get("uniform"))
        and not single_stage(cfg)
        and cfg["prune"]["method"] not in ("none", "scratch")
    )


def criterion(cfg: dict) -> str:
    """The importance criterion the uniform control is pruned with (see the module docstring)."""
    method = cfg["prune"]["method"]
    return method if method in IMPORTANCE_METHODS else "magnitude"


def pending(run) -> list:
    if not wanted(run.config):
        return []
    added = added_steps(run)
    return [] if added is not None and artifact_fields(run.model(NAME)).get("added_steps") == added else [None]


def uniform_spec(run, cfg: dict, added: int, extra: dict) -> TrainSpec:
    """The uniform control's training: the fine-tunes' rate, batch and EMA, all timesteps, ``added`` steps."""
    return all_timesteps_spec(
        run,
        NAME,
        cfg,
        added,
        cfg["seed"] + 7919,
        **extra,
        added_steps=added,
        added_images=added * cfg["finetune"]["batch_size"],
    )


def plan_uniform(run, device="cpu", log=print) -> dict:
    """The uniform control's plan (pruned once, then read from ``prune/uniform.json``): the base pruned to the
    progressive model's average MACs over all timesteps."""
    from core.manager.stages.prune import prune_images
    from core.method.artifacts import load_progressive, load_unet
    from core.method.importance import LossContext, make_importance
    from core.method.prune import prune_to_budget
    from core.model.diffusion import create_diffusion
    from core.model.macs import progressive_cost
    from core.runs import atomic_write_json, read_json

    cfg, path = run.config, run.uniform_record()
    old = read_json(path)
    if isinstance(old, dict) and "plan" in old:
        return old
    if not run.model("progressive").exists():
        raise UserError("the uniform control prunes to the progressive model's average MACs: assemble it first")
    m = cfg["model"]
    target = progressive_cost(load_progressive(run.model("progressive")), m["image_size"], m["in_channels"])["avg_all"][
        "macs"
    ]
    pc, method = cfg["prune"], criterion(cfg)
    diffusion = create_diffusion(cfg)
    images = prune_images(cfg, pc["images"], pc["eval_images"], cfg["seed"])
    ctx = LossContext(
        diffusion,
        images[0],
        images[1],
        list(range(diffusion.num_timesteps)),
        pc["batch_size"],
        pc["batches"],
        cfg["seed"],
        str(device),
    )
    log(
        f"uniform control: pruning the base with {method} to the progressive model's average "
        f"{target / 1e9:.4f} GMACs, for all timesteps"
    )
    _, plan, report = prune_to_budget(
        load_unet(run.model("base"), device),
        make_importance(method, cfg["seed"]),
        target,
        ctx,
        allocation=pc["allocation"],
        tolerance=pc["tolerance"],
        log=log,
    )
    rec = {"budget_macs": target, "method": method, "allocation": pc["allocation"], "plan": plan, "report": report}
    atomic_write_json(rec, path)
    return rec


def work(ctx) -> None:
    run_training(ctx, train_uniform, NAME)


def train_uniform(run, device="cpu", log=print, on_total=None, hooks=None) -> TrainSpec:
    """Prune (once) and train (or resume) the uniform control of ``run``; returns its ``TrainSpec``."""
    from core.method.artifacts import load_unet
    from core.method.prune import apply_plan

    cfg = run.config
    if not wanted(cfg):
        raise UserError("this run has no uniform control (control.uniform off, or nothing pruned)")
    added = added_steps(run)
    if added is None:
        raise UserError("the uniform control trains as many steps as the fine-tunes together: fine-tune first")
    rec = plan_uniform(run, device, log)
    spec = uniform_spec(
        run, cfg, added, {"plan": rec["plan"], "budget_macs": rec["budget_macs"], "prune_method": rec["method"]}
    )
    earlier = artifact_fields(spec.ckpt).get("spec", {}).get("extra", {})
    if spec.ckpt.exists() and earlier.get("added_steps") != added:  # the fine-tunes changed since: start again
        spec.ckpt.unlink()
    model = load_unet(run.model("base"))  # the base EMA weights, pruned by the plan: the fine-tune's start
    if rec["plan"]["remove"]:
        apply_plan(model, rec["plan"])
    model.train()
    log(
        f"uniform control: {rec['report']['macs'] / 1e9:.4f} GMACs ({rec['method']}), "
        f"{'resuming' if spec.ckpt.exists() else 'training'} on all timesteps for {added} steps of "
        f"{spec.batch_size} images, as every group's fine-tune together"
    )
    return train_spec(spec, model, cfg, device, on_total, hooks)
