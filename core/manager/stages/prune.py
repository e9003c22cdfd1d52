"""Stage 2a: prune one copy of the base per non-empty group to that group's MACs budget (Eq. 14/15; with the
LLM proxy Eq. 16/17, see ``method/proxy.py``).

Each group's result is ``RUN/prune/groupNN.json``: the method and its settings, the plan, and the report
(budget, MACs, params, loss before/after on held-out images at the group's timesteps). The pruned model is
never stored separately: base EMA + plan rebuilds it exactly, and ``finetune`` starts from it.

With a shared trunk (``finetune.trunk shared``, ``method/trunk.py``) each group prunes the trunk instead of the
base, and only units all of whose layers lie in the decoder (``trunk.decoder_only``); the record says so
(``trunk: shared``, ``trunk_step``, and ``reachable_macs``: the fewest MACs pruning the decoder alone reaches).
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import TYPE_CHECKING, Callable, Optional

from core.config import shared_trunk, single_stage
from core.errors import UserError
from core.method.schedule import nonempty_groups, parse_groups, run_schedule
from core.runs import Run, atomic_write_json, is_run_folder

if TYPE_CHECKING:
    import torch

NAME = "prune"
GROUPED = True


def pending(run) -> list:
    if run.config["prune"]["method"] == "none":
        return []
    groups = nonempty_groups(run)
    if groups is None:  # no schedule yet: every group is still to do
        return list(range(run.config["schedule"]["groups"]))
    return [g for g in groups if not run.prune_record(g).exists()]


def load_prune_record(run: Run, g: int) -> Optional[dict]:
    p = run.prune_record(g)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{p} is corrupt; delete it to prune group {g} again") from None


def prune_images(cfg: dict, n: int, n_eval: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images for importance estimation and disjoint ones for the loss before/after (held-out when configured)."""
    import torch

    from core.training.data import load_dataset, split_holdout

    data = load_dataset(cfg, split="all")
    train, held = split_holdout(data, cfg["data"].get("holdout", 0))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    imp = train.get(perm[:n])
    if held is not None:
        ev = held.get(torch.arange(min(n_eval, len(held))))
    else:
        ev = train.get(perm[n : n + n_eval])
    if len(ev) < 2:
        raise UserError("not enough images to measure the loss before/after pruning")
    return imp, ev


def pruned_base(run: Run, g: int, device="cpu"):
    """The starting point of group g's fine-tune: base EMA, pruned by the group's plan if it has one; for the
    ``scratch`` method, the plan's architecture with freshly initialised weights (seeded by the run's seed and
    the group), nothing of the base's."""
    from core.method.artifacts import load_unet
    from core.method.prune import apply_plan

    rec = load_prune_record(run, g)
    if single_stage(run.config):  # the single-stage variant: the full architecture from fresh weights
        return _fresh_weights(run, g).to(device).eval(), None
    if rec is not None and rec["method"].get("method") == "scratch":
        fresh = _fresh_weights(run, g)
        if rec["plan"]["remove"]:
            apply_plan(fresh, rec["plan"])
        return fresh.to(device).eval(), rec
    model = load_unet(start_model(run), device)
    if rec is not None and rec["plan"]["remove"]:
        apply_plan(model, rec["plan"])
    return model, rec


def start_model(run: Run):
    """The model every group is pruned from and starts its fine-tune from: stage 1's, or the shared trunk's."""
    if not shared_trunk(run.config):
        return run.model("base")
    if not run.model("trunk").exists():
        raise UserError(f"run {run.name} shares a trunk (finetune.trunk shared) that is not trained yet")
    return run.model("trunk")


def _fresh_weights(run: Run, g: int):
    """The run's architecture, initialised afresh for group g (a seed of its own: not the base's)."""
    from core.config import model_arch
    from core.model.unet import build_unet

    return build_unet(model_arch(run.config), seed=10_007 * (run.config["seed"] + 1) + g)


def prune_groups(
    run: Run,
    method: Optional[str] = None,
    groups: str = "all",
    seed: Optional[int] = None,
    allocation: Optional[str] = None,
    device="cpu",
    log: Callable[[str], None] = print,
    proxy=None,
    replay: Optional[str] = None,
    on_miss: str = "fail",
    use_cache: bool = False,
    books=None,
) -> list[dict]:
    """Prune the selected groups (skipping those already pruned the same way); returns their records.

    ``method="proxy"``: the LLM proxy with ``proxy`` (``ProxySettings``); ``replay``: another run whose
    recorded answers are replayed in order (``on_miss``: fail, or live from the first mismatch);
    with ``proxy.model`` different from the recorded one, the same prompts go to the new model and its
    calls are linked to the recorded ones (compare); ``use_cache``: reuse answers to identical requests.
    ``books``: where the proxy's calls and rounds are written (a job's journal; default the store), while
    replay and the cache read the store.
    """
    from core.method.artifacts import load_unet
    from core.method.importance import LossContext
    from core.model.diffusion import create_diffusion

    cfg = run.config
    pc = cfg["prune"]
    method = method or pc["method"]
    seed = cfg["seed"] if seed is None else seed
    if not run.model("base").exists():
        raise UserError(f"run {run.name} has no base model yet; run stage 1 (stepadapt train) first")
    sched = run_schedule(run, cfg)
    selected = parse_groups(groups, sched)
    empty = [gr.index for gr in sched.groups if gr.size == 0]
    if empty:
        log(f"empty groups (skipped): {', '.join(map(str, empty))}")
    only, trunk = None, None
    if shared_trunk(cfg):  # the shared trunk's decoder alone, pruned from the trunk (trained here if need be)
        from core.manager.stages.trunk import check_budgets, ensure_trunk
        from core.method.fields import artifact_step
        from core.method.trunk import decoder_only

        reach = check_budgets(run, sched)
        ensure_trunk(run, device, log)
        only, trunk = decoder_only, {"trunk_step": artifact_step(run.model("trunk")), "reachable_macs": reach}
    if method == "proxy":
        from core.method.proxy import ProxySettings

        proxy = proxy or ProxySettings(seed=seed)
        prune_one = _ProxyPruning(run, sched, proxy, replay, on_miss, use_cache, seed, log, books)
    elif method == "scratch":
        prune_one = _ScratchArchitecture(run, pc["scratch_from"], log)
    else:
        prune_one = _CriterionPruning(method, seed, log)
    want = {"method": prune_one.describe(), "allocation": allocation or pc["allocation"], "seed": seed}
    if trunk is not None:
        want["trunk"] = "shared"
    diffusion, images, records = create_diffusion(cfg), None, []
    for g in selected:
        old = _pruned_already(run, g, want, log)
        if old is not None:
            records.append(old)
            continue
        grp = sched.groups[g]
        images = images or prune_images(cfg, pc["images"], pc["eval_images"], seed)
        ctx = LossContext(
            diffusion, images[0], images[1], grp.timesteps, pc["batch_size"], pc["batches"], seed, str(device)
        )
        log(
            f"group {g}: t in [{grp.t_start}, {grp.t_end}], pruning to {grp.budget_macs / 1e9:.4f} GMACs "
            f"({grp.budget_ratio:.3f} F) with {method}" + (" (the shared trunk's decoder alone)" if only else "")
        )
        start = load_unet(start_model(run), device)
        plan, report = prune_one(g, grp, start, ctx, want["allocation"], pc["tolerance"], only)
        rec = {
            "group": g,
            "t_start": grp.t_start,
            "t_end": grp.t_end,
            "budget_ratio": grp.budget_ratio,
            "budget_macs": grp.budget_macs,
            **want,
            **(trunk or {}),
            "plan": plan,
            "report": report,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(rec, run.prune_record(g))
        records.append(rec)
    return records


def _pruned_already(run: Run, g: int, want: dict, log) -> Optional[dict]:
    """The group's record when it was pruned the same way; an error when pruned another way or fine-tuned."""
    old = load_prune_record(run, g)
    if old is not None:
        if {k: old.get(k) for k in want} == want:
            log(f"group {g}: pruned already ({want['method']['method']}), skipped")
            return old
        raise UserError(
            f"group {g} was already pruned with {old['method']['method']} (seed {old['seed']}); "
            "start a new run to compare methods"
        )
    if run.ckpt(run.group_stage(g)).exists():
        raise UserError(f"group {g} is already fine-tuned without this plan; start a new run to prune it")
    return None


class _CriterionPruning:
    """Eq. 15: an importance criterion P picks theta'; the lowest-scoring positions go until the MACs fit f."""

    def __init__(self, method: str, seed: int, log):
        from core.method.importance import make_importance

        try:
            self.importance = make_importance(method, seed)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.log = log

    def describe(self) -> dict:
        return self.importance.describe()

    def __call__(self, g, grp, base, ctx, allocation, tolerance, only=None):
        from core.method.prune import prune_to_budget

        _, plan, report = prune_to_budget(
            base,
            self.importance,
            grp.budget_macs,
            ctx,
            allocation=allocation,
            tolerance=tolerance,
            log=self.log,
            only=only,
        )
        return plan, report


class _ScratchArchitecture:
    """Table 4's "scratch training": another run's pruned architecture for the same group, whose weights the
    fine-tune re-initialises (``pruned_base``): what pruning buys over training that architecture from scratch."""

    def __init__(self, run: Run, source: str, log):
        if not source:
            raise UserError("prune.method scratch needs prune.scratch_from (a run whose groups were pruned)")
        self.source = Run(run.path.parent / source)
        if not is_run_folder(self.source.path):
            raise UserError(f"prune.scratch_from: run {source!r} not found in {run.path.parent}")
        self.log = log

    def describe(self) -> dict:
        return {"method": "scratch", "from": self.source.name}

    def __call__(self, g, grp, base, ctx, allocation, tolerance, only=None):
        import copy

        from core.method.prune import Pruner, apply_plan

        src = load_prune_record(self.source, g)
        if src is None:
            raise UserError(f"run {self.source.name} has no pruned model for group {g} yet (prune it first)")
        if (src["t_start"], src["t_end"]) != (grp.t_start, grp.t_end):
            raise UserError(
                f"run {self.source.name}'s group {g} covers t {src['t_start']}-{src['t_end']}, this "
                f"run's {grp.t_start}-{grp.t_end}: use runs with the same schedule"
            )
        plan = src["plan"]
        pruned = copy.deepcopy(base)
        if plan["remove"]:
            apply_plan(pruned, plan)
        report = {
            **self.describe(),
            "reinitialised": True,
            "source_plan_hash": src["report"].get("plan_hash"),
            **Pruner(base).report(pruned, plan, grp.budget_macs, tolerance),
        }
        self.log(
            f"group {g}: {self.source.name}'s architecture ({report['macs'] / 1e9:.4f} GMACs), weights to be "
            "initialised afresh"
        )
        return plan, report


class _ProxyPruning:
    """Eq. 16/17: the LLM proxy with its memory bank (live, replayed, cached or compared)."""

    def __init__(self, run: Run, sched, settings, replay, on_miss, use_cache, seed: int, log, books=None):
        from core.store import open_store

        self.run, self.sched, self.settings, self.replay = run, sched, settings, replay
        self.on_miss, self.use_cache, self.seed, self.log = on_miss, use_cache, seed, log
        reads = replay is not None or use_cache
        self.store = open_store(run.path.parent) if reads or books is None else None  # replay and cache read it
        self.books = books or self.store
        if replay is not None and not self.store.calls(replay):
            raise UserError(f"run {replay!r} has no recorded proxy calls in {self.store.path}")

    def describe(self) -> dict:
        return self.settings.describe()

    def __call__(self, g, grp, base, ctx, allocation, tolerance, only=None):
        return _proxy_group(
            self.run,
            g,
            grp,
            self.sched,
            base,
            ctx,
            self.settings,
            self.store,
            self.books,
            self.replay,
            self.on_miss,
            self.use_cache,
            allocation,
            tolerance,
            self.seed,
            self.log,
            only,
        )


def _proxy_group(
    run,
    g,
    grp,
    sched,
    base,
    ctx,
    settings,
    store,
    books,
    replay,
    on_miss,
    use_cache,
    allocation,
    tolerance,
    seed,
    log,
    only=None,
):
    from core.method.importance import make_importance
    from core.method.proxy import ProxyRun, Replay
    from core.method.prune import Pruner, held_out_loss, prune_to_budget

    pr = Pruner(base, only)
    mode, rep = "live", None
    if replay is not None:
        src = load_prune_record(Run(run.path.parent / replay), g) if (run.path.parent / replay).is_dir() else None
        session = (src or {}).get("report", {}).get("proxy", {}).get("session") or store.last_session(replay, g)
        calls = store.calls(replay, g, session) if session else []
        if not calls:
            raise UserError(f"run {replay!r} has no recorded proxy calls for group {g}")
        rep = Replay(calls, replay)
        mode = "replay" if calls[0]["model_asked"] == settings.model else "compare"
    info_group = {
        "t_start": grp.t_start,
        "t_end": grp.t_end,
        "snr_min": grp.snr_min,
        "snr_max": grp.snr_max,
        "num_timesteps": sched.num_timesteps,
    }
    search = ProxyRun(
        pr,
        grp.budget_macs,
        ctx,
        settings,
        books,
        run.name,
        g,
        info_group,
        mode=mode,
        replay=rep,
        on_miss=on_miss,
        use_cache=use_cache,
        log=log,
        cache=store,
    )
    plan, info = search.search()
    if plan is None:
        log(f"group {g}: no valid proposal in {settings.rounds} rounds; falling back to {settings.fallback}")
        _, plan, fb = prune_to_budget(
            base,
            make_importance(settings.fallback, seed),
            grp.budget_macs,
            ctx,
            allocation=allocation,
            tolerance=tolerance,
            log=log,
            only=only,
        )
        info["fallback"] = settings.fallback
    pruned = pr.apply(plan)
    report = {
        **settings.describe(),
        "allocation": "proxy",
        **pr.report(pruned, plan, grp.budget_macs, tolerance),
        "proxy": info,
        "loss_before": info["base_loss"],
        "loss_after": held_out_loss(pruned, ctx),
    }
    return plan, report


def recorded_proxy_settings(runs_dir, store, src: str) -> dict:
    """What run ``src``'s proxy search was asked with: model, rounds, retries, temperature, seed and the prompt
    templates' hash, from its prune records; without them (an imported recording), from its calls."""
    from core.runs import read_json

    for path in sorted((runs_dir / src / "prune").glob("group*.json")):
        m = (read_json(path) or {}).get("method") or {}
        if m.get("method") == "proxy":
            return {
                "model": m.get("llm"),
                "rounds": m.get("rounds"),
                "retries": m.get("retries"),
                "temperature": m.get("temperature"),
                "seed": m.get("seed"),
                "prompts": m.get("prompts"),
                "proposals": m.get("proposals", 1),
            }
    calls = store.calls(src)
    if not calls:
        return {}
    params = calls[0]["params"] or {}
    return {
        "model": calls[0]["model_asked"],
        "temperature": params.get("temperature"),
        "seed": params.get("seed"),
        "rounds": max(c["round"] for c in calls) + 1,
    }


def proxy_settings(cfg: dict):
    """The proxy as the run's config says (``prune.llm``, ``prune.api_base``, ``prune.rounds``, seed)."""
    from core.method.proxy import ProxySettings

    p = cfg["prune"]
    return ProxySettings(
        model=p["llm"],
        api_base=p["api_base"] or None,
        rounds=p["rounds"],
        seed=cfg["seed"],
        proposals=p.get("proposals", 1),
    )


def work(ctx) -> None:
    cfg = ctx.run.config
    method = cfg["prune"]["method"]
    ctx.heartbeat.set(message=f"pruning with {method}")
    prune_groups(
        ctx.run,
        method,
        str(ctx.group),
        device=ctx.device,
        log=ctx.log_status,
        proxy=proxy_settings(cfg) if method == "proxy" else None,
        books=ctx.store,
    )
    ctx.produced(ctx.run.prune_record(ctx.group), "plan")
