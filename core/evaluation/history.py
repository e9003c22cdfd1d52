"""Training curves and results across runs, as a W&B, MLflow or TensorBoard user reaches for them first: curves
overlaid in one PNG (``stepadapt plot``), and long-format CSV rows (``stepadapt export --csv``).

Curves come from the run folder's ``metrics/STAGE.jsonl`` (one JSON line per logged step: step, loss, mse, vb,
it_s, time); results from ``eval.json``. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.errors import UserError
from core.evaluation.evaluate import load_eval
from core.runs import Run, read_jsonl

# what ``--stage`` may name: a whole-run training stage, or finetune (every group's fine-tune)
CURVE_STAGES = ("base", "control", "uniform", "dense-small", "finetune")
# the numbers of eval.json's models that are written (each with its interval where it has one)
RESULT_METRICS = ("fid", "kid", "precision", "recall", "loss", "macs", "params", "train_steps")


def curve_files(run: Run, stage: str) -> list[tuple[str, Path]]:
    """(label, metrics file) of a stage of ``run``: ``finetune`` is one curve per group that has one."""
    if stage == "finetune":
        return [(f"{run.name}/{p.stem}", p) for p in sorted(run.path.glob("metrics/group*.jsonl"))]
    return [(f"{run.name}/{stage}", run.metrics(stage))] if run.metrics(stage).is_file() else []


def curves(runs: list[Run], stages: list[str], metric: str) -> list[dict]:
    """Every curve of ``metric`` in ``stages`` of ``runs``: {"label", "run", "stage", "steps", "values"}. A stage
    that starts from the trained base (fine-tunes, the controls) is drawn where stage 1 ended, continuing its
    curve: its steps are offset by the base's (unless it logs them so already)."""
    bad = [s for s in stages if s not in CURVE_STAGES]
    if bad:
        raise UserError(f"--stage {','.join(bad)}: choose among {', '.join(CURVE_STAGES)}")
    out = []
    for run in runs:
        base = run.config["train"]["steps"]  # a fork of a milestone has the milestone's step here
        for stage in stages:
            for label, path in curve_files(run, stage):
                rows = [r for r in read_jsonl(path) if isinstance(r.get(metric), (int, float))]
                if rows:
                    start = base if stage != "base" and rows[0]["step"] <= base else 0
                    out.append(
                        {
                            "label": label,
                            "run": run.name,
                            "stage": path.stem,
                            "steps": [start + r["step"] for r in rows],
                            "values": [float(r[metric]) for r in rows],
                        }
                    )
    return out


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, as TensorBoard's slider: s_i = w s_(i-1) + (1 - w) x_i, debiased by
    1 - w^i so the first points are not pulled toward zero; weight 0 leaves the curve as it is."""
    if not 0 <= weight < 1:
        raise UserError(f"--smooth {weight}: give a weight in [0, 1)")
    out, s = [], 0.0
    for i, x in enumerate(values, 1):
        s = weight * s + (1 - weight) * x
        out.append(s / (1 - weight**i))
    return out


def plot_curves(found: list[dict], metric: str, path: Path, weight: float = 0.0, log_y: bool = True) -> None:
    """The curves overlaid on one axis (log scale by default: losses fall over decades), one colour per run
    and one line style per stage, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({c["run"] for c in found})
    colours = plt.get_cmap("tab10")
    styles = {"base": "-", "control": "--", "uniform": ":", "dense-small": "-."}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for c in found:
        values = smooth(c["values"], weight) if weight else c["values"]
        style = styles.get(c["stage"], "-")
        width = 1.6 if c["stage"] in styles else 0.9
        ax.plot(c["steps"], values, style, color=colours(runs.index(c["run"]) % 10), lw=width, label=c["label"])
    ax.set_xlabel("step")
    ax.set_ylabel(metric + (f" (smoothed, weight {weight})" if weight else ""))
    if log_y and all(v > 0 for c in found for v in c["values"]):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(found) > 12 else 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def result_rows(run: Run) -> list[dict]:
    """One row per model and metric of the run's evaluation: run, model, metric, value, lo, hi (the 95%
    interval where there is one), n (samples behind FID/KID)."""
    ev = load_eval(run)
    rows = []
    for model, r in (ev.get("models") or {}).items():
        for metric in RESULT_METRICS:
            if not isinstance(r.get(metric), (int, float)):
                continue
            ci = r.get(f"{metric}_ci") or [None, None]
            n = r.get("fid_n") if metric in ("fid", "kid", "precision", "recall") else None
            rows.append(
                {
                    "run": run.name,
                    "model": model,
                    "metric": metric,
                    "value": r[metric],
                    "lo": ci[0],
                    "hi": ci[1],
                    "n": n,
                }
            )
    for c in ev.get("comparisons") or []:
        d = c.get(c.get("primary") or "fid") or {}
        if "diff" in d:
            rows.append(
                {
                    "run": run.name,
                    "model": f"{c['model']}-vs-{c['against']}",
                    "metric": f"{c.get('primary', 'fid')}_diff",
                    "value": d["diff"],
                    "lo": d["ci"][0],
                    "hi": d["ci"][1],
                    "n": None,
                }
            )
    return rows


def history_rows(run: Run, metric: Optional[str] = None) -> list[dict]:
    """The training curves as rows: run, stage, step, key, value (every logged number, or ``metric`` only)."""
    rows = []
    for stage in CURVE_STAGES:
        for _, path in curve_files(run, stage):
            for r in read_jsonl(path):
                for key, value in r.items():
                    if key not in ("step", "time") and isinstance(value, (int, float)) and metric in (None, key):
                        rows.append(
                            {"run": run.name, "stage": path.stem, "step": r["step"], "key": key, "value": value}
                        )
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    """``rows`` as CSV with a header (the keys of the first row), written atomically."""
    import csv
    import io

    from core.runs import atomic_write_bytes

    if not rows:
        raise UserError(f"nothing to write to {path}: the runs have no such rows yet")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue().encode()))
