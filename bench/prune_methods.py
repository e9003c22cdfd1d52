"""Pruning methods at one budget (the paper's Table 4 comparison, scaled down to a CPU).

Methods: random, magnitude, lamp, taylor, diff, and proxy (the offline ``stepadapt/local-search`` policy
unless ``--llm`` names a model; its rounds, wall time and the wall time of a replay of its answers are
reported too).

Trains one `tiny` base model on the bundled digits, then for every method and seed prunes a copy to
BUDGET x F for one timestep group, and measures the held-out eps-MSE at that group's timesteps right
after pruning and after a short fine-tune on the group's timesteps.

    python bench/prune_methods.py [--base-steps 1500] [--budget 0.6] [--group 3] [--ft-steps 100] [--seeds 0,1,2]

Writes bench/results/prune_methods.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import config as C  # noqa: E402
from core.evaluation.losses import region_losses  # noqa: E402
from core.manager.stages.prune import prune_images  # noqa: E402
from core.method.artifacts import load_unet
from core.method.importance import (
    LossContext,  # noqa: E402
    make_importance,  # noqa: E402
)
from core.method.prune import prune_to_budget  # noqa: E402
from core.method.schedule import run_schedule  # noqa: E402
from core.model.diffusion import create_diffusion  # noqa: E402
from core.model.unet import build_unet  # noqa: E402
from core.names import IMPORTANCE_METHODS as METHODS  # noqa: E402
from core.runs import create_run  # noqa: E402
from core.training.data import load_dataset  # noqa: E402
from core.training.loop import TrainSpec, train  # noqa: E402


def spec(run, name, cfg, steps, lr, ema, seed, timesteps=None, extra=None):
    t = cfg["train"]
    return TrainSpec(
        name=name,
        ckpt=run.ckpt(name),
        model_out=run.model(name),
        metrics=run.metrics(name),
        steps=steps,
        batch_size=t["batch_size"],
        lr=lr,
        ema_decay=ema,
        seed=seed,
        log_every=50,
        ckpt_every=10**9,
        timesteps=timesteps,
        extra=extra or {"arch": cfg["model"]},
    )


def run_proxy(base, budget, ctx, grp, sched, seed, args, work):
    """One live proxy search, then a replay of its recorded answers (timed) that must give the same plan."""
    from core.method.proxy import ProxyRun, ProxySettings, Replay
    from core.method.prune import Pruner, held_out_loss
    from core.store import open_store

    store = open_store(work)
    settings = ProxySettings(rounds=args.rounds, seed=seed)
    if args.llm:
        settings.model = args.llm
    info = {
        "t_start": grp.t_start,
        "t_end": grp.t_end,
        "snr_min": grp.snr_min,
        "snr_max": grp.snr_max,
        "num_timesteps": sched.num_timesteps,
    }
    pr = Pruner(base)
    live = ProxyRun(pr, budget, ctx, settings, store, f"bench-{seed}", grp.index, info, log=lambda s: None)
    plan, pinfo = live.search()
    t0 = time.time()
    calls = store.calls(f"bench-{seed}", grp.index, pinfo["session"])
    rep_run = ProxyRun(
        Pruner(base),
        budget,
        ctx,
        settings,
        store,
        f"bench-{seed}-replay",
        grp.index,
        info,
        mode="replay",
        replay=Replay(calls, f"bench-{seed}"),
        log=lambda s: None,
    )
    plan2, _ = rep_run.search()
    replay_s = time.time() - t0
    pruned = pr.apply(plan)
    rep = {**pr.report(pruned, plan, budget, 0.03), "loss_after": held_out_loss(pruned, ctx)}
    extra = {
        "accepted_rounds": sum(1 for m in pinfo["memory"] if m.get("accepted")),
        "calls": len(calls),
        "replay_s": replay_s,
        "replay_identical": plan2 == plan,
        "winner_round": pinfo.get("winner_round"),
    }
    return pruned, plan, rep, extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--base-steps", type=int, default=1500)
    ap.add_argument("--budget", type=float, default=0.6, help="MACs budget as a fraction of F")
    ap.add_argument("--group", type=int, default=3, help="timestep group whose timesteps are used")
    ap.add_argument("--ft-steps", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; proxy too")
    ap.add_argument("--holdout", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5, help="proxy rounds")
    ap.add_argument("--llm", default=None, help="proxy model (default: the offline local search)")
    ap.add_argument("--name", default="prune_methods", help="output file name in bench/results")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    t0 = time.time()
    cfg = C.resolve(args.preset, None, [*args.overrides, f"data.holdout={args.holdout}"])
    data, held = load_dataset(cfg), load_dataset(cfg, split="holdout")
    diffusion = create_diffusion(cfg)
    work = Path(tempfile.mkdtemp(prefix="stepadapt-bench-prune-"))
    run = create_run(cfg, "base", work)
    train(
        spec(run, "base", cfg, args.base_steps, cfg["train"]["lr"], cfg["train"]["ema_decay"], cfg["seed"]),
        build_unet(cfg["model"], seed=cfg["seed"]),
        diffusion,
        data,
        progress=False,
    )
    base = load_unet(run.model("base"))
    sched = run_schedule(run)
    grp = sched.groups[args.group]
    if grp.size == 0:
        raise SystemExit(f"group {args.group} is empty")
    budget = args.budget * sched.full_macs
    eval_images = held.get(torch.arange(len(held)))
    region = {args.group: grp.timesteps}
    base_loss = region_losses(base, diffusion, eval_images, region)[args.group]
    print(f"base trained ({args.base_steps} steps): held-out loss at group {args.group} = {base_loss:.5f}", flush=True)
    rows = []
    pc = cfg["prune"]
    for method in methods:
        for seed in seeds:
            imgs, ev = prune_images(cfg, pc["images"], pc["eval_images"], seed)
            ctx = LossContext(diffusion, imgs, ev, grp.timesteps, pc["batch_size"], pc["batches"], seed)
            tp0 = time.time()
            extra = {}
            if method == "proxy":
                pruned, plan, rep, extra = run_proxy(base, budget, ctx, grp, sched, seed, args, work)
            else:
                pruned, plan, rep = prune_to_budget(base, make_importance(method, seed), budget, ctx)
            prune_s = time.time() - tp0
            after_prune = region_losses(pruned, diffusion, eval_images, region)[args.group]
            name = f"{method}-{seed}"
            f = cfg["finetune"]
            train(
                spec(
                    run,
                    name,
                    cfg,
                    args.ft_steps,
                    f["lr"],
                    f["ema_decay"],
                    seed,
                    grp.timesteps,
                    {"arch": cfg["model"], "plan": plan},
                ),
                copy.deepcopy(pruned).train(),
                diffusion,
                data,
                progress=False,
            )
            after_ft = region_losses(load_unet(run.model(name)), diffusion, eval_images, region)[args.group]
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "macs_ratio": rep["macs_ratio"],
                    "params": rep["params"],
                    "loss_after_prune": after_prune,
                    "loss_after_finetune": after_ft,
                    "prune_s": prune_s,
                    **extra,
                }
            )
            print(
                f"{method:9s} seed {seed}: MACs {rep['macs_ratio']:.3f} F, after prune {after_prune:.5f}, "
                f"after {args.ft_steps} fine-tune steps {after_ft:.5f} ({prune_s:.1f} s to prune)",
                flush=True,
            )

    def ms(vals):
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    summary = {
        m: {
            k: ms([r[k] for r in rows if r["method"] == m])
            for k in ("loss_after_prune", "loss_after_finetune", "macs_ratio", "prune_s")
        }
        for m in methods
    }
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "bench": "prune_methods",
        "preset": args.preset,
        "base_steps": args.base_steps,
        "budget": args.budget,
        "group": args.group,
        "group_t": [grp.t_start, grp.t_end],
        "ft_steps": args.ft_steps,
        "seeds": seeds,
        "base_loss": base_loss,
        "commit": sha,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "elapsed_s": round(time.time() - t0, 1),
        "rows": rows,
        "summary": summary,
    }
    md = [
        f"Pruning methods at {args.budget} F on `{args.preset}` (digits), group {args.group} "
        f"(t {grp.t_start}-{grp.t_end}); base {args.base_steps} steps, held-out eps-MSE {base_loss:.5f}; "
        f"mean ± std over seeds {args.seeds}; commit {sha}, {result['machine']}, {result['threads']} threads.",
        "",
        "| method | MACs / F | loss after pruning | after " + f"{args.ft_steps} fine-tune steps | time to prune (s) |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        s = summary[m]
        md.append(
            f"| {m} | {s['macs_ratio'][0]:.3f} | {s['loss_after_prune'][0]:.4f} ± {s['loss_after_prune'][1]:.4f} "
            f"| {s['loss_after_finetune'][0]:.4f} ± {s['loss_after_finetune'][1]:.4f} | {s['prune_s'][0]:.1f} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proxy_rows = [r for r in rows if r["method"] == "proxy"]
    if proxy_rows:
        md += [
            "",
            f"Proxy: {args.llm or 'stepadapt/local-search'}, {args.rounds} rounds; mean accepted rounds "
            f"{statistics.mean(r['accepted_rounds'] for r in proxy_rows):.1f}, LLM calls "
            f"{statistics.mean(r['calls'] for r in proxy_rows):.1f}; live search "
            f"{statistics.mean(r['prune_s'] for r in proxy_rows):.1f} s, replay of the same answers "
            f"{statistics.mean(r['replay_s'] for r in proxy_rows):.1f} s (identical plans: "
            f"{all(r['replay_identical'] for r in proxy_rows)}).",
        ]
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
