"""Structural (channel) pruning of the UNet to a MACs budget (paper Eq. 14/15).

Eq. 14: U*_{theta - theta'} = argmin_{theta' in theta} Loss(U_{theta - theta'}(T, D, S))
        s.t. FLOPs(U_{theta - theta'}) <= f
Eq. 15: theta' = P(theta, T, D, S), theta' a subset of theta, s.t. FLOPs(U_{theta - theta'}) <= f

theta' is the set of removed positions (a *plan*), T the group's timesteps, D the data, S the settings, f the
group's budget (MACs, the paper's FLOPs), and P an importance criterion (``importance.py``): the positions
with the lowest scores go, allocated over the units (``units.py``) until the MACs fit f
(``prune_to_budget``: bisection on the removal level, then a greedy refill up to the budget).

Plans. A plan says which positions of which unit are removed (``{"remove": {unit: [positions]}}``); it is
JSON, applies deterministically to a fresh copy of the base (``apply_plan``), and base + plan rebuilds the
pruned architecture (``build_pruned``). Every method (random, magnitude, taylor, diff, and the LLM proxy)
produces plans.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from core.errors import UserError
from core.method.units import Unit, build_graph, example_inputs, prune_heads, root_pruner, units_of
from core.model import unet as U

PLAN_VERSION = 1


# --------------------------------------------------------------------------- plans


def validate_plan(plan: dict, units: list[Unit]) -> dict:
    """Check a plan against the units of the base; returns it normalised (sorted positions). Raises ValueError."""
    if not isinstance(plan, dict) or not isinstance(plan.get("remove"), dict):
        raise ValueError("a plan is {'version': 1, 'remove': {unit: [positions]}}")
    by_name = {u.name: u for u in units}
    out = {}
    for name, pos in plan["remove"].items():
        if name not in by_name:
            raise ValueError(f"unknown unit {name!r}")
        u = by_name[name]
        if not isinstance(pos, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pos):
            raise ValueError(f"{name}: positions must be a list of integers")
        s = sorted(set(pos))
        if len(s) != len(pos):
            raise ValueError(f"{name}: repeated positions")
        if s and (s[0] < 0 or s[-1] >= u.size):
            raise ValueError(f"{name}: positions must be in [0, {u.size})")
        bs = u.size // u.blocks
        counts = [0] * u.blocks
        for p in s:
            counts[p // bs] += 1
        if len(set(counts)) > 1:
            raise ValueError(
                f"{name}: must remove the same number of positions from each of its {u.blocks} GroupNorm blocks of {bs}"
            )
        if counts[0] >= bs:
            raise ValueError(f"{name}: cannot remove every position")
        if s:
            out[name] = s
    return {"version": PLAN_VERSION, "remove": dict(sorted(out.items()))}


def apply_plan(model: U.UNet, plan: dict, units: Optional[list[Unit]] = None) -> U.UNet:
    """Prune ``model`` in place as ``plan`` says (units in name order: deterministic). Returns the model."""
    dg = build_graph(model)
    units = units or units_of(model, dg)
    try:
        plan = validate_plan(plan, units)
    except ValueError as e:
        raise UserError(f"the plan does not fit this model: {e}") from None
    kinds = {u.name: u.kind for u in units}
    for name, positions in plan["remove"].items():
        if kinds[name] == "heads":
            prune_heads(model.get_submodule(name.split(":", 1)[1]), positions)
        else:
            root = model.get_submodule(name)
            group = dg.get_pruning_group(root, root_pruner(root), positions)
            group.prune()
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and m.num_channels % m.num_groups:
            raise AssertionError(f"GroupNorm left invalid: {m.num_channels} channels in {m.num_groups} groups")
    return model


def plan_hash(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def build_pruned(arch: dict, plan: Optional[dict], state: Optional[dict] = None) -> U.UNet:
    """The architecture of ``arch`` pruned by ``plan`` (weights from ``state`` when given)."""
    model = U.build_unet(arch, seed=0)
    if plan and plan.get("remove"):
        apply_plan(model, plan)
    if state is not None:
        model.load_state_dict(state)
    return model


def removal_counts(plan: dict) -> dict[str, int]:
    return {k: len(v) for k, v in plan.get("remove", {}).items()}


# --------------------------------------------------------------------------- scores -> plans


def plan_from_counts(units: list[Unit], scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict:
    """Remove ``counts[unit]`` positions of each unit: the lowest-scoring ones, the same number per block."""
    remove = {}
    for u in units:
        n = int(counts.get(u.name, 0))
        per_block = min(n // u.blocks, u.size // u.blocks - 1)
        if per_block <= 0:
            continue
        bs = u.size // u.blocks
        s = scores[u.name].detach().float().cpu()
        chosen = []
        for b in range(u.blocks):
            blk = s[b * bs : (b + 1) * bs]
            # lowest scores go first; ties broken by position so plans are deterministic
            order = sorted(range(bs), key=lambda j: (float(blk[j]), j))
            chosen.extend(b * bs + j for j in order[:per_block])
        remove[u.name] = sorted(chosen)
    return {"version": PLAN_VERSION, "remove": dict(sorted(remove.items()))}


def counts_for_ratio(units: list[Unit], ratio: float | dict[str, float], nearest: bool = False) -> dict[str, int]:
    """Positions to remove per unit for a pruning ratio (one for all, or per unit), in whole blocks:
    rounded down, or to the nearest block with ``nearest``."""
    out = {}
    for u in units:
        r = ratio.get(u.name, 0.0) if isinstance(ratio, dict) else ratio
        r = min(max(float(r), 0.0), 1.0)
        x = r * u.size / u.blocks
        per_block = int(math.floor(x + 0.5)) if nearest else int(math.floor(x + 1e-9))
        out[u.name] = min(per_block, u.size // u.blocks - 1) * u.blocks
    return out


# --------------------------------------------------------------------------- reaching a budget


class MacModel:
    """MACs of ``base`` pruned by removal counts, from channel counts alone (no model is built).

    Uses the formulae of torch-pruning's counter: a conv costs in*out*k*k*HW (+ out*HW bias), a linear
    in*out (+ out); GroupNorms are not counted (the counter skips GroupNorm subclasses such as IDDPM's and
    our GroupNorm32, which is how the paper's 8.14 G comes out); the attention matmuls,
    2*HW*HW*heads*head_dim, are kept apart.
    The search evaluates thousands of candidate plans with it; the final plan is also counted for real.
    """

    def __init__(self, model: U.UNet, units: list[Unit], dg):
        names = {m: n for n, m in model.named_modules()}
        hw: dict[str, int] = {}
        hooks = [
            m.register_forward_hook(lambda mod, i, o, n=n: hw.__setitem__(n, o.shape[-1] * o.shape[-2]))
            for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.GroupNorm, U.AttentionBlock))
        ]
        was = model.training
        model.eval()
        with torch.no_grad():
            model(*example_inputs(model))
        model.train(was)
        for h in hooks:
            h.remove()
        self.layers = {}
        for n, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                self.layers[n] = [
                    "conv",
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size[0] * m.kernel_size[1] * hw[n],
                    hw[n] if m.bias is not None else 0,
                ]
            elif isinstance(m, nn.Linear):
                self.layers[n] = ["conv", m.in_features, m.out_features, 1, 1 if m.bias is not None else 0]
        self.attn = {
            n: [hw[n], m.num_heads, m.proj.in_channels // m.num_heads]
            for n, m in model.named_modules()
            if isinstance(m, U.AttentionBlock)
        }
        self.effects: dict[str, list] = {}
        for u in units:
            # (layer, dim) -> positions lost per removed position of the unit
            eff: dict[tuple, int] = {}

            def add(layer, dim, mult=1):
                eff[(layer, dim)] = eff.get((layer, dim), 0) + mult

            if u.kind == "heads":
                blk = u.name.split(":", 1)[1]
                heads = self.attn[blk][1]
                add(f"{blk}.qkv", "out", 3 * heads)
                add(f"{blk}.proj", "in", heads)
                add(blk, "attn")
            else:
                root = model.get_submodule(u.name)
                group = dg.get_pruning_group(root, root_pruner(root), list(range(u.size)))
                for dep, idxs in group:
                    mod = dep.target.module
                    mult = max(1, len(idxs) // u.size)  # a concat of two parts of the stream: 2
                    if isinstance(mod, U.AttentionBlock):
                        n = names[mod]
                        add(f"{n}.qkv", "in", mult)
                        add(f"{n}.proj", "out", mult)
                    elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                        add(names[mod], "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in", mult)
            self.effects[u.name] = sorted((layer, dim, mult) for (layer, dim), mult in eff.items())

    def count(self, counts: dict[str, int]) -> dict:
        """``{"macs", "attn_macs"}`` after removing ``counts[unit]`` positions of each unit."""
        cut_in, cut_out, cut_attn = {}, {}, {}
        for name, n in counts.items():
            for layer, dim, mult in self.effects.get(name, ()):
                if dim == "attn":
                    cut_attn[layer] = cut_attn.get(layer, 0) + n
                if dim in ("in", "c"):
                    cut_in[layer] = cut_in.get(layer, 0) + n * mult
                if dim in ("out", "c"):
                    cut_out[layer] = cut_out.get(layer, 0) + n * mult
        macs = 0
        for n, (kind, cin, cout, per, bias) in self.layers.items():
            i, o = cin - cut_in.get(n, 0), cout - cut_out.get(n, 0)
            macs += i * o * per + o * bias
        attn = sum(2 * hw * hw * heads * (dh - cut_attn.get(n, 0)) for n, (hw, heads, dh) in self.attn.items())
        return {"macs": int(macs), "attn_macs": int(attn)}

    def unit_share(self, unit: str) -> float:
        """Share of the model's MACs in layers this unit touches."""
        touched = {layer for layer, dim, _ in self.effects.get(unit, ()) if dim != "attn"}
        total = self.count({})["macs"]
        part = sum(i * o * per + o * bias for n, (kind, i, o, per, bias) in self.layers.items() if n in touched)
        return part / total


def measure(model: U.UNet) -> dict:
    from core.model.macs import count

    return count(model, model.image_size, model.in_channels)


def fit_to_budget(
    macs_of: Callable[[dict], int],
    units: list[Unit],
    budget_macs: float,
    shape: Callable[[float], dict[str, int]],
    iters: int = 40,
) -> tuple[dict[str, int], int, dict]:
    """The largest pruning level s in [0, 1] whose removal counts ``shape(s)`` fit the budget.

    ``shape(s)`` maps a level to removal counts per unit, monotone in s: a uniform ratio for the
    baselines, a threshold on normalised scores for global allocation, scaled per-unit ratios for the
    proxy. ``macs_of(counts)`` is the MAC model. Returns (counts, macs, search record).
    """
    full = macs_of({})
    if full <= budget_macs:
        return {}, full, {"level": 0.0, "evaluations": 1}
    evals = 0

    def at(level):
        nonlocal evals
        evals += 1
        c = shape(level)
        return c, macs_of(c)

    lo, hi = 0.0, 1.0
    best = at(hi)
    if best[1] > budget_macs:
        raise UserError(
            f"budget {budget_macs / 1e9:.4f} GMACs is below what pruning can reach "
            f"({best[1] / 1e9:.4f} GMACs with every unit at its minimum)"
        )
    for _ in range(iters):
        mid = (lo + hi) / 2
        c, m = at(mid)
        if m <= budget_macs:
            hi, best = mid, (c, m)
        else:
            lo = mid
    return best[0], best[1], {"level": hi, "evaluations": evals}


def greedy_refill(
    macs_of: Callable[[dict], int], units: list[Unit], scores: dict, counts: dict[str, int], budget_macs: float
) -> tuple[dict[str, int], int]:
    """Give back whole blocks, most important first, while the budget allows (block granularity can leave
    the level search well under budget)."""
    counts = dict(counts)
    macs = macs_of(counts)
    by_name = {u.name: u for u in units}
    # per unit: its blocks' scores sorted ascending, as rows of a [blocks, block size] tensor
    sorted_blocks = {u.name: scores[u.name].float().reshape(u.blocks, -1).sort(dim=1).values for u in units}

    def next_back_value(n):  # mean score of the positions a unit would get back next
        return float(sorted_blocks[n][:, counts[n] // by_name[n].blocks - 1].mean())

    while True:
        candidates = sorted((n for n, c in counts.items() if c > 0), key=lambda n: -next_back_value(n))
        for n in candidates:
            trial = dict(counts)
            trial[n] -= by_name[n].blocks
            m = macs_of(trial)
            if m <= budget_macs:
                counts, macs = trial, m
                break
        else:
            return counts, macs


@torch.no_grad()
def held_out_loss(model, ctx, batches: int = 4, seed: int = 12345) -> float:
    """Hybrid loss on fixed batches at the group's timesteps (fixed images, noise and timesteps)."""
    was = model.training
    model.eval()
    c = ctx.held_out(batches, seed)
    ts = torch.as_tensor(ctx.timesteps, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    vals = []
    for b in range(batches):
        t = ts[torch.randint(len(ts), (ctx.batch_size,), generator=g)]
        vals.append(float(c.loss_at(model, t, b, key="mse")))
    model.train(was)
    return sum(vals) / len(vals)


class Pruner:
    """The units, graph and MAC model of one base model: score once, then plan for any budget. ``only``: the
    units that may be pruned (e.g. ``trunk.decoder_only``: a shared trunk's decoder); default all."""

    def __init__(self, base: U.UNet, only: Optional[Callable[[Unit], bool]] = None):
        self.base = copy.deepcopy(base).eval()
        self.dg = build_graph(self.base)
        self.units = [u for u in units_of(self.base, self.dg) if only is None or only(u)]
        self.mac_model = MacModel(self.base, self.units, self.dg)
        self.full = measure(self.base)

    def macs_of(self, counts: dict[str, int]) -> int:
        return self.mac_model.count(counts)["macs"]

    def scores(self, importance, ctx=None) -> dict:
        return importance.scores(self.base, self.units, self.dg, ctx)

    def shape(self, scores: dict, allocation: str) -> Callable[[float], dict[str, int]]:
        """Pruning level -> removal counts: ``uniform`` (one ratio for every unit) or ``global`` (one
        threshold on unit-normalised scores, so units with unimportant positions lose more)."""
        units = self.units
        if allocation == "uniform":
            return lambda s: counts_for_ratio(units, s)
        if allocation == "global":
            norm = {n: v.float() / v.float().mean().clamp(min=1e-12) for n, v in scores.items()}
            flat = torch.cat([v.flatten() for v in norm.values()]).sort().values

            def shape(s: float) -> dict[str, int]:
                if s <= 0:
                    return {}
                thr = flat[min(int(s * (len(flat) - 1)), len(flat) - 1)]
                return counts_for_ratio(units, {u.name: float((norm[u.name] <= thr).sum()) / u.size for u in units})

            return shape
        raise ValueError(f"unknown allocation {allocation!r} (uniform or global)")

    def plan_for_budget(
        self,
        scores: dict,
        budget_macs: float,
        shape: Callable[[float], dict[str, int]],
        tolerance: float = 0.03,
        log: Callable[[str], None] = lambda s: None,
    ):
        """(plan, predicted MACs, search record) for the budget; see ``fit_to_budget`` and ``greedy_refill``."""
        counts, macs, search = fit_to_budget(self.macs_of, self.units, budget_macs, shape)
        if macs < budget_macs * (1 - tolerance):
            log(f"level search landed {100 * (1 - macs / budget_macs):.1f}% under budget: giving back blocks")
            counts, macs = greedy_refill(self.macs_of, self.units, scores, counts, budget_macs)
            search["refilled"] = True
        return plan_from_counts(self.units, scores, counts), macs, search

    def apply(self, plan: dict) -> U.UNet:
        return apply_plan(copy.deepcopy(self.base), plan, self.units)

    def report(self, pruned: U.UNet, plan: dict, budget_macs: float, tolerance: float) -> dict:
        after = measure(pruned)
        return {
            "budget_macs": int(budget_macs),
            "macs": after["macs"],
            "attn_macs": after["attn_macs"],
            "params": after["params"],
            "base_macs": self.full["macs"],
            "base_params": self.full["params"],
            "macs_ratio": after["macs"] / self.full["macs"],
            "budget_gap": 1 - after["macs"] / budget_macs,
            "within_tolerance": budget_macs * (1 - tolerance) <= after["macs"] <= budget_macs,
            "plan_hash": plan_hash(plan),
            "removed": removal_counts(plan),
        }


def prune_to_budget(
    base: U.UNet,
    importance,
    budget_macs: float,
    ctx=None,
    *,
    allocation: str = "uniform",
    tolerance: float = 0.03,
    log: Callable[[str], None] = lambda s: None,
    only: Optional[Callable[[Unit], bool]] = None,
):
    """Prune a copy of ``base`` to at most ``budget_macs`` MACs and no more than ``tolerance`` under it.

    Returns (pruned model, plan, report). ``allocation``: ``uniform`` or ``global`` (see ``Pruner.shape``).
    ``ctx`` (``importance.LossContext``) supplies the data and timesteps for gradient-based criteria and for the
    held-out loss before and after. ``only``: the units that may be pruned (``Pruner``).
    """
    pr = Pruner(base, only)
    scores = pr.scores(importance, ctx)
    plan, macs, search = pr.plan_for_budget(scores, budget_macs, pr.shape(scores, allocation), tolerance, log)
    pruned = pr.apply(plan)
    report = {
        **importance.describe(),
        "allocation": allocation,
        **pr.report(pruned, plan, budget_macs, tolerance),
        "search": search,
    }
    if report["macs"] != macs:
        raise AssertionError(f"MAC model {macs} disagrees with the counter {report['macs']}")
    if getattr(importance, "info", None):
        report["importance_info"] = importance.info
    if ctx is not None:
        report["loss_before"] = held_out_loss(pr.base, ctx)
        report["loss_after"] = held_out_loss(pruned, ctx)
    return pruned, plan, report
