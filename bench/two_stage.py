"""Two-stage training at equal total steps (the paper's Table 2 experiment, scaled down to a CPU).

(a) one base model trained for TOTAL steps on all timesteps;
(b) the same base trained for BASE steps, then each non-empty group's copy fine-tuned on its own
    timesteps, TOTAL - BASE steps shared equally among the groups.
(a) and (b) share their first BASE steps (same seed, same batches). Both are evaluated by the eps-MSE
(L_simple) on held-out images, per timestep group and timestep-weighted over all T, for several seeds.

    python bench/two_stage.py [--preset tiny] [--total 1500] [--base 1000] [--seeds 0,1,2]

Writes bench/results/two_stage.json and two_stage.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
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
from core.manager.stages.base import base_spec  # noqa: E402
from core.manager.stages.finetune import finetune_groups  # noqa: E402
from core.method.artifacts import (
    load_progressive,  # noqa: E402
    load_unet,
)
from core.method.schedule import run_schedule  # noqa: E402
from core.model.diffusion import create_diffusion  # noqa: E402
from core.model.unet import build_unet  # noqa: E402
from core.runs import Run, create_run  # noqa: E402
from core.training.data import load_dataset  # noqa: E402
from core.training.loop import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--total", type=int, default=1500, help="total training steps of each arm")
    ap.add_argument("--base", type=int, default=1000, help="stage-1 steps of arm (b)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--holdout", type=int, default=500)
    ap.add_argument("--draws", type=int, default=4, help="noise draws per held-out image and group")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="stepadapt-bench-"))
    rows, t0 = [], time.time()
    for seed in seeds:
        cfg = C.resolve(args.preset, None, [*args.overrides, f"seed={seed}", f"data.holdout={args.holdout}"])
        data, held = load_dataset(cfg), load_dataset(cfg, split="holdout")
        diffusion = create_diffusion(cfg)
        a = create_run(cfg, f"a-{seed}", work)
        model = build_unet(cfg["model"], seed=seed)
        train(base_spec(a, cfg, args.base, ckpt_every=10**9), model, diffusion, data, progress=False)
        b = Run(work / f"b-{seed}")
        shutil.copytree(a.path, b.path)
        train(
            base_spec(a, cfg, args.total, ckpt_every=10**9),
            build_unet(cfg["model"]),
            diffusion,
            data,
            resume=True,
            progress=False,
        )
        sched = run_schedule(b)
        per_group = (args.total - args.base) // len(sched.nonempty)
        finetune_groups(b, "all", per_group, progress=False, log=lambda s: None)
        regions = {g.index: g.timesteps for g in sched.nonempty}
        images = held.get(torch.arange(len(held)))
        evals = {
            "base_at_split": region_losses(load_unet(b.model("base")), diffusion, images, regions, draws=args.draws),
            "a_base_total": region_losses(load_unet(a.model("base")), diffusion, images, regions, draws=args.draws),
            "b_two_stage": region_losses(
                load_progressive(b.model("progressive")), diffusion, images, regions, draws=args.draws
            ),
        }
        T = sched.num_timesteps
        for arm, losses in evals.items():
            overall = sum(losses[g] * len(ts) / T for g, ts in regions.items())
            rows.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "overall": overall,
                    "groups": {str(g): v for g, v in losses.items()},
                    "group_steps": per_group,
                    "sizes": {str(g): len(ts) for g, ts in regions.items()},
                }
            )
        print(f"seed {seed}: " + ", ".join(f"{r['arm']} {r['overall']:.5f}" for r in rows[-3:]), flush=True)
    shutil.rmtree(work, ignore_errors=True)

    arms = ["base_at_split", "a_base_total", "b_two_stage"]
    groups = list(rows[0]["groups"])

    def stat(arm, key=None):
        vals = [r["overall"] if key is None else r["groups"][key] for r in rows if r["arm"] == arm]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    summary = {arm: {"overall": stat(arm), "groups": {g: stat(arm, g) for g in groups}} for arm in arms}
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "bench": "two_stage",
        "preset": args.preset,
        "total_steps": args.total,
        "base_steps": args.base,
        "group_steps": rows[0]["group_steps"],
        "seeds": seeds,
        "holdout": args.holdout,
        "draws": args.draws,
        "overrides": args.overrides,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_threads": torch.get_num_threads(),
        "commit": sha,
        "elapsed_s": round(time.time() - t0, 1),
        "rows": rows,
        "summary": summary,
    }
    label = {
        "base_at_split": f"base @ {args.base}",
        "a_base_total": f"(a) base @ {args.total}",
        "b_two_stage": f"(b) base @ {args.base} + groups x {rows[0]['group_steps']}",
    }
    sizes = rows[0]["sizes"]
    md = [
        f"Two-stage vs one-stage at {args.total} total steps, preset `{args.preset}`, seeds {args.seeds}, "
        f"held-out eps-MSE (mean ± std over seeds; lower is better). Commit {sha}, {result['machine']}, "
        f"{result['cpu_threads']} threads, {result['elapsed_s']:.0f} s.",
        "",
        "| arm | all T | " + " | ".join(f"g{g} ({sizes[g]} t)" for g in groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for arm in arms:
        s = summary[arm]
        md.append(
            f"| {label[arm]} | {s['overall'][0]:.5f} ± {s['overall'][1]:.5f} | "
            + " | ".join(f"{s['groups'][g][0]:.4f}" for g in groups)
            + " |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "two_stage.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "two_stage.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
