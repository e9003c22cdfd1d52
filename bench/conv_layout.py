"""Convolution speed by channel count and memory layout: why pruned models sample in channels-last.

    python bench/conv_layout.py [--batch 64] [--size 32] [--device auto]

One 3x3 convolution with C inputs and C outputs on a [batch, C, size, size] input, for C from 16 to 64 (some
of them the odd counts pruning leaves), in NCHW (contiguous) and NHWC (channels-last) layout, interleaved,
median of repeats. Prints and writes bench/results/conv_layout.{json,md}: GMAC/s per (C, layout). A MACs
saving turns into a time saving only where GMAC/s stays flat as C shrinks.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTHS = (16, 24, 32, 40, 48, 56, 57, 64)


def main() -> None:
    from core.training.devices import pick_device

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    dev = pick_device(a.device)
    layouts = {"NCHW": torch.contiguous_format, "NHWC (channels-last)": torch.channels_last}
    rows = []
    with torch.inference_mode():
        for c in WIDTHS:
            conv = torch.nn.Conv2d(c, c, 3, padding=1).to(dev)
            x = torch.randn(a.batch, c, a.size, a.size, device=dev)
            cases = {
                k: (copy.deepcopy(conv).to(memory_format=f), x.contiguous(memory_format=f)) for k, f in layouts.items()
            }
            times = {k: [] for k in cases}
            for k, (m, xx) in cases.items():
                for _ in range(a.repeats + 2):
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    m(xx)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    times[k].append(time.perf_counter() - t0)
            macs = a.batch * a.size * a.size * c * c * 9
            rows.append(
                {"channels": c, "macs": macs, **{k: macs / statistics.median(v[2:]) / 1e9 for k, v in times.items()}}
            )
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU {platform.machine()}"
    res = {
        "device": device_name,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "size": a.size,
        "commit": sha,
        "gmacs_per_s": rows,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "conv_layout.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        f"3x3 convolution, C in = C out, input [{a.batch}, C, {a.size}, {a.size}], GMAC/s (median of {a.repeats}); "
        f"{device_name}, {res['threads']} threads, commit {sha}.",
        "",
        "| channels C | " + " | ".join(layouts) + " |",
        "|---|" + "---|" * len(layouts),
    ]
    md += [f"| {r['channels']} | " + " | ".join(f"{r[k]:.0f}" for k in layouts) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    (out / "conv_layout.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
