"""A run's report: one self-contained folder with ``index.html``, ``report.md`` and the figures they show."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from core.evaluation.evaluate import load_eval
from core.runs import Run, read_json, read_jsonl, writing_in


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(run: Run, path: Path) -> bool:
    base = read_jsonl(run.metrics("base"))
    groups = sorted(run.path.glob("metrics/group*.jsonl"))
    if not base and not groups:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    if base:
        axes[0].plot([r["step"] for r in base], [r["loss"] for r in base], label="loss (hybrid)")
        axes[0].plot([r["step"] for r in base], [r["mse"] for r in base], label="L_simple (eps MSE)")
        axes[0].set_yscale("log")
        axes[0].legend()
    axes[0].set_title("stage 1: base model")
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
    plt = _plt()
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
    plt = _plt()
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


def proxy_rounds(run: Run) -> list[dict]:
    from core.store import open_store

    db = run.path.parent / "stepadapt.db"
    if not db.exists():
        return []
    return open_store(run.path.parent).rounds(run.name)


def plot_proxy(rounds: list[dict], path: Path) -> bool:
    if not rounds:
        return False
    plt = _plt()
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
        if ok:
            best = min(ok, key=lambda r: r["loss"])
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


def _distinct_points(runs: list[Run]) -> list[tuple]:
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
    pts = _distinct_points(runs)
    if not pts:
        return False
    plt = _plt()
    many = len(pts) > 6
    fig, axes = plt.subplots(1, 2, figsize=(13 if many else 11, 4.5 if many else 4))
    kind = pts[0][3].get("fid_kind", "").split(" (")[0] or "FID"
    marker = {"base": "o", "control": "^", "uniform": "v", "dense-small": "P", "progressive": "s"}
    for ax, key, label in ((axes[0], "fid", kind), (axes[1], "kid", "KID")):
        for name, model, macs, row in pts:
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


def side_by_side(paths: dict, out: Path) -> bool:
    """PNG grids (same noise, one per model) pasted side by side with each model's name above its grid."""
    from PIL import Image

    from core.model.sampling import paste_labelled

    tiles = {name: Image.open(p).convert("RGB") for name, p in paths.items() if p.exists()}
    if tiles:
        paste_labelled(tiles, out)
    return bool(tiles)


def write_report(run: Run, baselines: list[Run], out: Path) -> tuple[Path, Path]:
    """``out/index.html`` and ``out/report.md`` with the same sections: the Table 1 style comparison, the
    figures (schedule, losses, proxy rounds, FID vs MACs, samples) and the proxy rounds."""
    with writing_in(out):  # a full disk or a read-only folder: one line, not a traceback
        out.mkdir(parents=True, exist_ok=True)
        ev = load_eval(run)
        full = ev.get("models", {}).get("base", {}).get("macs", 1.0)
        rounds = proxy_rounds(run)
        sections = [
            *_comparison(run, baselines, ev),
            *_figures(run, baselines, out, rounds, full),
            *_proxy_table(rounds, full),
            *_jobs_table(run, out),
            ("pre", "Resolved config", json.dumps(run.config, indent=2, sort_keys=True)),
        ]
        meta, cfg = run.meta, run.config
        title = f"Report: {run.name}"
        facts = [
            ("preset", str(cfg.get("preset"))),
            ("prune method", cfg["prune"]["method"]),
            ("config", str(meta.get("config_hash"))),
            ("seed", str(meta.get("seed"))),
            ("git", str(meta.get("git_sha"))[:10]),
        ]
        md_path, html_path = out / "report.md", out / "index.html"
        md_path.write_text(_markdown(title, facts, sections))
        html_path.write_text(_html(title, facts, sections))
        return html_path, md_path


# a section is ("table", title, note, head, rows), ("figure", title, file, caption), ("text", title, lines) or
# ("pre", title, text); a table cell is text, or (text, href) for a link
def _comparison(run: Run, baselines: list[Run], ev: dict) -> list[tuple]:
    from core.evaluation.evaluate import loss_table
    from core.evaluation.text import bottom_line, change, verdict_text
    from core.evaluation.text import with_ci as ci

    rows = []
    for r in [run, *baselines]:
        models = load_eval(r).get("models", {})
        base_macs = models.get("base", {}).get("macs")
        for model in [m for m in ("base", "control", "uniform", "dense-small", "progressive") if m in models]:
            row = models[model]
            rows.append(
                [
                    r.name,
                    model,
                    ci(row.get("fid"), row.get("fid_ci")),
                    ci(row.get("kid"), row.get("kid_ci"), "{:.2f}", 1e-3),
                    "-" if row.get("precision") is None else f"{row['precision']:.2f}",
                    "-" if row.get("recall") is None else f"{row['recall']:.2f}",
                    f"{row['macs'] / base_macs:.3f}" if base_macs else "-",
                    f"{row['params'] / 1e6:.3f}",
                    ci(row["loss"], row.get("loss_ci"), "{:.5f}"),
                    str(row["train_steps"]),
                ]
            )
    if not rows:
        return []
    head = [
        "run",
        "model",
        "FID [95%]",
        "KID x1e3 [95%]",
        "precision",
        "recall",
        "MACs vs base",
        "params (M)",
        "held-out loss [95%]",
        "train steps",
    ]
    kind = next((m.get("fid_kind") for m in ev.get("models", {}).values() if m.get("fid_kind")), None)
    n = next((m.get("fid_n") for m in ev.get("models", {}).values() if m.get("fid_n")), None)
    out = [
        (
            "table",
            "Table 1 style",
            (f"FID here is {kind}, n = {n}. " if kind else "")
            + "Control: stage 1 trained on for the steps and images of every group's fine-tune together.",
            head,
            rows,
        )
    ]
    comps = ev.get("comparisons", [])
    if comps:
        out.append(
            (
                "text",
                "Verdicts",
                [x for x in [bottom_line(comps)] if x]
                + [verdict_text(c) for c in comps]
                + [
                    "BETTER / WORSE: the 95% interval of the difference excludes zero; paired: every model's "
                    "samples start from the same noise, resampled with the same indices."
                ],
            )
        )
    table = loss_table(ev.get("models", {}), comps)
    if table:
        models = [m for m in ("base", "control", "uniform", "dense-small", "progressive") if m in table[0]]
        extra = [c for c in ("uniform", "dense-small") if c in table[0]]  # the controls at equal inference cost
        lrows = [
            [
                str(t["group"]),
                *[f"{t[m]:.5f}" for m in models],
                *[change(t.get(k)) for k in ("vs_base", "vs_control", *(f"vs_{c}" for c in extra))],
            ]
            for t in table
        ]
        out.append(
            (
                "table",
                "Held-out loss (eps-MSE) per timestep group",
                "same: the paired 95% interval of the difference holds zero.",
                [
                    "group",
                    *models,
                    "progressive vs base",
                    "progressive vs control",
                    *(f"progressive vs {c}" for c in extra),
                ],
                lrows,
            )
        )
    return out


def _figures(run: Run, baselines: list[Run], out: Path, rounds: list[dict], full: float) -> list[tuple]:
    from core.method.schedule import plot_schedule, run_schedule

    figs = []
    if run.schedule_file().exists():
        plot_schedule(run_schedule(run), out / "schedule.png")
        figs.append(
            ("figure", "Schedule", "schedule.png", "SNR (dB) and MACs budget per timestep, with the group bounds")
        )
    if plot_losses(run, out / "losses.png"):
        figs.append(("figure", "Training losses", "losses.png", "stage 1 and every group's fine-tune"))
    if plot_heldout(run, out / "heldout.png"):
        figs.append(
            (
                "figure",
                "Held-out loss during fine-tuning",
                "heldout.png",
                "each group's held-out eps-MSE on its timesteps every finetune.eval_every steps (step 0: just "
                "pruned); the ring marks the best, which finetune.keep best uses (the paper's Fig. 6)",
            )
        )
    if plot_fid_curve([run], out / "fid_curve.png"):
        figs.append(
            (
                "figure",
                "FID during fine-tuning",
                "fid_curve.png",
                "the whole progressive model, assembled from every group's weights at each finetune.eval_every "
                "step, from finetune.fid_n samples with the same noise at every step (the paper's Fig. 6)",
            )
        )
    if plot_proxy(rounds, out / "proxy.png"):
        figs.append(
            ("figure", "Proxy rounds", "proxy.png", "held-out loss of every candidate the proxy proposed, per group")
        )
    if plot_fid_macs([run, *baselines], out / "fid_macs.png"):
        figs.append(
            (
                "figure",
                "FID and KID vs MACs",
                "fid_macs.png",
                "base, control and progressive models (and baselines), 95% intervals as error bars",
            )
        )
    grids = {w: run.samples() / f"eval_{w}.png" for w in ("base", "control", "uniform", "dense-small", "progressive")}
    if side_by_side(grids, out / "samples.png"):
        figs.append(
            (
                "figure",
                "Samples, same noise",
                "samples.png",
                "the first 64 evaluation samples of each model, from the same noise (left to right: "
                + ", ".join(w for w, p in grids.items() if p.exists())
                + ")",
            )
        )
    else:
        for which in ("base", "control", "uniform", "dense-small", "progressive"):
            src = next(iter(sorted(run.samples().glob(f"{which}_s*_seed0.png"))), None)
            if src is not None:
                shutil.copyfile(src, out / f"samples_{which}.png")
                figs.append(("figure", f"Samples: {which}", f"samples_{which}.png", src.name))
    return figs


def _jobs_table(run: Run, out: Path) -> list[tuple]:
    """Every job of the run with its wall time and a link to its log (stage timings)."""
    import datetime as dt
    import os

    from core.store import open_store

    if not (run.path.parent / "stepadapt.db").exists():
        return []

    def secs(j):
        try:
            took = dt.datetime.fromisoformat(j["ended"]) - dt.datetime.fromisoformat(j["started"])
            return f"{took.total_seconds():.0f}"
        except (TypeError, ValueError):
            return "-"

    rows = [
        [
            str(j["id"]),
            j["stage"],
            "" if j["group_index"] is None else str(j["group_index"]),
            j["status"],
            secs(j),
            (os.path.basename(j["log_path"]), os.path.relpath(j["log_path"], out)) if j["log_path"] else "-",
        ]
        for j in open_store(run.path.parent).jobs(run.name)
    ]
    return (
        [
            (
                "table",
                "Jobs and stage timings",
                "wall time of each job in seconds; the log beside it.",
                ["job", "stage", "group", "status", "seconds", "log"],
                rows,
            )
        ]
        if rows
        else []
    )


def _proxy_table(rounds: list[dict], full: float) -> list[tuple]:
    rows = [
        [
            str(r["group_index"]),
            str(r["round"] + 1),
            "-" if r["macs"] is None else f"{r['macs'] / full:.3f}",
            "-" if r["loss"] is None else f"{r['loss']:.5f}",
            "yes" if r["accepted"] else "no",
            (r["reason"] or "")[:80],
        ]
        for r in rounds
    ]
    head = ["group", "round", "MACs / F", "loss", "accepted", "reason"]
    return [("table", "Proxy rounds", "", head, rows)] if rows else []


def _markdown(title: str, facts: list[tuple], sections: list[tuple]) -> str:
    md = [f"# {title}", "", ", ".join(f"{k} `{v}`" for k, v in facts), ""]
    for sec in sections:
        if sec[0] == "table":
            _, name, note, head, rows = sec
            md += [f"## {name}", ""] + ([note, ""] if note else [])
            md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            md += [
                "| " + " | ".join(c if isinstance(c, str) else f"[{c[0]}]({c[1]})" for c in r) + " |" for r in rows
            ] + [""]
        elif sec[0] == "text":
            md += [f"## {sec[1]}", ""] + [f"- {line}" for line in sec[2]] + [""]
        elif sec[0] == "pre":
            md += [f"## {sec[1]}", "", "```", sec[2], "```", ""]
        else:
            _, name, f, cap = sec
            md += [f"## {name}", "", f"![{cap}]({f})", "", f"*{cap}*", ""]
    return "\n".join(md)


def _cell(c) -> str:
    """A table cell: text, or (text, href) for a link."""
    if isinstance(c, str):
        return f"<td>{html.escape(c)}</td>"
    return f'<td><a href="{html.escape(c[1])}">{html.escape(c[0])}</a></td>'


def _html(title: str, facts: list[tuple], sections: list[tuple]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", "<p>" + ", ".join(f"{e(k)} <code>{e(v)}</code>" for k, v in facts) + "</p>"]
    for sec in sections:
        if sec[0] == "table":
            _, name, note, head, rows = sec
            body.append(f"<h2>{e(name)}</h2>" + (f"<p>{e(note)}</p>" if note else ""))
            body.append(
                "<table><tr>"
                + "".join(f"<th>{e(c)}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
                + "</table>"
            )
        elif sec[0] == "text":
            body.append(f"<h2>{e(sec[1])}</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in sec[2]) + "</ul>")
        elif sec[0] == "pre":
            body.append(f"<h2>{e(sec[1])}</h2><details><summary>show</summary><pre>{e(sec[2])}</pre></details>")
        else:
            _, name, f, cap = sec
            body.append(
                f'<h2>{e(name)}</h2><figure><img src="{e(f)}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>'
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
        "text-align:right}img{max-width:100%}figcaption{color:#555;font-size:90%}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>stepadapt {e(title.lower())}</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


# -- a study's report ----------------------------------------------------------------------------------------
def write_study_report(res: dict, runs: list[Run], out: Path) -> tuple[Path, Path]:
    """``out/index.html`` and ``out/report.md`` of a study: its table beside the paper's numbers, FID vs MACs of
    every arm, and the progressive model's samples of every arm from the same noise, side by side."""
    with writing_in(out):  # a full disk or a read-only folder: one line, not a traceback
        out.mkdir(parents=True, exist_ok=True)
        sections = [study_table(res)]
        if plot_fid_macs(runs, out / "fid_macs.png"):
            sections.append(
                (
                    "figure",
                    "FID and KID vs MACs",
                    "fid_macs.png",
                    "every arm's models, 95% bootstrap intervals as error bars",
                )
            )
        for r in runs:  # proxy rounds with several proposals per round (Fig. 7)
            if r.config["prune"].get("proposals", 1) > 1 and plot_proxy(proxy_rounds(r), out / f"proxy_{r.name}.png"):
                sections.append(
                    (
                        "figure",
                        f"Proxy proposals per round: {r.name}",
                        f"proxy_{r.name}.png",
                        "every proposal's held-out loss, the per-round mean and standard deviation",
                    )
                )
        for r in runs:  # fine-tune curves (finetune.eval_every), one figure per arm that measured them
            if plot_heldout(r, out / f"heldout_{r.name}.png"):
                sections.append(
                    (
                        "figure",
                        f"Held-out loss during fine-tuning: {r.name}",
                        f"heldout_{r.name}.png",
                        "each group's held-out eps-MSE every finetune.eval_every steps; rings mark the best",
                    )
                )
        if plot_fid_curve(runs, out / "fid_curve.png"):
            sections.append(
                (
                    "figure",
                    "FID during fine-tuning",
                    "fid_curve.png",
                    "each arm's whole progressive model at every finetune.eval_every step (finetune.fid_n "
                    "samples, the same noise at every step); rings mark the lowest",
                )
            )
        grids = {}
        for r in runs:
            found = sorted(r.samples().glob("progressive_s*_seed0.png"))
            if found:
                grids[r.name] = found[-1]
        one = sorted(runs[0].samples().glob("side_by_side_s*_seed0.png")) if len(runs) == 1 else []
        if one:  # one arm: its base, control and progressive model side by side
            shutil.copyfile(one[-1], out / "samples.png")
            sections.append(
                (
                    "figure",
                    "Samples, same noise",
                    "samples.png",
                    f"{runs[0].name}: base, control and progressive model from the same noise",
                )
            )
        elif side_by_side(grids, out / "samples.png"):
            sections.append(
                (
                    "figure",
                    "Samples per arm, same noise",
                    "samples.png",
                    "each arm's progressive model, same seed and noise",
                )
            )
        facts = [
            ("study", res["study"]),
            ("preset", res["preset"]),
            ("shared base", res["base"]),
            ("runs", str(len(runs))),
        ]
        title = f"Study {res['id']}: {res['title']}"
        md_path, html_path = out / "report.md", out / "index.html"
        md_path.write_text(_markdown(title, facts, sections))
        html_path.write_text(_html(title, facts, sections))
        return html_path, md_path


def study_table(res: dict) -> tuple:
    """The study's table section: ours with 95% intervals (and our preset), then the paper's published values."""
    from core.evaluation.text import with_ci as ci

    kind = next((r["fid_kind"] for r in res["rows"] if r.get("fid_kind")), "FID")
    n = next((r["fid_n"] for r in res["rows"] if r.get("fid_n")), None)
    head = [
        "row",
        "run",
        f"ours: {kind.split(' (')[0]}",
        "ours: KID x1e3",
        "ours: GMACs",
        "ours: MACs/base",
        "ours: params M",
        "ours: train steps",
        *[f"paper: {c}" for c in res["paper_columns"]],
    ]
    rows = []
    for r in res["rows"]:
        rows.append(
            [
                r["label"],
                r["run"],
                ci(r.get("fid"), r.get("fid_ci"), "{:.2f}"),
                ci(r.get("kid"), r.get("kid_ci"), "{:.2f}", 1e-3),
                "-" if r.get("macs") is None else f"{r['macs'] / 1e9:.4f}",
                "-" if r.get("macs_ratio") is None else f"{r['macs_ratio']:.3f}",
                "-" if r.get("params") is None else f"{r['params'] / 1e6:.3f}",
                "-" if r.get("train_steps") is None else str(r["train_steps"]),
                *[str(r["paper"].get(c, "-")) for c in res["paper_columns"]],
            ]
        )
    note = (
        f"ours: preset {res['preset']}, {kind}" + (f", n = {n}" if n else "") + ", 95% bootstrap intervals; "
        "paper: the published values (CIFAR-10 / ImageNet-64, Inception FID, 100 sampling steps), not "
        "comparable in scale to ours. " + res.get("note", "")
    )
    return ("table", res["title"], note, head, rows)
