"""How far a base is from converged: its milestones' domain FID, KID and held-out loss (all groups, and the
noisiest group 0, where the loss is largest) with 95% intervals, by training steps, read from the eval.json of
runs that each evaluated one milestone as their base (``stepadapt fork BASE@STEP NAME`` then
``stepadapt eval NAME --model base``); a figure of both curves beside the table.

    python bench/base_curve.py RUN [RUN ...] [--runs-dir DIR] [--name NAME]

Writes bench/results/NAME.{json,md} and bench/NAME.png (default ``base_curve``). Nothing is sampled again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def base_row(run) -> dict:
    """The run's evaluated base: steps, FID/KID/loss with intervals, group 0's loss with its interval."""
    from core.errors import UserError

    path = run.eval_file()
    if not path.exists():
        raise UserError(f"{run.name}: no eval.json; run: stepadapt eval {run.name} --model base")
    b = json.loads(path.read_text())["models"].get("base")
    if not b or b.get("fid") is None:
        raise UserError(f"{run.name}: its evaluation has no base FID; run: stepadapt eval {run.name} --model base")
    return {
        "run": run.name,
        "steps": b["train_steps"],
        "n": b["fid_n"],
        "fid": b["fid"],
        "fid_ci": b["fid_ci"],
        "kid": b["kid"],
        "kid_ci": b["kid_ci"],
        "loss": b["loss"],
        "loss_ci": b["loss_ci"],
        "loss_g0": b["loss_groups"]["0"],
        "loss_g0_ci": b["loss_groups_ci"]["0"],
    }


def plot(rows: list[dict], path: Path) -> None:
    """FID and held-out loss against steps (log axis), each point with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = [r["steps"] for r in rows]
    for ax, key, label in ((axes[0], "fid", "domain FID"), (axes[1], "loss", "held-out loss (eps-MSE)")):
        v = [r[key] for r in rows]
        err = [[r[key] - r[f"{key}_ci"][0] for r in rows], [r[f"{key}_ci"][1] - r[key] for r in rows]]
        ax.errorbar(steps, v, yerr=err, marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_xticks(steps, [f"{s:,}" for s in steps], rotation=45)
        ax.minorticks_off()
        ax.set_xlabel("base training steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from core.errors import UserError
    from core.runs import open_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--name", default="base_curve")
    a = ap.parse_args()
    try:
        rows = sorted((base_row(open_run(r, a.runs_dir)) for r in a.runs), key=lambda r: r["steps"])
    except UserError as e:
        sys.exit(f"error: {e}")
    out = ROOT / "bench" / "results"
    (out / f"{a.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    figure = ROOT / "bench" / f"{a.name}.png"
    plot(rows, figure)

    def ci(r, key, spec="{:.3f}", scale=1.0):
        lo, hi = r[f"{key}_ci"]
        return f"{spec.format(r[key] * scale)} [{spec.format(lo * scale)}, {spec.format(hi * scale)}]"

    md = [
        "Each milestone evaluated as a base: domain FID and KID x1e3 at n samples (25 steps) and the held-out loss "
        "(all groups, and group 0: the noisiest timesteps), each with its 95% interval.",
        "",
        "| base steps | run | n | FID | KID x1e3 | held-out loss x1e3 | group 0 loss x1e3 |",
        "|---:|---|---:|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['steps']:,} | {r['run']} | {r['n']} | {ci(r, 'fid')} | {ci(r, 'kid', '{:.2f}', 1e3)} "
            f"| {ci(r, 'loss', '{:.2f}', 1e3)} | {ci(r, 'loss_g0', '{:.1f}', 1e3)} |"
        )
    md += ["", f"![FID and held-out loss by base steps]({figure.name})"]
    (out / f"{a.name}.md").write_text("\n".join(md) + "\n")
    print(f"wrote bench/results/{a.name}.md ({len(rows)} milestones) and bench/{figure.name}")
    shutil.rmtree(out / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
