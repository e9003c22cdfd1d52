"""How many samples does an evaluation need? The spread of FID and KID over independent sample sets of one
model at several n, the width of their 95% bootstrap intervals, and whether the metric detects the damage a
person sees (speckled background, thinned strokes) at each n (issue 15).

One pool of samples is drawn from a run's base model (``--pool``, with noise no evaluation uses), split into
disjoint sets of n: for each n, every set is one "evaluation with another seed". Reported per n and metric:
the mean and standard deviation over sets, the mean interval width, the share of pairs of sets whose values
fall inside each other's intervals ("agree"), and the paired difference damaged - clean with its interval.
It also compares the feature spaces: shape only (the classifier's penultimate layer) vs shape + texture.

    python bench/metric_spread.py --run base-demo [--pool 2048] [--ns 128,256,512,1024]

Writes bench/results/metric_spread.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.evaluation import features as F  # noqa: E402
from core.evaluation import metrics as M  # noqa: E402
from core.evaluation.perturb import speckle, thin  # noqa: E402
from core.method.artifacts import load_unet  # noqa: E402
from core.model.diffusion import create_diffusion  # noqa: E402
from core.model.sampling import sample_images  # noqa: E402
from core.runs import open_run  # noqa: E402
from core.training.data import load_dataset  # noqa: E402


def pool_of(run, n: int, steps: int, seed: int) -> torch.Tensor:
    path = run.path / "eval" / f"bench-pool-base-n{n}-s{steps}-seed{seed}.pt"
    if path.exists():
        return torch.load(path)
    cfg = run.config
    t0 = time.time()
    imgs = sample_images(
        load_unet(run.model("base")),
        create_diffusion(cfg),
        n,
        image_size=cfg["model"]["image_size"],
        channels=cfg["model"]["in_channels"],
        steps=steps,
        batch_size=256,
        seed=seed,
    )
    print(f"sampled {n} images with {steps} steps in {time.time() - t0:.0f} s", flush=True)
    path.parent.mkdir(exist_ok=True)
    torch.save(imgs, path)
    return imgs


def spaces(ext, data) -> dict:
    """name -> (features of images, RefStats, reference features)."""
    net = ext.net

    def shape_only(x):
        return F.features(_Wrap(net), x)

    out = {}
    for name, fn in (("shape + texture (default)", lambda x: F.features(ext, x)), ("shape only", shape_only)):
        ref = fn(data.get(torch.arange(len(data))))
        keep = ref[np.random.default_rng(0).permutation(len(ref))[:5000]]
        out[name] = (fn, M.RefStats.of(ref.mean(0), np.cov(ref, rowvar=False)), keep)
    return out


class _Wrap(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x)


def measure(fn, stats, ref, pool: torch.Tensor, n: int, reps: int) -> dict:
    sets = [pool[i : i + n] for i in range(0, len(pool) - n + 1, n)]
    out = {}
    for metric in ("fid", "kid"):
        vals, cis = [], []
        for s in sets:
            f = fn(s)
            summ = M.summarise(f, stats, ref, reps)
            vals.append(summ[metric])
            cis.append(summ[f"{metric}_ci"])
        pairs = list(itertools.combinations(range(len(sets)), 2))
        agree = [cis[i][0] <= vals[j] <= cis[i][1] and cis[j][0] <= vals[i] <= cis[j][1] for i, j in pairs]
        clean = sets[0]
        fc = fn(clean)
        damage = {}
        for name, imgs in (
            ("speckle 1%", speckle(clean, 0.01)),
            ("speckle 2%", speckle(clean, 0.02)),
            ("thin", thin(clean)),
        ):
            d = M.difference(fn(imgs), fc, stats, ref, metric, paired=True, reps=reps)
            damage[name] = {"diff": d["diff"], "ci": d["ci"], "verdict": M.verdict(d)}
        out[metric] = {
            "sets": len(sets),
            "values": vals,
            "mean": float(np.mean(vals)),
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "ci_width": float(np.mean([c[1] - c[0] for c in cis])),
            "agree": (sum(agree) / len(agree)) if agree else None,
            "damage": damage,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--pool", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--ns", default="128,256,512,1024")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    run = open_run(args.run, args.runs_dir)
    cfg = run.config
    data = load_dataset(cfg, split="all")
    ext, info = F.make_extractor(cfg, data, run.path.parent)
    pool = pool_of(run, args.pool, args.steps, seed=777)
    result = {"run": run.name, "pool": args.pool, "steps": args.steps, "reps": args.reps, "spaces": {}}
    for space, (fn, stats, ref) in spaces(ext, data).items():
        result["spaces"][space] = {n: measure(fn, stats, ref, pool, n, args.reps) for n in map(int, args.ns.split(","))}
        print(space, "done", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metric_spread.json").write_text(json.dumps(result, indent=2))
    md = [
        f"Samples of `{run.name}`'s base model ({args.pool} drawn with {args.steps} steps, split into disjoint "
        f"sets of n), {args.reps} bootstrap resamples.",
        "",
        "| features | n | metric | sets | mean | sd over sets | mean 95% CI width | sets agree | "
        "speckle 1% | speckle 2% | thin |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for space, by_n in result["spaces"].items():
        for n, res in by_n.items():
            for metric, r in res.items():
                sc = 1e3 if metric == "kid" else 1
                dmg = [
                    f"{r['damage'][k]['diff'] * sc:+.3f} "
                    f"{r['damage'][k]['verdict'].replace('no significant difference', 'n.s.')}"
                    for k in ("speckle 1%", "speckle 2%", "thin")
                ]
                sd = "-" if r["sd"] is None else f"{r['sd'] * sc:.3f}"
                agree = "-" if r["agree"] is None else f"{r['agree']:.0%}"
                name = f"{metric} x1e3" if sc != 1 else metric
                md.append(
                    f"| {space} | {n} | {name} | {r['sets']} | {r['mean'] * sc:.3f} | {sd} | "
                    f"{r['ci_width'] * sc:.3f} | {agree} | " + " | ".join(dmg) + " |"
                )
    (out / "metric_spread.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
