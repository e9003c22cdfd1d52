"""Stage 2, first half: prune one copy of the base per non-empty group to that group's MACs budget.

Each group's result is ``RUN/prune/groupNN.json``: the method and its settings, the plan, and the report
(budget, MACs, params, loss before/after on held-out images at the group's timesteps). The pruned model is
never stored separately: base EMA + plan rebuilds it exactly, and ``finetune`` starts from it.
"""
from __future__ import annotations

import datetime as _dt
import json
from typing import Callable, Optional

import torch

from .data import load_dataset, split_holdout
from .diffusion import create_diffusion
from .errors import UserError
from .finetune import group_stage, parse_groups, run_schedule
from .importance import make_importance
from .prune import PruneContext, apply_plan, prune_to_budget
from .runs import Run, atomic_write_json
from .unet import load_unet


def prune_record_path(run: Run, g: int):
    return run.path / "prune" / f"{group_stage(g)}.json"


def load_prune_record(run: Run, g: int) -> Optional[dict]:
    p = prune_record_path(run, g)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{p} is corrupt; delete it to prune group {g} again") from None


def prune_images(cfg: dict, n: int, n_eval: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images for importance estimation and disjoint ones for the loss before/after (held-out when configured)."""
    data = load_dataset(cfg, split="all")
    train, held = split_holdout(data, cfg["data"].get("holdout", 0))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    imp = train.get(perm[:n])
    if held is not None:
        ev = held.get(torch.arange(min(n_eval, len(held))))
    else:
        ev = train.get(perm[n:n + n_eval])
    if len(ev) < 2:
        raise UserError("not enough images to measure the loss before/after pruning")
    return imp, ev


def pruned_base(run: Run, g: int, device="cpu"):
    """The starting point of group g's fine-tune: base EMA, pruned by the group's plan if it has one."""
    model = load_unet(run.model("base"), device)
    rec = load_prune_record(run, g)
    if rec is not None and rec["plan"]["remove"]:
        apply_plan(model, rec["plan"])
    return model, rec


def prune_groups(run: Run, method: Optional[str] = None, groups: str = "all", seed: Optional[int] = None,
                 allocation: Optional[str] = None, device="cpu",
                 log: Callable[[str], None] = print) -> list[dict]:
    """Prune the selected groups (skipping those already pruned the same way); returns their records."""
    cfg = run.config
    pc = cfg["prune"]
    method = method or pc["method"]
    allocation = allocation or pc["allocation"]
    seed = cfg["seed"] if seed is None else seed
    if not run.model("base").exists():
        raise UserError(f"run {run.name} has no base model yet; run stage 1 (stepadapt train) first")
    sched = run_schedule(run, cfg)
    selected = parse_groups(groups, sched)
    empty = [gr.index for gr in sched.groups if gr.size == 0]
    if empty:
        log(f"empty groups (skipped): {', '.join(map(str, empty))}")
    try:
        importance = make_importance(method, seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    diffusion = create_diffusion(cfg)
    images = None
    records = []
    for g in selected:
        grp = sched.groups[g]
        old = load_prune_record(run, g)
        want = {"method": importance.describe(), "allocation": allocation, "seed": seed}
        if old is not None:
            if {k: old.get(k) for k in want} == want:
                log(f"group {g}: pruned already ({method}), skipped")
                records.append(old)
                continue
            raise UserError(f"group {g} was already pruned with {old['method']['method']} (seed {old['seed']}); "
                            "start a new run to compare methods")
        if run.ckpt(group_stage(g)).exists():
            raise UserError(f"group {g} is already fine-tuned without this plan; start a new run to prune it")
        if images is None:
            images = prune_images(cfg, pc["images"], pc["eval_images"], seed)
        ctx = PruneContext(diffusion, images[0], images[1], grp.timesteps, pc["batch_size"], pc["batches"], seed,
                           str(device))
        base = load_unet(run.model("base"), device)
        log(f"group {g}: t in [{grp.t_start}, {grp.t_end}], pruning to {grp.budget_macs / 1e9:.4f} GMACs "
            f"({grp.budget_ratio:.3f} F) with {method}")
        _, plan, report = prune_to_budget(base, importance, grp.budget_macs, ctx, allocation=allocation,
                                          tolerance=pc["tolerance"], log=log)
        rec = {"group": g, "t_start": grp.t_start, "t_end": grp.t_end, "budget_ratio": grp.budget_ratio,
               "budget_macs": grp.budget_macs, **want, "plan": plan, "report": report,
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(rec, prune_record_path(run, g))
        records.append(rec)
    return records
