"""Training speed and peak memory of the stage-1 loop (core.training.loop.train, as `stepadapt train` runs it).

    python bench/training.py [--presets tiny,cifar10] [--steps 20] [--device auto]

Each (preset, device) runs in its own subprocess (so peak memory is its own) on synthetic images of the
preset's shape (speed does not depend on the pixels), with the preset's training flags. Prints and writes
bench/results/training.{json,md}: images/s after warm-up, seconds per step, peak memory (CUDA: max allocated;
CPU: peak resident set size of the process).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# CPU batch sizes: the presets' own (128) would take minutes per step for cifar10 on a laptop-class CPU
CPU_BATCH = {"tiny": 32, "cifar10": 8, "imagenet64": 2}


def one(preset: str, device: str, steps: int, warmup: int, batch: int | None, overrides: list[str]) -> dict:
    import torch

    from core import config as C
    from core.model.diffusion import create_diffusion
    from core.model.unet import build_unet
    from core.training.data import TensorImages
    from core.training.devices import bf16_native, pick_device
    from core.training.loop import TrainSpec, train

    cfg = C.resolve(preset, None, overrides)
    dev = pick_device(device)
    m, t = cfg["model"], cfg["train"]
    bs = batch or (t["batch_size"] if dev.type == "cuda" else CPU_BATCH.get(preset, 8))
    n = max(4 * bs, 256)
    g = torch.Generator().manual_seed(0)
    data = TensorImages(
        "synthetic",
        torch.randint(0, 256, (n, m["in_channels"], m["image_size"], m["image_size"]), generator=g, dtype=torch.uint8),
        None,
        flip=False,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    spec = TrainSpec(
        name="bench",
        ckpt=tmp / "ckpt.pt",
        model_out=tmp / "model.pt",
        metrics=tmp / "m.jsonl",
        steps=warmup + steps,
        batch_size=bs,
        lr=t["lr"],
        ema_decay=t["ema_decay"],
        seed=0,
        grad_clip=t["grad_clip"],
        log_every=warmup + steps,
        ckpt_every=10**9,
        bf16=t["bf16"],
        workers=cfg["data"]["workers"] if dev.type == "cuda" else 0,
        channels_last=t["channels_last"],
        compile=t["compile"],
        accum=t["accum"],
    )
    stamps = {}

    def on_step(done, total):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if done in (warmup, warmup + steps):
            stamps[done] = time.perf_counter()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_unet(m, seed=0)
    train(spec, model, create_diffusion(cfg), data, device=dev, progress=False, on_step=on_step)
    dt = stamps[warmup + steps] - stamps[warmup]
    peak = (
        torch.cuda.max_memory_allocated(dev)
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "preset": preset,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU {platform.machine()}",
        "device_type": dev.type,
        "threads": torch.get_num_threads(),
        "batch": bs,
        "steps": steps,
        "seconds_per_step": dt / steps,
        "images_per_s": bs * steps / dt,
        "peak_memory_bytes": peak,
        "params": sum(p.numel() for p in model.parameters()),
        "flags": {
            "bf16": bool(t["bf16"] and bf16_native(dev)),
            "channels_last": bool(t["channels_last"]),
            "compile": t["compile"],
            "accum": t["accum"],
            "fused_adamw": dev.type == "cuda",
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,cifar10")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--name", default="training")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(a.presets, a.device, a.steps, a.warmup, a.batch, a.overrides)))
        return
    rows = []
    for preset in a.presets.split(","):
        steps = a.steps if preset == "tiny" else max(3, a.steps // 4)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--presets",
            preset,
            "--steps",
            str(steps),
            "--warmup",
            str(a.warmup),
            "--device",
            a.device,
        ] + (["--batch", str(a.batch)] if a.batch else [])
        for o in a.overrides:
            cmd += ["-S", o]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{preset}: failed\n{p.stderr[-2000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{preset}: {r['images_per_s']:.1f} images/s at batch {r['batch']} on {r['device']}", file=sys.stderr)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps({"commit": sha, "rows": rows}, indent=2) + "\n")
    md = [
        f"Stage-1 training loop (`core.training.loop.train`: AdamW, EMA, grad clipping, hybrid loss), "
        f"synthetic images, "
        f"{a.warmup} warm-up steps excluded; commit {sha}.",
        "",
        "| preset | device | threads | params (M) | batch | s/step | images/s | peak memory | flags |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flags = ", ".join(k if v is True else f"{k}={v}" for k, v in r["flags"].items() if v not in (False, None))
        mem = r["peak_memory_bytes"] / 2**30
        md.append(
            f"| {r['preset']} | {r['device']} | {r['threads']} | {r['params'] / 1e6:.2f} | {r['batch']} | "
            f"{r['seconds_per_step']:.3f} | {r['images_per_s']:.1f} | {mem:.2f} GiB "
            f"({'CUDA allocated' if r['device_type'] == 'cuda' else 'process RSS'}) | {flags or '-'} |"
        )
    text = "\n".join(md) + "\n"
    (out / f"{a.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
