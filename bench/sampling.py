"""Sampling speed: base vs progressive model of one run, same batch, same steps, one process.

    python bench/sampling.py [--run RUN] [--runs-dir DIR] [--batch N] [--steps 50] [--repeats 7]
                             [--layout channels_last|contiguous] [--name sampling]

Without --run, the newest run in the runs folder that has a progressive model is used. Prints and writes
bench/results/sampling.{json,md}: images/s of each model, the time ratio (progressive / base) and the MACs
ratio (progressive / base, averaged over the steps sampled): the limit the time ratio should approach.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# CPU batches: a cifar10 step costs ~0.35 s per 8 images on 2 cores
CPU_BATCH = {"tiny": 64, "cifar10": 8, "imagenet64": 2}


def newest_run(root: Path) -> Path:
    runs = sorted(
        (p for p in root.iterdir() if (p / "models" / "progressive.pt").exists()),
        key=lambda p: (p / "models" / "progressive.pt").stat().st_mtime,
    )
    if not runs:
        sys.exit(f"no run with a progressive model in {root}; run `make demo` first")
    return runs[-1]


def main() -> None:
    from core.method.artifacts import load_progressive, load_unet
    from core.model.diffusion import create_diffusion
    from core.model.macs import count, progressive_cost
    from core.model.respace import respaced
    from core.model.sampling import set_layout
    from core.runs import Run, runs_root
    from core.training.devices import pick_device

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="default: 256 on CUDA; on CPU 64 for tiny, 8 for cifar10, 2 for imagenet64",
    )
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--name", default="sampling")
    ap.add_argument(
        "--layout",
        choices=["channels_last", "contiguous"],
        default="channels_last",
        help="memory format of every model's weights (the sampler's default: channels_last)",
    )
    a = ap.parse_args()

    root = runs_root(a.runs_dir)
    run = Run(root / a.run) if a.run else Run(newest_run(root))
    dev = pick_device(a.device)
    cfg = run.config
    m = cfg["model"]
    models = {"base": load_unet(run.model("base"), dev), "progressive": load_progressive(run.model("progressive"), dev)}
    proc = respaced(create_diffusion(cfg), a.steps)
    if a.batch is None:
        a.batch = 256 if dev.type == "cuda" else CPU_BATCH.get(cfg["preset"], 8)
    shape = (a.batch, m["in_channels"], m["image_size"], m["image_size"])
    base_macs = count(models["base"], m["image_size"], m["in_channels"])
    prog_cost = progressive_cost(models["progressive"], m["image_size"], m["in_channels"], a.steps)

    def once(model) -> float:
        g = torch.Generator(device=dev).manual_seed(0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            proc.sample(model, shape, method="ancestral", generator=g, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # control: a dense model of the same architecture, uniformly narrower (clean channel counts), with MACs
    # near the progressive average: shows how this hardware scales time with MACs at these widths
    from core.model.unet import build_unet

    arch = dict(m)
    best_ctrl = None
    for ch in range(arch["norm_groups"], arch["model_channels"], arch["norm_groups"]):
        if any(ch * x % arch["num_heads"] for x in arch["channel_mult"]):
            continue
        cand = build_unet({**arch, "model_channels": ch}).eval().to(dev)
        r = count(cand, m["image_size"], m["in_channels"])["macs"] / base_macs["macs"]
        if best_ctrl is None or abs(r - prog_cost["avg_sampled"]["macs"] / base_macs["macs"]) < abs(
            best_ctrl[1] - prog_cost["avg_sampled"]["macs"] / base_macs["macs"]
        ):
            best_ctrl = (ch, r, cand)
    if best_ctrl is not None:
        models[f"dense {best_ctrl[0]} ch (control)"] = best_ctrl[2]

    class Zero(torch.nn.Module):  # the sampler's own cost per step: a model that costs nothing
        def forward(self, x, t):
            return torch.zeros((x.shape[0], models["base"].out_channels, *x.shape[2:]), device=x.device)

    for model in models.values():
        set_layout(model, a.layout == "channels_last")
    models["no model (sampler only)"] = Zero()
    for model in models.values():  # warm-up
        once(model)
    times = {k: [] for k in models}
    for _ in range(a.repeats):  # interleaved, so drifts in machine load hit both alike
        for k, model in models.items():
            times[k].append(once(model))
    import statistics

    # machine speed drifts on shared hosts: compare each repeat's back-to-back pair, report the median
    best = {k: statistics.median(v) for k, v in times.items()}
    pair = sorted(p / b for p, b in zip(times["progressive"], times["base"]))
    macs_ratio = prog_cost["avg_sampled"]["macs"] / base_macs["macs"]
    macs_attn_ratio = (prog_cost["avg_sampled"]["macs"] + prog_cost["avg_sampled"]["attn_macs"]) / (
        base_macs["macs"] + base_macs["attn_macs"]
    )
    time_ratio = statistics.median(pair)
    sampler = best["no model (sampler only)"]
    net_ratio = (best["progressive"] - sampler) / (best["base"] - sampler)
    ctrl = None
    if best_ctrl is not None:
        key = f"dense {best_ctrl[0]} ch (control)"
        ctrl = {"channels": best_ctrl[0], "macs_ratio": best_ctrl[1], "time_ratio": best[key] / best["base"]}
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        sha = "?"
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU {platform.machine()}"
    res = {
        "run": run.name,
        "preset": cfg["preset"],
        "batch": a.batch,
        "steps": a.steps,
        "repeats": a.repeats,
        "device": device_name,
        "threads": torch.get_num_threads(),
        "commit": sha,
        "layout": a.layout,
        "seconds": times,
        "images_per_s": {k: a.batch / v for k, v in best.items()},
        "time_ratio": time_ratio,
        "macs_ratio": macs_ratio,
        "macs_ratio_with_attention": macs_attn_ratio,
        "time_vs_macs": time_ratio / macs_ratio,
        "pair_ratios": pair,
        "sampler_share_of_base": sampler / best["base"],
        "model_time_ratio": net_ratio,
        "control": ctrl,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = (
        f"Sampling speed, run `{run.name}` (preset `{cfg['preset']}`), batch {a.batch}, {a.steps} respaced steps, "
        f"ancestral, medians of {a.repeats} interleaved repeats; {a.layout.replace('_', '-')} weights; {device_name}, "
        f"{res['threads']} threads, commit {sha}.\n\n"
        "| model | images/s | s per batch | time / base | MACs / base |\n|---|---|---|---|---|\n"
        f"| base | {res['images_per_s']['base']:.2f} | {best['base']:.2f} | 1.000 | 1.000 |\n"
        f"| progressive | {res['images_per_s']['progressive']:.2f} | {best['progressive']:.2f} | {time_ratio:.3f} | "
        f"{macs_ratio:.3f} |\n"
        + (
            f"| dense, {ctrl['channels']} channels (control) | {a.batch / best[key]:.2f} | {best[key]:.2f} | "
            f"{ctrl['time_ratio']:.3f} | {ctrl['macs_ratio']:.3f} |\n"
            if ctrl
            else ""
        )
        + f"| no model (the sampler's own work) | - | {sampler:.2f} | {sampler / best['base']:.3f} | 0 |\n\n"
        f"Time ratio (progressive / base, median of back-to-back pairs; range {pair[0]:.3f}-{pair[-1]:.3f}) "
        f"**{time_ratio:.3f}** vs MACs ratio **{macs_ratio:.3f}** "
        f"({macs_attn_ratio:.3f} with attention matmuls): time/MACs = {time_ratio / macs_ratio:.3f}; "
        f"model time only (sampler's share removed): {net_ratio:.3f}."
        + (
            f" The dense control shows this device's own scaling at these widths: time/MACs = "
            f"{ctrl['time_ratio'] / ctrl['macs_ratio']:.3f}.\n"
            if ctrl
            else "\n"
        )
    )
    (out / f"{a.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
