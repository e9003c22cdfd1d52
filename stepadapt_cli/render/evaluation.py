"""The results' tables at any width (`eval`, `compare`, the end of `show` and `run`): 95% intervals in their
narrow form (``0.213±0.061``), the run column only when there are several runs, a run's name never cut, the
least needed columns left out when the console is narrow, runs not yet evaluated listed as such."""

from __future__ import annotations

import json

from rich.markup import escape

from core.evaluation.text import FID, bottom_line, change, fmt, narrow_ci, verdict_text

from ..common import console, console_width
from .common import Col, fitted_table

MODELS = ("base", "control", "uniform", "dense-small", "progressive")
NOTE = "± is the larger half of the 95% interval"


def _say(con, text: str) -> None:
    con.print(escape(text), highlight=False)


def _verdicts(con, comps: list[dict], run: str, width: int) -> None:
    """The verdicts, under their run's name when several runs are shown (one line each at 80 columns)."""
    if run and comps:
        _say(con, f"{run}:")
    for c in comps:
        _say(con, ("  " if run else "") + verdict_text(c, short=width < 120))


def _score_cols() -> list:
    """The columns a table of models opens with: the model, FID, KID, precision and recall."""
    return [
        Col("model"),
        Col("FID ±95%", justify="right"),
        Col("KID x1e3 ±95%", drop=3, justify="right"),
        Col("precision", drop=6, justify="right"),
        Col("recall", drop=7, justify="right"),
    ]


def print_comparison(data: dict, verdicts: bool = True) -> None:
    """Table 1 style rows of every evaluated run, the runs without an evaluation marked, the verdicts (left out
    with ``verdicts=False``: `show` says them first), the per-group losses, whether the runs share stage 1, and
    the config keys that differ."""
    con, width = console(), console_width()
    many = len(data["runs"]) > 1
    if not data["rows"] and not many:
        con.print("no evaluation yet (the eval stage writes RUN/eval.json; run stepadapt eval RUN)")
        return
    kind = next((r["fid_kind"] for r in data["rows"] if r.get("fid_kind")), None)
    n = next((r["fid_n"] for r in data["rows"] if r.get("fid_n")), None)
    cols = [
        *((Col("run", whole=True),) if many else ()),
        *_score_cols(),
        Col("MACs/base", drop=1, justify="right"),
        Col("params M", drop=5, justify="right"),
        Col("held-out loss ±95%", drop=2, justify="right"),
        Col("train steps", drop=4, justify="right"),
    ]
    rows = [
        [
            *((escape(r["run"]),) if many else ()),
            r["model"],
            narrow_ci(r["fid"], r.get("fid_ci"), FID),
            narrow_ci(r.get("kid"), r.get("kid_ci"), FID, 1e-3),
            fmt(r.get("precision"), "{:.2f}"),
            fmt(r.get("recall"), "{:.2f}"),
            fmt(r.get("macs_ratio"), "{:.3f}"),
            fmt(r.get("params"), "{:.3f}", 1e6),
            narrow_ci(r["loss"], r.get("loss_ci"), "{:.4f}"),
            str(r["train_steps"]),
        ]
        for r in data["rows"]
    ]
    missing = data.get("not_evaluated", [])
    for name in missing:
        rows.append([*((escape(name),) if many else ()), "[dim]not evaluated[/]", *["-"] * (len(cols) - 1 - many)])
    if rows:
        con.print(fitted_table("Table 1 style", cols, rows, width))
        _say(
            con,
            "MACs and params averaged over timesteps; "
            + NOTE
            + (f"; FID is {kind}, n = {n}" if kind else "")
            + (f". Not evaluated yet: {', '.join(missing)} (stepadapt eval RUN)" if missing else ""),
        )
    for run, comps in data.get("comparisons", {}).items() if verdicts else ():
        _verdicts(con, comps, run if many else "", width)
    for run, rows_ in data.get("loss_groups", {}).items():
        print_loss_table(run, rows_)
    if not many and verdicts:
        line = bottom_line(next(iter(data.get("comparisons", {}).values()), []))
        if line:
            _say(con, line)
    _print_bases(con, data)
    if data["config_differences"] and many:
        rows = [
            [escape(k), *[escape(_cut(json.dumps(v))) for v in vals]] for k, vals in data["config_differences"].items()
        ]
        cols = [Col("key", wraps=16), *[Col(name, whole=True) for name in data["runs"]]]
        con.print(fitted_table("config keys that differ", cols, rows, width))


def _cut(text: str, most: int = 24) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _print_bases(con, data: dict) -> None:
    if data.get("bases_differ"):
        con.print(
            "[yellow]warning:[/] these runs have different stage-1 models, so their differences include "
            "the base's training, not only what their configs say:",
            highlight=False,
        )
        for name, b in data["bases"].items():
            _say(con, f"  {name}: {b['origin']}, base sha256 {(b['sha256'] or 'none')[:12]}")
    elif data.get("bases"):
        sha = next(iter(data["bases"].values()))["sha256"] or "none"
        _say(con, f"all {len(data['bases'])} runs share one stage 1 (base sha256 {sha[:12]})")


def print_loss_table(run: str, rows: list[dict]) -> None:
    """Held-out eps-MSE per timestep group for each model, and the progressive model's change against base and
    control ('same' when the paired 95% interval of the difference holds zero)."""
    if not rows:
        return
    models = [m for m in MODELS if m in rows[0]]
    against = [m for m in MODELS[:-1] if any(r.get(f"vs_{m}") for r in rows)] or ["base"]
    cols = [
        Col("group", justify="right"),
        *[Col(m, drop=3 if m in ("uniform", "dense-small") else 0, justify="right") for m in models],
        *[Col(f"prog vs {m}", drop=2 if m in ("uniform", "dense-small") else 1, justify="right") for m in against],
    ]
    table = [
        [str(r["group"]), *[fmt(r.get(m)) for m in models], *(change(r.get(f"vs_{m}")) for m in against)] for r in rows
    ]
    console().print(fitted_table(f"{run}: held-out loss (eps-MSE) per timestep group", cols, table, console_width()))


def print_fid_curve(rows: list[dict]) -> None:
    """FID/KID of the whole progressive model at each fine-tune step (``finetune.fid_n``), the lowest marked."""
    if not rows:
        return
    best = min(rows, key=lambda r: r["fid"])["step"]
    cols = [Col("step", justify="right"), Col("FID ±95%", justify="right"), Col("KID x1e3 ±95%", drop=1), Col("")]
    table = [
        [
            str(r["step"]),
            narrow_ci(r["fid"], r["fid_ci"], FID),
            narrow_ci(r["kid"], r["kid_ci"], FID, 1e-3),
            "lowest FID" if r["step"] == best else "",
        ]
        for r in rows
    ]
    title = f"progressive model during fine-tuning ({rows[0]['n']} samples per step, same noise)"
    console().print(fitted_table(title, cols, table, console_width()))


def print_eval(result: dict, ev: dict) -> None:
    """`stepadapt eval`'s tables: one row per model, the verdicts, the per-group losses, the FID curve, the
    gates (--against, --max-fid)."""
    from core.evaluation.evaluate import loss_table

    con, width = console(), console_width()
    s = result["steps"]
    cols = [
        *_score_cols(),
        Col("params M", drop=5, justify="right"),
        Col("GMACs avg T", drop=1, justify="right"),
        Col(f"GMACs avg {s} steps", drop=4, justify="right"),
        Col("held-out loss ±95%", drop=2, justify="right"),
        Col("train steps", drop=8, justify="right"),
    ]
    rows = [
        [
            w,
            narrow_ci(r["fid"], r["fid_ci"], FID),
            narrow_ci(r["kid"], r["kid_ci"], FID, 1e-3),
            fmt(r["precision"], "{:.2f}"),
            fmt(r["recall"], "{:.2f}"),
            f"{r['params'] / 1e6:.3f}",
            f"{r['macs'] / 1e9:.4f}",
            f"{r['macs_sampled'] / 1e9:.4f}",
            narrow_ci(r["loss"], r["loss_ci"], "{:.4f}"),
            str(r["train_steps"]),
        ]
        for w, r in result["models"].items()
    ]
    con.print(fitted_table(f"{result['run']}: {result['n']} samples, {s} steps", cols, rows, width))
    _say(con, f"FID is {result['kind']}; {NOTE}; GMACs averaged over all T and over the {s} sampled steps")
    _verdicts(con, result["comparisons"], "", width)
    print_loss_table(result["run"], loss_table({w: ev["models"][w] for w in result["models"]}, result["comparisons"]))
    print_fid_curve(result.get("fid_curve") or [])
    if result["against"]:
        ok = result["checks"]["against_ok"]
        _say(con, f"against: {verdict_text(result['against'], short=width < 120)} -> {'ok' if ok else 'WORSE'}")
    if result["checks"]["max_fid"] is not None:
        con.print(f"max FID {result['checks']['max_fid']}: {'ok' if result['checks']['max_fid_ok'] else 'MISSED'}")
