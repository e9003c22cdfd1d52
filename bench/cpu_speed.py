"""A training step of a preset on this CPU: fp32 against bf16 autocast, threads against processes (DDP).

    python bench/cpu_speed.py [--preset tiny] [--steps 20] [--batch 32]

Four ways to run the same stage-1 loop (``core.training.loop.train``: AdamW, EMA, clipping, hybrid loss) on
synthetic images, each in its own process(es), one after another in one run so their ratios compare:

  fp32, one process, all cores        how stage 1 ran before (``-S train.bf16=false``, one slot)
  bf16, one process, all cores        bf16 autocast (AMX), still one process
  bf16, one process, one thread       what each of two group jobs side by side gets
  bf16, DDP, one rank per core        how stage 1 and the control run now with ``--parallel`` = cores

Writes bench/results/cpu_speed.{json,md}: seconds per step (of the whole batch) and the speed-up over the
first row. bf16 rows on a CPU without AMX measure fp32 (``devices.bf16_native``) and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(preset: str, steps: int, warmup: int, batch: int, bf16: bool) -> None:
    """One measurement (every rank under torchrun runs this; rank 0 prints the result as JSON)."""
    import torch

    from core import config as C
    from core.model.diffusion import create_diffusion
    from core.model.unet import build_unet
    from core.training.data import TensorImages
    from core.training.devices import bf16_native, init_distributed
    from core.training.loop import TrainSpec, train

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    dev = init_distributed() or torch.device("cpu")
    cfg = C.resolve(preset, None, [])
    m, t = cfg["model"], cfg["train"]
    g = torch.Generator().manual_seed(0)
    data = TensorImages(
        "synthetic",
        torch.randint(
            0,
            256,
            (max(4 * batch, 256), m["in_channels"], m["image_size"], m["image_size"]),
            generator=g,
            dtype=torch.uint8,
        ),
        None,
        flip=False,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    spec = TrainSpec(
        name="bench",
        ckpt=tmp / "ckpt.pt",
        model_out=tmp / "model.pt",
        metrics=tmp / "m.jsonl",
        steps=warmup + steps,
        batch_size=batch,
        lr=t["lr"],
        ema_decay=t["ema_decay"],
        seed=0,
        grad_clip=t["grad_clip"],
        log_every=warmup + steps,
        ckpt_every=10**9,
        bf16=bf16,
        channels_last=t["channels_last"],
    )
    stamps = {}

    def on_step(done, total):
        if done in (warmup, warmup + steps):
            stamps[done] = time.perf_counter()

    train(spec, build_unet(m, seed=0), create_diffusion(cfg), data, device=dev, progress=False, on_step=on_step)
    if stamps:  # rank 0
        print(
            json.dumps(
                {
                    "seconds_per_step": (stamps[warmup + steps] - stamps[warmup]) / steps,
                    "threads": torch.get_num_threads(),
                    "bf16": bool(bf16 and bf16_native(dev)),
                    "world": int(os.environ.get("WORLD_SIZE", "1")),
                }
            )
        )


def measure(label: str, preset: str, steps: int, warmup: int, batch: int, bf16: bool, threads: int, ranks: int) -> dict:
    args = [
        __file__,
        "--child",
        "--preset",
        preset,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--batch",
        str(batch),
    ] + ([] if bf16 else ["--fp32"])
    cmd = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]
        if ranks > 1
        else [sys.executable, *args]
    )
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        PYTHONPATH=str(ROOT),
    )
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode:
        sys.exit(f"{label}: failed\n{p.stderr[-2000:]}")
    row = {"label": label, "processes": ranks, **json.loads(p.stdout.strip().splitlines()[-1])}
    print(f"{label}: {row['seconds_per_step']:.3f} s/step", file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--name", default="cpu_speed")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fp32", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.preset, a.steps, a.warmup, a.batch, not a.fp32)
    cores = os.cpu_count() or 1
    plan = [
        ("fp32, one process, all cores (before)", False, cores, 1),
        ("bf16, one process, all cores", True, cores, 1),
        ("bf16, one process, one thread", True, 1, 1),
        (f"bf16, DDP, {cores} ranks of one thread (now)", True, 1, cores),
    ]
    rows = [
        measure(label, a.preset, a.steps, a.warmup, a.batch, bf16, threads, ranks)
        for label, bf16, threads, ranks in plan
    ]
    base = rows[0]["seconds_per_step"]
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    from core.training.devices import bf16_native

    info = {
        "commit": sha,
        "preset": a.preset,
        "batch": a.batch,
        "steps": a.steps,
        "cores": cores,
        "cpu": platform.processor() or platform.machine(),
        "amx": bf16_native("cpu"),
        "rows": rows,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    md = [
        f"A stage-1 training step of `{a.preset}` (batch {a.batch}, the whole batch per step), synthetic images, "
        f"{a.steps} steps after {a.warmup} of warm-up, each way in its own process(es), one after another; "
        f"{cores} CPU cores, AMX {'yes' if info['amx'] else 'no (bf16 rows ran fp32)'}; commit {sha}.",
        "",
        "| way | precision | processes x threads | s/step | speed-up |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['label']} | {'bf16 autocast' if r['bf16'] else 'fp32'} | {r['processes']} x {r['threads']} | "
            f"{r['seconds_per_step']:.3f} | {base / r['seconds_per_step']:.2f}x |"
        )
    text = "\n".join(md) + "\n"
    (out / f"{a.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
