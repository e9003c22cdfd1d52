"""The report's figures (matplotlib, drawn off screen): training losses with the control's continuation,
held-out loss and FID during fine-tuning, the proxy's rounds, FID/KID against MACs, sample grids side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.evaluation.evaluate import load_eval
from core.runs import Run, read_json, read_jsonl


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(run: Run, path: Path) -> bool:
    base = read_jsonl(run.metrics("base"))
    groups = sorted(run.path.glob("metrics/group*.jsonl"))
    if not base and not groups:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    if base:
        axes[0].plot([r["step"] for r in base], [r["loss"] for r in base], label="loss (hybrid)")
        axes[0].plot([r["step"] for r in base], [r["mse"] for r in base], label="L_simple (eps MSE)")
        control = read_jsonl(run.metrics("control"))
        if control:  # the equal-compute control: stage 1 trained on from its last step
            last = base[-1]
            steps = [last["step"]] + [r["step"] for r in control]
            axes[0].plot(steps, [last["loss"]] + [r["loss"] for r in control], "--", color="C0", label="control: loss")
            axes[0].plot(steps, [last["mse"]] + [r["mse"] for r in control], "--", color="C1", label="control: eps MSE")
            axes[0].axvline(last["step"], color="grey", lw=0.6, ls=":")
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=8)
    axes[0].set_title("stage 1: base model (dashed: the control trained on)")
    axes[0].set_xlabel("step")
    for p in groups:
        rows = read_jsonl(p)
        rep = (read_json(run.path / "prune" / f"{p.stem}.json") or {}).get("report") or {}
        start = [(0, rep["loss_after"])] if rep.get("loss_after") is not None else []
        pts = start + [(r["step"], r["mse"]) for r in rows]
        if pts:
            (line,) = axes[1].plot(*zip(*pts), label=p.stem, marker="o", markevery=[0] if start else [])
            if rep.get("loss_before") is not None:  # the unpruned base on this group: what fine-tuning must regain
                axes[1].axhline(rep["loss_before"], color=line.get_color(), ls=":", lw=0.8)
    axes[1].set_yscale("log")
    axes[1].set_title(
        "stage 2: fine-tuning per group (eps MSE)\nstep 0: just pruned; dotted: the unpruned base on the group"
    )
    axes[1].set_xlabel("step")
    if groups:  # beside the axes: inside, ten groups' legend covered some curves
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_heldout(run: Run, path: Path) -> bool:
    """Every group's held-out loss against fine-tune steps (``finetune.eval_every``), its best marked."""
    curves = {p.stem: read_jsonl(p) for p in sorted((run.path / "metrics" / "heldout").glob("group*.jsonl"))}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, rows in curves.items():
        steps, vals = [r["step"] for r in rows], [r["value"] for r in rows]
        (line,) = ax.plot(steps, vals, marker=".", label=name.replace("group", "group "))
        best = min(range(len(vals)), key=vals.__getitem__)
        ax.plot([steps[best]], [vals[best]], "o", mfc="none", ms=10, color=line.get_color())
    ax.set_xlabel("fine-tune step")
    ax.set_ylabel("held-out eps-MSE (group's timesteps)")
    ax.set_yscale("log")
    ax.set_title("Held-out loss during fine-tuning (lower is better)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_fid_curve(runs: list[Run], path: Path) -> bool:
    """FID and KID of each run's whole progressive model against fine-tune steps (``finetune.fid_n``), 95%
    intervals as bands, the lowest FID ringed (the paper's Fig. 6)."""
    from core.evaluation.curve import read_curve

    curves = {r.name: read_curve(r) for r in runs}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curves.items():
        steps = [r["step"] for r in rows]
        for ax, metric in zip(axes, ("fid", "kid")):
            vals = [r[metric] for r in rows]
            (line,) = ax.plot(steps, vals, marker=".", label=f"{name} (n {rows[0]['n']})")
            ax.fill_between(
                steps,
                [r[f"{metric}_ci"][0] for r in rows],
                [r[f"{metric}_ci"][1] for r in rows],
                color=line.get_color(),
                alpha=0.15,
            )
            best = min(range(len(vals)), key=vals.__getitem__)
            ax.plot([steps[best]], [vals[best]], "o", mfc="none", ms=10, color=line.get_color())
    for ax, metric in zip(axes, ("FID", "KID")):
        ax.set_xlabel("fine-tune step (every group)")
        ax.set_ylabel(f"{metric} of the progressive model")
        ax.set_title(f"{metric} during fine-tuning (lower is better; 95% bands)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_proxy(rounds: list[dict], path: Path, chosen: Optional[dict] = None) -> bool:
    """Every measured candidate's held-out loss per round and group; ringed: the one each group kept
    (``chosen``: ``core.chosen``'s answer; without it, the lowest accepted loss)."""
    if not rounds:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    groups = sorted({r["group_index"] for r in rounds})
    for g in groups:
        rs = [r for r in rounds if r["group_index"] == g and r["loss"] is not None]
        if not rs:
            continue
        by_round = {}
        for r in rs:
            by_round.setdefault(r["round"] + 1, []).append(r["loss"])
        xs = sorted(by_round)
        if max(len(v) for v in by_round.values()) > 1:  # several proposals per round: mean and spread (Fig. 7)
            import numpy as np

            means = [float(np.mean(by_round[x])) for x in xs]
            line = ax.errorbar(
                xs,
                means,
                yerr=[float(np.std(by_round[x])) for x in xs],
                marker="o",
                lw=0.8,
                capsize=3,
                label=f"group {g} (mean, std)",
            )[0]
            ax.scatter([r["round"] + 1 for r in rs], [r["loss"] for r in rs], s=8, color=line.get_color(), alpha=0.5)
        else:
            ax.plot(xs, [by_round[x][0] for x in xs], marker="o", lw=0.8, label=f"group {g}")
        ok = [r for r in rs if r["accepted"]]
        kept = [r for r in ok if r["id"] == ((chosen or {}).get(g) or {}).get("round_id")]
        if kept or (ok and chosen is None):
            best = kept[0] if kept else min(ok, key=lambda r: r["loss"])
            ax.scatter([best["round"] + 1], [best["loss"]], s=140, facecolors="none", edgecolors="k")
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("proxy round")
    ax.set_ylabel("held-out loss of the candidate (log)")
    ax.set_yscale("log")  # groups' losses span two orders of magnitude
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("proxy rounds (circled: the chosen candidate)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: it hides no point
    else:
        ax.text(0.5, 0.5, "no candidate was measured (every answer rejected)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def distinct_points(runs: list[Run]) -> list[tuple]:
    """(legend label, model, GMACs, eval row), one per distinct model and measurement: the base and control
    that a study's arms share (the same file, measured alike) are one point, labelled with how many runs
    share it, not one point per arm."""
    from core.runs import file_sha256

    seen: dict = {}
    for r in runs:
        for model, row in load_eval(r).get("models", {}).items():
            if row.get("fid") is None:
                continue
            path = r.model(model)
            ident = file_sha256(path) if model != "progressive" and path.exists() else (r.name, model)
            key = (model, ident, row.get("fid"), row.get("kid"), row.get("fid_n"))
            seen.setdefault(key, [r.name, model, row["macs"] / 1e9, row, 0])[4] += 1
    many = len(runs) > 1
    return [
        (f"{model} (shared by {n} runs)" if n > 1 else f"{name}/{model}" if many else model, model, macs, row)
        for name, model, macs, row, n in seen.values()
    ]


def plot_fid_macs(runs: list[Run], path: Path) -> bool:
    """FID and KID against MACs, each point with its 95% interval as an error bar."""
    pts = distinct_points(runs)
    if not pts:
        return False
    plt = pyplot()
    many = len(pts) > 6
    fig, axes = plt.subplots(1, 2, figsize=(13 if many else 11, 4.5 if many else 4))
    kind = pts[0][3].get("fid_kind", "").split(" (")[0] or "FID"
    marker = {"base": "o", "control": "^", "uniform": "v", "dense-small": "P", "progressive": "s"}
    xs = _spread([macs for _, _, macs, _ in pts])
    for ax, key, label in ((axes[0], "fid", kind), (axes[1], "kid", "KID")):
        for (name, model, _, row), macs in zip(pts, xs):
            val, ci = row.get(key), row.get(f"{key}_ci")
            if val is None:
                continue
            err = [[max(0.0, val - ci[0])], [max(0.0, ci[1] - val)]] if ci else None
            ax.errorbar([macs], [val], yerr=err, fmt=marker.get(model, "D"), capsize=4, label=name)
        ax.set_xlabel("GMACs per step, averaged over timesteps")
        vals = [row[key] for _, _, _, row in pts if row.get(key) is not None and row[key] > 0]
        if vals and max(vals) > 20 * min(vals):  # one far-off arm (e.g. scratch training) would flatten the rest
            ax.set_yscale("log")
        ax.set_ylabel(label + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.set_title(f"{label} vs MACs, 95% intervals (lower left is better)")
        ax.margins(x=0.15, y=0.1)
    if many:  # one legend beside the plots instead of one over each
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(0.80, 0.5))
        fig.tight_layout(rect=(0, 0, 0.79, 1))
    else:
        for ax in axes:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _spread(xs: list[float], step: float = 0.012) -> list[float]:
    """Points that share an x (the base and its control have the same MACs) moved apart by a small fraction of
    the x range, so that neither hides the other's error bar."""
    span = (max(xs) - min(xs)) or max(abs(xs[0]), 1e-9)
    out = list(xs)
    groups: dict = {}
    for i, x in enumerate(xs):
        groups.setdefault(round(x / span, 6), []).append(i)
    for idx in groups.values():
        for k, i in enumerate(idx):
            out[i] = xs[i] + (k - (len(idx) - 1) / 2) * step * span
    return out


GRID_PX = 384  # a sample grid is drawn at least this wide (pixels enlarged whole, never smoothed)


def side_by_side(paths: dict, out: Path) -> bool:
    """PNG grids (same noise, one per model) pasted side by side with each model's name above its grid, each
    enlarged by a whole factor to at least ``GRID_PX`` wide (32-pixel samples are unreadable at their size)."""
    from PIL import Image

    from core.model.pasting import paste_labelled

    tiles = {name: Image.open(p).convert("RGB") for name, p in paths.items() if p.exists()}
    tiles = {k: t.resize((t.width * f, t.height * f), Image.NEAREST) for k, t in tiles.items() for f in [_factor(t)]}
    if tiles:
        paste_labelled(tiles, out)
    return bool(tiles)


def _factor(tile) -> int:
    return max(1, -(-GRID_PX // max(tile.width, 1)))
