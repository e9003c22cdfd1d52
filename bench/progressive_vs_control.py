"""Does the progressive model hold up against its equal-compute control? (issue 15)

One stage-1 base (copied from an existing tiny run, ``--base-run``) is shared by every arm:

    A  k = 0.5, plain fine-tune (the paper's)     + the base, and the control (stage 1 trained on for the
                                                    same steps and images as A's fine-tunes together)
    B  k = 0.5, fine-tune with distillation       (A's pruning, copied: the same plans)
    C  k = 0.4, with distillation                 (pruned by the proxy to its own budgets)
    D  k = 0.3, with distillation

All fine-tunes run ``--steps`` per group, so one control serves every arm. Each model is evaluated with the
same noise (paired comparisons): FID/KID with 95% bootstrap intervals, precision/recall, held-out loss per
group, MACs. Two chains of jobs run side by side, one thread each.

    python bench/progressive_vs_control.py --base-run base-demo [--steps 150] [--distill 1.0] [--n 1024]
    python bench/progressive_vs_control.py --base-run base-demo --more E:0.5:0:1,F:0.5:1:1

``--more NAME:k:distill:warmup,...`` adds arms to a finished bench (warmup: ``finetune.ema_warmup``), pruned
like A when k = 0.5 (the same plans) and compared with A's base and control; the tables cover every arm.

Writes bench/results/progressive_vs_control.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import config as C  # noqa: E402
from core.evaluation.evaluate import compare_runs, load_eval  # noqa: E402
from core.evaluation.text import verdict_text  # noqa: E402
from core.runs import Run, create_run, open_run  # noqa: E402

EXE = str(Path(sys.executable).with_name("stepadapt"))


def sh(*args, log) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.time()
    p = subprocess.run([EXE, *map(str, args)], env=env, capture_output=True, text=True)
    log.write(
        f"$ stepadapt {' '.join(map(str, args))}  ({time.time() - t0:.0f} s, exit {p.returncode})\n"
        f"{p.stdout[-3000:]}{p.stderr[-3000:]}\n"
    )
    log.flush()
    if p.returncode:
        raise SystemExit(f"stepadapt {' '.join(map(str, args))} failed: {p.stderr[-800:]}")


def make_arm(
    root: Path, name: str, base: Run, k: float, distill: float, steps: int, n: int, control: bool, warmup: bool = False
) -> Run:
    if (root / name).exists():
        return Run(root / name)
    cfg = C.resolve(
        "tiny",
        None,
        [
            f"schedule.k={k}",
            f"finetune.distill={distill}",
            f"finetune.steps={steps}",
            f"eval.fid_n={n}",
            "train.threads=1",
            f"control.enabled={str(control).lower()}",
            f"finetune.ema_warmup={str(warmup).lower()}",
        ],
    )
    run = create_run(cfg, name, str(root))
    for rel in ("models/base.pt", "checkpoints/base.pt", "metrics/base.jsonl"):
        (run.path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base.path / rel, run.path / rel)
    return run


def chain(steps_list, log) -> threading.Thread:
    def go():
        for args in steps_list:
            if callable(args):
                args()
            else:
                sh(*args, log=log)

    t = threading.Thread(target=go)
    t.start()
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-run", required=True, help="a tiny run whose stage 1 is finished (runs/NAME)")
    ap.add_argument("--steps", type=int, default=150, help="fine-tune steps per group")
    ap.add_argument("--distill", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=1024, help="samples per model for FID/KID")
    ap.add_argument("--root", default=str(ROOT / "runs" / "bench-pvc"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--more", default="", help="NAME:k:distill:warmup,... arms to add to a finished bench")
    args = ap.parse_args()
    if args.more:
        return more(args)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    base = open_run(args.base_run)
    arms = {
        "A": (0.5, 0.0, True),
        "B": (0.5, args.distill, False),
        "C": (0.4, args.distill, False),
        "D": (0.3, args.distill, False),
    }
    runs = {a: make_arm(root, f"pvc-{a}", base, k, d, args.steps, args.n, c) for a, (k, d, c) in arms.items()}
    rd = ["--runs-dir", root]
    log = open(root / "bench.log", "a")
    t0 = time.time()

    def copy_plans():
        for src in (runs["A"].path / "prune").glob("*.json"):
            (runs["B"].path / "prune").mkdir(exist_ok=True)
            shutil.copyfile(src, runs["B"].path / "prune" / src.name)
        shutil.copyfile(runs["A"].schedule_file(), runs["B"].schedule_file())

    one = chain(
        [
            ("prune", "pvc-A", *rd),
            ("finetune", "pvc-A", *rd),
            copy_plans,
            ("finetune", "pvc-B", *rd),
            ("control", "pvc-A", *rd),
        ],
        log,
    )
    two = chain(
        [("prune", "pvc-C", *rd), ("finetune", "pvc-C", *rd), ("prune", "pvc-D", *rd), ("finetune", "pvc-D", *rd)], log
    )
    one.join()
    two.join()
    train_s = time.time() - t0
    one = chain([("eval", "pvc-A", "--model", "all", *rd), ("eval", "pvc-C", "--model", "progressive", *rd)], log)
    two = chain(
        [("eval", "pvc-B", "--model", "progressive", *rd), ("eval", "pvc-D", "--model", "progressive", *rd)], log
    )
    one.join()
    two.join()
    report(runs, args, {"train_s": train_s, "total_s": time.time() - t0}, Path(args.out))


def more(args) -> None:
    root, base = Path(args.root), open_run(args.base_run)
    rd = ["--runs-dir", root]
    log = open(root / "bench.log", "a")
    names = []
    for spec in args.more.split(","):
        name, k, distill, warmup = spec.split(":")
        run = make_arm(root, f"pvc-{name}", base, float(k), float(distill), args.steps, args.n, False, warmup == "1")
        if float(k) == 0.5 and not run.schedule_file().exists():  # A's plans
            (run.path / "prune").mkdir(exist_ok=True)
            for src in (root / "pvc-A" / "prune").glob("*.json"):
                shutil.copyfile(src, run.path / "prune" / src.name)
            shutil.copyfile(root / "pvc-A" / "schedule.json", run.schedule_file())
        names.append(run.name)
    t0 = time.time()
    threads = [
        chain(
            [
                *([("prune", n, *rd)] if not (root / n / "prune").exists() else []),
                ("finetune", n, *rd),
                ("eval", n, "--model", "progressive", *rd),
            ],
            log,
        )
        for n in names
    ]
    for t in threads:
        t.join()
    runs = {p.name.split("-", 1)[1]: Run(p) for p in sorted(root.glob("pvc-*")) if (p / "eval.json").exists()}
    report(runs, args, {"more_s": time.time() - t0}, Path(args.out))


def _raw_config(run: Run) -> dict:
    """config.json as written (``run.config`` fills keys added later with today's defaults)."""
    return json.loads((run.path / "config.json").read_text())


def report(runs: dict, args, times: dict, out: Path) -> None:
    a = runs["A"]
    rows, comps = [], []
    ev_a = load_eval(a)["models"]
    keys = (
        "fid",
        "fid_ci",
        "kid",
        "kid_ci",
        "precision",
        "recall",
        "macs",
        "params",
        "loss",
        "loss_ci",
        "loss_groups",
        "train_steps",
    )
    for label, which in (("base", "base"), ("control", "control")):
        rows.append({"arm": label, "k": None, "distill": None, **{k: ev_a[which].get(k) for k in keys}})
    for arm, run in runs.items():
        cfg = run.config
        r = load_eval(run)["models"]["progressive"]
        rows.append(
            {
                "arm": f"{arm}: progressive",
                "k": cfg["schedule"]["k"],
                "distill": cfg["finetune"]["distill"],
                "ema_warmup": _raw_config(run)["finetune"].get("ema_warmup", False),
                **{k: r.get(k) for k in keys},
            }
        )
        for other in ("control", "base"):
            c = compare_runs(run, "progressive", a, other)
            comps.append({"arm": arm, "against": other, **c, "text": verdict_text(c)})
    result = {
        "steps_per_group": args.steps,
        "distill": args.distill,
        "n": args.n,
        "base_run": args.base_run,
        "rows": rows,
        "comparisons": comps,
        "times_s": times,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "progressive_vs_control.json").write_text(json.dumps(result, indent=2))
    base_macs = ev_a["base"]["macs"]
    md = [
        "| model | k | distill | EMA warmup | domain FID [95%] | KID x1e3 [95%] | precision | recall | MACs vs base | "
        "held-out loss [95%] | train steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        warm = "-" if r["distill"] is None else ("yes" if r.get("ema_warmup") else "no")
        md.append(
            f"| {r['arm']} | {r['k'] or '-'} | {'-' if r['distill'] is None else r['distill']} | {warm} | "
            f"{r['fid']:.3f} [{r['fid_ci'][0]:.3f}, {r['fid_ci'][1]:.3f}] | "
            f"{r['kid'] * 1e3:.2f} [{r['kid_ci'][0] * 1e3:.2f}, {r['kid_ci'][1] * 1e3:.2f}] | "
            f"{r['precision']:.2f} | {r['recall']:.2f} | {r['macs'] / base_macs:.3f} | "
            f"{r['loss']:.5f} [{r['loss_ci'][0]:.5f}, {r['loss_ci'][1]:.5f}] | {r['train_steps']} |"
        )
    md += ["", *[f"- {c['arm']}: {c['text']}" for c in comps], ""]
    groups = sorted(rows[0]["loss_groups"], key=int)
    md += ["| group | " + " | ".join(r["arm"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for g in groups:
        md.append(f"| {g} | " + " | ".join(f"{r['loss_groups'].get(g, float('nan')):.4f}" for r in rows) + " |")
    (out / "progressive_vs_control.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
