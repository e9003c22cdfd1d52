"""The results' tables: comparisons, held-out losses, the swap test, `eval`, scored folders, studies."""

from __future__ import annotations

import json

import click
from rich.markup import escape

from core.evaluation.text import change, fmt, with_ci

from ..common import console
from .common import titled_table, verdict_line


def print_comparison(data: dict) -> None:
    if not data["rows"]:
        click.echo("no evaluation yet (the eval stage writes RUN/eval.json)")
        return
    fid_kind = next((r["fid_kind"] for r in data["rows"] if r.get("fid_kind")), None)
    n = next((r["fid_n"] for r in data["rows"] if r.get("fid_n")), None)
    tab = titled_table(
        "Table 1 style: cost per sample averaged over timesteps; quality with 95% intervals"
        + (f"; FID is {fid_kind}, n = {n}" if fid_kind else ""),
        (
            "run",
            "model",
            "FID",
            "KID x1e3",
            "precision",
            "recall",
            "MACs vs base",
            "params (M)",
            "held-out loss",
            "train steps",
        ),
        "right",
    )
    for r in data["rows"]:
        tab.add_row(
            escape(r["run"]),
            r["model"],
            with_ci(r["fid"], r.get("fid_ci"), "{:.2f}"),
            with_ci(r.get("kid"), r.get("kid_ci"), "{:.2f}", 1e-3),
            fmt(r.get("precision"), "{:.2f}"),
            fmt(r.get("recall"), "{:.2f}"),
            fmt(r.get("macs_ratio"), "{:.3f}"),
            f"{r['params'] / 1e6:.3f}",
            with_ci(r["loss"], r.get("loss_ci"), "{:.4f}"),
            str(r["train_steps"]),
        )
    con = console()
    con.print(tab)
    for run, comps in data.get("comparisons", {}).items():
        for c in comps:
            con.print(
                escape(f"{run}: {verdict_line(c)}" if len(data["runs"]) > 1 else verdict_line(c)), highlight=False
            )
    for run, rows in data.get("loss_groups", {}).items():
        print_loss_table(run, rows)
    if len(data["runs"]) == 1:
        from core.evaluation.text import bottom_line

        line = bottom_line(next(iter(data.get("comparisons", {}).values()), []))
        if line:
            con.print(escape(line), highlight=False)
    if data.get("bases_differ"):
        con.print(
            "[yellow]warning:[/] these runs have different stage-1 models, so their differences include "
            "the base's training, not only what their configs say:",
            highlight=False,
        )
        for name, b in data["bases"].items():
            con.print(escape(f"  {name}: {b['origin']}, base sha256 {(b['sha256'] or 'none')[:12]}"), highlight=False)
    elif data.get("bases"):
        sha = next(iter(data["bases"].values()))["sha256"] or "none"
        con.print(escape(f"all {len(data['bases'])} runs share one stage 1 (base sha256 {sha[:12]})"), highlight=False)
    if data["config_differences"] and len(data["runs"]) > 1:
        from rich.table import Table

        t2 = Table(title="config keys that differ")
        t2.add_column("key")
        for name in data["runs"]:
            t2.add_column(escape(name))
        for k, vals in data["config_differences"].items():
            t2.add_row(k, *[escape(json.dumps(v)) for v in vals])
        con.print(t2)


def print_loss_table(run: str, rows: list[dict]) -> None:
    """Held-out eps-MSE per timestep group for each model, and the progressive model's change against base and
    control ('same' when the paired 95% interval of the difference holds zero)."""
    if not rows:
        return
    models = [m for m in ("base", "control", "uniform", "dense-small", "progressive") if m in rows[0]]
    against = [m for m in ("base", "control", "uniform", "dense-small") if any(r.get(f"vs_{m}") for r in rows)] or [
        "base"
    ]
    tab = titled_table(
        f"{run}: held-out loss (eps-MSE) per timestep group",
        ("group", *models, *(f"progressive vs {m}" for m in against)),
        "right",
    )
    for r in rows:
        tab.add_row(str(r["group"]), *[fmt(r.get(m)) for m in models], *(change(r.get(f"vs_{m}")) for m in against))
    console().print(tab)


def print_swap(run: str, swap: dict) -> None:
    """The swap test: one row per group, its FID/KID with the base everywhere else, and the change against the
    base with its paired interval."""
    from core.evaluation.swap import swap_summary

    tab = titled_table(
        f"{run}: swap test, the base with one group's own model ({swap['fid_kind']}, n = {swap['n']})",
        ("group", "t", "budget", "MACs vs base", "FID", "FID - base [95%]", "verdict"),
        "right",
    )
    for r in swap["rows"]:
        d = r["diff"]["fid"]
        tab.add_row(
            str(r["group"]),
            f"{r['t_start']}-{r['t_end']}",
            f"{r['budget_ratio']:.2f}",
            f"{r['macs_ratio']:.3f}",
            with_ci(r["fid"], r["fid_ci"], "{:.3f}"),
            f"{d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]",
            d["verdict"],
        )
    console().print(tab)
    console().print(swap_summary(swap), markup=False, highlight=False)


def print_eval(result: dict, ev: dict) -> None:
    from core.evaluation.evaluate import loss_table

    tab = titled_table(
        f"{result['run']}: {result['kind']}, {result['n']} samples, {result['steps']} steps, 95% intervals",
        (
            "model",
            "FID",
            "KID x1e3",
            "precision",
            "recall",
            "params (M)",
            "MACs avg T (G)",
            f"MACs avg {result['steps']} steps (G)",
            "held-out loss",
            "train steps",
        ),
        "right",
    )
    for w, r in result["models"].items():
        tab.add_row(
            w,
            with_ci(r["fid"], r["fid_ci"], "{:.3f}"),
            with_ci(r["kid"], r["kid_ci"], "{:.2f}", 1e-3),
            fmt(r["precision"], "{:.2f}"),
            fmt(r["recall"], "{:.2f}"),
            f"{r['params'] / 1e6:.3f}",
            f"{r['macs'] / 1e9:.4f}",
            f"{r['macs_sampled'] / 1e9:.4f}",
            with_ci(r["loss"], r["loss_ci"], "{:.4f}"),
            str(r["train_steps"]),
        )
    console().print(tab)
    for c in result["comparisons"]:
        console().print(escape(verdict_line(c)), highlight=False)
    print_loss_table(result["run"], loss_table({w: ev["models"][w] for w in result["models"]}, result["comparisons"]))
    print_fid_curve(result.get("fid_curve") or [])
    if result["against"]:
        ok = result["checks"]["against_ok"]
        console().print(
            escape(f"against: {verdict_line(result['against'])} -> {'ok' if ok else 'WORSE'}"), highlight=False
        )
    if result["checks"]["max_fid"] is not None:
        console().print(
            f"max FID {result['checks']['max_fid']}: {'ok' if result['checks']['max_fid_ok'] else 'MISSED'}"
        )


def print_fid_curve(rows: list[dict]) -> None:
    """FID/KID of the whole progressive model at each fine-tune step (``finetune.fid_n``), the lowest marked."""
    if not rows:
        return
    best = min(rows, key=lambda r: r["fid"])["step"]
    tab = titled_table(
        f"progressive model during fine-tuning ({rows[0]['n']} samples per step, same noise), 95% intervals",
        ("fine-tune step", "FID", "KID x1e3", ""),
        "right",
    )
    for r in rows:
        tab.add_row(
            str(r["step"]),
            with_ci(r["fid"], r["fid_ci"], "{:.3f}"),
            with_ci(r["kid"], r["kid_ci"], "{:.2f}", 1e-3),
            "lowest FID" if r["step"] == best else "",
        )
    console().print(tab)


def print_image_scores(out: dict) -> None:
    tab = titled_table(
        f"{out['kind']} against {out['dataset']} ({out['ref_n']} reference images), 95% intervals",
        ("folder", "images", "FID", "KID x1e3", "precision", "recall"),
        "right",
    )
    for f in out["folders"]:
        tab.add_row(
            escape(f["path"]),
            str(f["n"]),
            with_ci(f["fid"], f["fid_ci"]),
            with_ci(f["kid"], f["kid_ci"], "{:.2f}", 1e-3),
            fmt(f["precision"], "{:.2f}"),
            fmt(f["recall"], "{:.2f}"),
        )
    console().print(tab)
    b = out.get("between")
    if b:
        con = console()
        con.print(f"FID between the two folders: {b['fid_between']:.4f}")
        for k in ("fid", "kid"):
            d = b[k]
            con.print(
                f"{k.upper()} first - second: {d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
                f"({'paired by file name' if d['paired'] else 'unpaired'}): {d['verdict']}",
                highlight=False,
            )


class LiveJobs:
    """A rich table of a run's jobs, redrawn while the pipeline runs (terminal only)."""

    def __init__(self, title: str):
        from rich.live import Live

        self.title = title
        self.live = Live(refresh_per_second=4, transient=False, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def say(self, line: str) -> None:
        self.live.console.print(line, markup=False, highlight=False)

    def __call__(self, jobs: list[dict]) -> None:
        from rich.progress_bar import ProgressBar

        tab = titled_table(self.title, ("job", "stage", "group", "status", "progress", "", "note"))
        tab.expand = False
        for j in jobs:
            if j["stage"] == "pipeline":
                continue
            total, done = j["total"] or 0, j["progress"] or 0
            progress = ProgressBar(total=total or 1, completed=done if total else 0, width=24)
            style = {
                "succeeded": "green",
                "failed": "red",
                "killed": "yellow",
                "preempted": "yellow",
                "lost": "red",
            }.get(j["status"], "")
            tab.add_row(
                str(j["id"]),
                j["stage"],
                "" if j["group_index"] is None else str(j["group_index"]),
                f"[{style}]{j['status']}[/]" if style else j["status"],
                progress,
                f"{done}/{total}" if total else "",
                (j["message"] or "")[:60],
            )
        self.live.update(tab)

    def stop(self) -> None:
        self.live.stop()


def print_study(res: dict) -> None:
    """A study's table: ours (preset, intervals) beside the paper's published values."""
    kind = next((r["fid_kind"] for r in res["rows"] if r.get("fid_kind")), "FID").split(" (")[0]
    tab = titled_table(
        f"study {res['id']}: {res['title']}",
        ("row", f"ours {kind} [95%]", "MACs/base", "params M", "steps", *[f"paper {c}" for c in res["paper_columns"]]),
        "right",
    )
    for r in res["rows"]:
        tab.add_row(
            escape(r["label"]),
            with_ci(r.get("fid"), r.get("fid_ci"), "{:.2f}"),
            fmt(r.get("macs_ratio"), "{:.3f}"),
            fmt(r.get("params"), "{:.3f}", 1e6),
            "-" if r.get("train_steps") is None else str(r["train_steps"]),
            *[escape(str(r["paper"].get(c, "-"))) for c in res["paper_columns"]],
        )
    con = console()
    con.print(tab)
    con.print(
        escape(
            f"ours: preset {res['preset']}, shared base {res['base']}; paper: published CIFAR-10 / "
            "ImageNet-64 values, another scale (read the direction of differences, not the values)"
        ),
        highlight=False,
    )
    if res.get("runs"):
        con.print(escape("runs: " + ", ".join(f"{n} {s}" for n, s in res["runs"].items())), highlight=False)


def print_study_list(defs: list[dict], started: list[dict]) -> None:
    tab = titled_table("study definitions (stepadapt study NAME)", ("name", "arms", "title"))
    for d in defs:
        tab.add_row(escape(d["name"]), str(d["arms"]), escape(d["title"]))
    con = console()
    con.print(tab)
    if started:
        t2 = titled_table("started studies (stepadapt study show ID)", ("id", "study", "preset", "base", "runs"))
        for s in started:
            t2.add_row(escape(s["id"]), escape(s["study"]), escape(s["preset"]), escape(s["base"]), str(s["runs"]))
        con.print(t2)
