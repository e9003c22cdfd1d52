"""Where the progressive model's sampling time goes, layer by layer: why its time ratio to the base exceeds its
MACs ratio at small batches on a CPU.

    python bench/sampling_layers.py --run RUN [--runs-dir DIR] [--batch 64] [--steps 50] [--repeats 9]
                                    [--name sampling_layers]

One denoiser forward of the base and of every group's model, at the sampling batch, channels-last weights (as
the sampler runs them). Every leaf module is timed with forward hooks (median over repeats); what is not in a
module (SiLU, the attention matmuls, additions, concatenations) is the forward's time minus its modules'. Each
group's model weighs as many of the respaced sampling steps as it serves. MACs per layer are counted from the
layer's shapes (convolutions and linears, as torch-pruning's counter does). Writes bench/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = (
    "3x3 conv in res blocks",
    "1x1 skip conv",
    "down/up-sampling conv",
    "attention qkv and proj",
    "first and last conv",
    "GroupNorm",
    "timestep embedding (linears)",
    "outside modules (SiLU, matmuls, adds)",
)


def kind(name: str, mod: torch.nn.Module) -> str:
    last = name.rsplit(".", 1)[-1]
    if isinstance(mod, torch.nn.GroupNorm):
        return KINDS[5]
    if isinstance(mod, torch.nn.Linear):
        return KINDS[6]
    if last in ("qkv", "proj"):
        return KINDS[3]
    if last == "skip":
        return KINDS[1]
    if last in ("in_conv", "out_conv"):
        return KINDS[0]
    if last in ("op", "conv"):
        return KINDS[2]
    return KINDS[4]


def layer_macs(mod: torch.nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one conv or linear for one sample (bias included, as torch-pruning counts)."""
    per_out = 0
    if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d)):
        per_out = mod.in_channels // mod.groups * int(torch.tensor(mod.kernel_size).prod()) + (mod.bias is not None)
    elif isinstance(mod, torch.nn.Linear):
        per_out = mod.in_features + (mod.bias is not None)
    return per_out * out[0].numel()


@torch.inference_mode()
def profile(model, x, t, repeats: int) -> dict:
    """Median seconds and per-sample MACs of each kind of layer, and of the whole forward, for ``model(x, t)``."""
    leaves = [
        (n, m)
        for n, m in model.named_modules()
        if not list(m.children()) and not isinstance(m, (torch.nn.Identity, torch.nn.Dropout, torch.nn.SiLU))
    ]
    start, took, macs = {}, {n: [] for n, _ in leaves}, {}

    def pre(name):
        return lambda mod, inp: start.__setitem__(name, time.perf_counter())

    def post(name):
        def hook(mod, inp, out):
            took[name].append(time.perf_counter() - start[name])
            macs[name] = layer_macs(mod, out)

        return hook

    handles = [h for n, m in leaves for h in (m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post(n)))]
    model(x, t)  # warm-up
    for v in took.values():
        v.clear()
    whole_hooked = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x, t)
        whole_hooked.append(time.perf_counter() - t0)
    for h in handles:
        h.remove()
    whole = []
    for _ in range(repeats):  # without hooks: what the hooks themselves cost
        t0 = time.perf_counter()
        model(x, t)
        whole.append(time.perf_counter() - t0)
    per_kind = {k: {"s": 0.0, "macs": 0} for k in KINDS}
    for n, m in leaves:
        k = kind(n, m)
        runs = took[n]
        per_kind[k]["s"] += statistics.median(runs) * len(runs) / repeats  # a module called twice counts twice
        per_kind[k]["macs"] += macs.get(n, 0) * len(runs) // repeats
    hooked = statistics.median(whole_hooked)
    per_kind[KINDS[7]]["s"] = max(0.0, hooked - sum(v["s"] for v in per_kind.values()))
    return {"kinds": per_kind, "forward_s": statistics.median(whole), "forward_hooked_s": hooked}


def main() -> None:
    from core.method.artifacts import load_progressive, load_unet
    from core.model.respace import space_timesteps
    from core.model.sampling import set_layout
    from core.runs import Run, runs_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--name", default="sampling_layers")
    a = ap.parse_args()
    run = Run(runs_root(a.runs_dir) / a.run)
    m = run.config["model"]
    base = set_layout(load_unet(run.model("base")))
    prog = load_progressive(run.model("progressive"))
    group_of = prog.group_of.tolist()
    served = Counter(group_of[t] for t in space_timesteps(len(group_of), a.steps))
    x = torch.randn(a.batch, m["in_channels"], m["image_size"], m["image_size"]).contiguous(
        memory_format=torch.channels_last
    )
    base_p = profile(base, x, torch.full((a.batch,), len(group_of) // 2), a.repeats)
    groups = {}
    for g, n in sorted(served.items()):
        t = group_of.index(g)
        groups[g] = {"steps": n, **profile(set_layout(prog.models[str(g)]), x, torch.full((a.batch,), t), a.repeats)}
    w = {g: v["steps"] / a.steps for g, v in groups.items()}

    def prog_avg(key: str, k: str | None = None) -> float:
        return sum(w[g] * (v["kinds"][k][key] if k else v[key]) for g, v in groups.items())

    base_total = base_p["forward_s"]
    prog_total = prog_avg("forward_s")
    macs_b = sum(v["macs"] for v in base_p["kinds"].values())
    macs_p = sum(w[g] * sum(v["macs"] for v in gv["kinds"].values()) for g, gv in groups.items())
    macs_ratio = macs_p / macs_b
    rows = []
    for k in KINDS:
        bs, ps = base_p["kinds"][k]["s"], prog_avg("s", k)
        bm, pm = base_p["kinds"][k]["macs"], prog_avg("macs", k)
        rows.append(
            {
                "kind": k,
                "base_ms": bs * 1e3,
                "prog_ms": ps * 1e3,
                "time_ratio": ps / bs if bs else None,
                "macs_ratio": pm / bm if bm else None,
                "share_of_base": bs / base_p["forward_hooked_s"],
                # the excess over a time that scaled with the whole model's MACs ratio, in base forwards
                "excess": (ps - macs_ratio * bs) / base_p["forward_hooked_s"],
                "base_gmacs": bm * a.batch / bs / 1e9 if bs and bm else None,
                "prog_gmacs": pm * a.batch / ps / 1e9 if ps and pm else None,
            }
        )
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    res = {
        "run": run.name,
        "batch": a.batch,
        "steps": a.steps,
        "repeats": a.repeats,
        "threads": torch.get_num_threads(),
        "device": f"CPU {platform.machine()}",
        "commit": sha,
        "forward_ms": {"base": base_total * 1e3, "progressive": prog_total * 1e3},
        "time_ratio": prog_total / base_total,
        "macs_ratio": macs_ratio,
        "hook_overhead": base_p["forward_hooked_s"] / base_total - 1,
        "rows": rows,
        "groups": {g: {"steps": v["steps"], "forward_ms": v["forward_s"] * 1e3} for g, v in groups.items()},
    }
    out = ROOT / "bench" / "results"
    (out / f"{a.name}.json").write_text(json.dumps(res, indent=2) + "\n")

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    md = [
        f"One denoiser forward per layer kind, run `{run.name}`, batch {a.batch}, groups weighted by the {a.steps} "
        f"respaced steps each serves; channels-last weights; medians of {a.repeats}; {res['device']}, "
        f"{res['threads']} threads, commit {sha}. Whole forward: base {base_total * 1e3:.1f} ms, progressive "
        f"{prog_total * 1e3:.1f} ms: time ratio **{res['time_ratio']:.3f}** vs MACs ratio **{macs_ratio:.3f}** "
        f"(time/MACs {res['time_ratio'] / macs_ratio:.2f}; hooks add {res['hook_overhead']:.0%}).",
        "",
        "| layers | base ms | progressive ms | time ratio | MACs ratio | share of base time | base GMAC/s | "
        "progressive GMAC/s | excess (of a base forward) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['kind']} | {r['base_ms']:.2f} | {r['prog_ms']:.2f} | {f(r['time_ratio'], '.2f')} | "
            f"{f(r['macs_ratio'], '.2f')} | {r['share_of_base']:.0%} | {f(r['base_gmacs'], '.0f')} | "
            f"{f(r['prog_gmacs'], '.0f')} | {r['excess']:+.3f} |"
        )
    md.append("")
    md.append(
        "Excess: how much more of a base forward the progressive model's layers of that kind take than they "
        "would if their time scaled with the whole model's MACs ratio; the column sums to time ratio minus "
        "MACs ratio (with hooks)."
    )
    (out / f"{a.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
