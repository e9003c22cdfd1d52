"""A run's report: one self-contained folder with ``index.html``, ``report.md`` and the figures they show."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.evaluation.evaluate import load_eval
from core.evaluation.report_figures import (
    distinct_points,
    plot_fid_curve,
    plot_fid_macs,
    plot_heldout,
    plot_losses,
    plot_proxy,
    side_by_side,
)
from core.evaluation.report_page import html_page, markdown_page, write_self_contained  # noqa: F401 (the CLI's)
from core.evaluation.report_study import write_study_report  # noqa: F401 (a study's report: `study report`)
from core.runs import Run, read_json, writing_in

_distinct_points = distinct_points  # the name the studies' tests know


def write_report(run: Run, baselines: list[Run], out: Path) -> tuple[Path, Path]:
    """``out/index.html`` and ``out/report.md`` with the same sections: the verdict and bottom line first (a
    badge), the Table 1 style comparison, the figures (schedule, losses, proxy rounds, FID vs MACs, samples),
    every proxy try with the kept candidate marked, and the jobs with their times."""
    from core.chosen import chosen_candidates, pruned_with

    with writing_in(out):  # a full disk or a read-only folder: one line, not a traceback
        out.mkdir(parents=True, exist_ok=True)
        ev = load_eval(run)
        full = ev.get("models", {}).get("base", {}).get("macs", 1.0)
        books = _books(run)
        rounds, calls = books["rounds"], books["calls"]
        kept = chosen_candidates(run, rounds, calls)
        jobs = _jobs_table(run, out, books["jobs"])
        sections = [
            *_headline(run, ev),
            *_comparison(run, baselines, ev),
            *_figures(run, baselines, out, rounds, full, kept),
            *_proxy_table(calls, rounds, kept, full),
            *jobs,
            ("pre", "Resolved config", json.dumps(run.config, indent=2, sort_keys=True)),
        ]
        meta, cfg = run.meta, run.config
        title = f"Report: {run.name}"
        facts = [
            ("preset", str(cfg.get("preset"))),
            ("prune method", pruned_with(run, cfg)),
            ("config", str(meta.get("config_hash"))),
            ("seed", str(meta.get("seed"))),
            ("stage 1", _stage1(run)),
            ("git", str(meta.get("git_sha"))[:10] + (" (dirty: uncommitted changes)" if meta.get("git_dirty") else "")),
            ("run time", _run_time(books["jobs"])),
            ("command", _command(meta.get("command"))),
        ]
        tags = books["tags"]
        if tags:
            facts.append(("tags", ", ".join(k if v is None else f"{k}={v}" for k, v in tags.items())))
        if books["notes"]:
            sections.insert(
                0, ("text", "Notes", [f"{n['created'][:16].replace('T', ' ')}: {n['text']}" for n in books["notes"]])
            )
        md_path, html_path = out / "report.md", out / "index.html"
        md_path.write_text(markdown_page(title, facts, sections))
        html_path.write_text(html_page(title, facts, sections))
        return html_path, md_path


def _books(run: Run) -> dict:
    """What the store holds about the run: proxy rounds and calls, jobs, tags, notes (empty without a store)."""
    from core.store import DB_NAME, open_store

    if not (run.path.parent / DB_NAME).exists():
        return {"rounds": [], "calls": [], "jobs": [], "tags": {}, "notes": []}
    store = open_store(run.path.parent)
    return {
        "rounds": store.rounds(run.name),
        "calls": store.calls(run.name),
        "jobs": store.jobs(run.name),
        "tags": store.tags(run.name).get(run.name, {}),
        "notes": store.notes(run.name).get(run.name, []),
    }


def _command(argv) -> str:
    """The command line the run was launched with, as one would type it ('stepadapt run --preset tiny ...')."""
    import os
    import shlex

    if not argv:
        return "-"
    head = os.path.basename(argv[0])
    return shlex.join(["stepadapt" if head in ("stepadapt", "main.py", "__main__.py") else head, *argv[1:]])


def _run_time(jobs: list[dict]) -> str:
    """From the first job's start to the last one's end (now, for the job writing this report): '1h02m'."""
    import datetime as dt

    starts = [j["started"] for j in jobs if j.get("started")]
    if not starts:
        return "-"
    now = dt.datetime.now(dt.timezone.utc)
    try:
        first = min(dt.datetime.fromisoformat(s) for s in starts)
        last = max(dt.datetime.fromisoformat(j["ended"]) if j.get("ended") else now for j in jobs if j.get("started"))
    except ValueError:
        return "-"
    secs = int((last - first).total_seconds())
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def _headline(run: Run, ev: dict) -> list[tuple]:
    """The verdict of the progressive model against its control (else the base) as a badge, then the bottom line
    and the per-group pattern of the held-out loss."""
    from core.evaluation.evaluate import loss_table
    from core.evaluation.text import bottom_line, group_pattern, verdict_text

    comps = ev.get("comparisons", [])
    by = {(c["model"], c["against"]): c for c in comps}
    c = by.get(("progressive", "control")) or by.get(("progressive", "base"))
    if not c or not c.get("verdict"):
        return []
    word = {"better": "BETTER", "worse": "WORSE"}.get(c["verdict"], "SAME")
    badge = (
        f"{word} than the {c['against']} on {c.get('primary', 'fid').upper()}"
        if word != "SAME"
        else (f"no significant difference from the {c['against']} on {c.get('primary', 'fid').upper()}")
    )
    sched = read_json(run.schedule_file()) if run.schedule_file().exists() else {}
    t_start = {g["index"]: g["t_start"] for g in sched.get("groups", []) if g.get("t_start") is not None}
    lines = [
        x for x in (bottom_line(comps), group_pattern(loss_table(ev.get("models", {}), comps), t_start=t_start)) if x
    ]
    return [("badge", word.lower(), badge, [verdict_text(c)] + lines)]


# a section is ("table", title, note, head, rows), ("figure", title, file, caption), ("text", title, lines) or
# ("pre", title, text); a table cell is text, or (text, href) for a link
def _comparison(run: Run, baselines: list[Run], ev: dict) -> list[tuple]:
    from core.evaluation.evaluate import loss_table
    from core.evaluation.text import FID, change, verdict_text
    from core.evaluation.text import narrow_ci as ci

    rows, many = [], bool(baselines)
    for r in [run, *baselines]:
        models = load_eval(r).get("models", {})
        base_macs = models.get("base", {}).get("macs")
        for model in [m for m in ("base", "control", "uniform", "dense-small", "progressive") if m in models]:
            row = models[model]
            rows.append(
                [
                    *([r.name] if many else []),
                    model,
                    ci(row.get("fid"), row.get("fid_ci"), FID),
                    ci(row.get("kid"), row.get("kid_ci"), FID, 1e-3),
                    "-" if row.get("precision") is None else f"{row['precision']:.2f}",
                    "-" if row.get("recall") is None else f"{row['recall']:.2f}",
                    f"{row['macs'] / base_macs:.3f}" if base_macs else "-",
                    f"{row['params'] / 1e6:.3f}",
                    ci(row["loss"], row.get("loss_ci"), "{:.5f}"),  # ±: the larger half of the 95% interval
                    str(row["train_steps"]),
                ]
            )
    if not rows:
        return []
    head = [
        *(["run"] if many else []),
        "model",
        "FID ±95%",
        "KID x1e3 ±95%",
        "precision",
        "recall",
        "MACs vs base",
        "params (M)",
        "held-out loss ±95%",
        "train steps",
    ]
    kind = next((m.get("fid_kind") for m in ev.get("models", {}).values() if m.get("fid_kind")), None)
    n = next((m.get("fid_n") for m in ev.get("models", {}).values() if m.get("fid_n")), None)
    out = [
        (
            "table",
            "Table 1 style",
            (f"FID here is {kind}, n = {n}. " if kind else "")
            + "± is the larger half of the 95% interval. "
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
                [verdict_text(c) for c in comps]
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


def _figures(run: Run, baselines: list[Run], out: Path, rounds: list[dict], full: float, kept: dict) -> list[tuple]:
    from core.method.schedule import plot_schedule, run_schedule

    figs = []
    if run.schedule_file().exists():
        plot_schedule(run_schedule(run), out / "schedule.png")
        figs.append(
            ("figure", "Schedule", "schedule.png", "SNR (dB) and MACs budget per timestep, with the group bounds")
        )
    if plot_losses(run, out / "losses.png"):
        figs.append(
            (
                "figure",
                "Training losses",
                "losses.png",
                "stage 1 (dashed: the equal-compute control, stage 1 trained on) and every group's fine-tune",
            )
        )
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
    if plot_proxy(rounds, out / "proxy.png", kept):
        figs.append(
            (
                "figure",
                "Proxy rounds",
                "proxy.png",
                "held-out loss of every candidate the proxy proposed, per group; ringed: the one each group kept",
            )
        )
    if plot_fid_macs([run, *baselines], out / "fid_macs.png"):
        figs.append(
            (
                "figure",
                "FID and KID vs MACs",
                "fid_macs.png",
                "base, control and progressive models (and baselines), 95% intervals as error bars; the base and "
                "the control share their MACs and are drawn a little apart. The verdicts above are paired (every "
                "model's samples start from the same noise), so they can tell models apart whose intervals "
                "overlap here: read the verdict, not the overlap",
            )
        )
    grids = {w: run.samples() / f"eval_{w}.png" for w in ("base", "control", "uniform", "dense-small", "progressive")}
    if side_by_side(grids, out / "samples.png"):
        figs.append(
            (
                "wide figure",
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


def _jobs_table(run: Run, out: Path, jobs: list[dict]) -> list[tuple]:
    """Every job of the run with its wall time and a link to its log (stage timings). The pipeline job that
    writes this report at its end is shown as it ends (succeeded), not as running."""
    import datetime as dt
    import os

    from core.names import JOB_ACTIVE

    def secs(j):
        try:
            end = dt.datetime.fromisoformat(j["ended"]) if j.get("ended") else dt.datetime.now(dt.timezone.utc)
            took = end - dt.datetime.fromisoformat(j["started"])
            return f"{took.total_seconds():.0f}"
        except (TypeError, ValueError):
            return "-"

    def status(j):
        ours = j["stage"] == "pipeline" and j["status"] in JOB_ACTIVE and j.get("pid") == os.getpid()
        return "succeeded" if ours else j["status"]

    rows = [
        [
            str(j["id"]),
            j["stage"],
            "" if j["group_index"] is None else str(j["group_index"]),
            status(j),
            secs(j),
            (os.path.basename(j["log_path"]), os.path.relpath(j["log_path"], out)) if j["log_path"] else "-",
        ]
        for j in jobs
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


def _proxy_table(calls: list[dict], rounds: list[dict], kept: dict, full: float) -> list[tuple]:
    """Every try of the proxy (rejected ones too, with why), rounds and tries from 1, the kept candidate of each
    group marked chosen, as ``show``, ``llm-log`` and the TUI mark it (``core.chosen``)."""
    from core.chosen import proxy_tries

    rows = []
    for t in proxy_tries(calls, rounds, kept):
        verdict = "chosen" if t["chosen"] else t["verdict"]
        if t["reason"] and not t["chosen"]:
            verdict += f": {t['reason'][:70]}"
        rows.append(
            [
                str(t["group"]),
                str(t["round"]),
                str(t["try"]),
                "-" if t["macs"] is None else f"{t['macs'] / full:.3f}",
                "-" if t["loss"] is None else f"{t['loss']:.5f}",
                verdict,
            ]
        )
    head = ["group", "round", "try", "MACs / F", "loss", "verdict"]
    note = "every answer of the LLM; accepted: a valid proposal, measured; chosen: the candidate the group kept."
    return [("table", "Proxy rounds", note, head, rows)] if rows else []


def _stage1(run) -> str:
    """Where the run's stage 1 came from, from ``meta.json``: trained here, imported (file), the shipped base, or a
    fork (parent and milestone step)."""
    base, parent = run.meta.get("base") or {}, run.meta.get("parent")
    origin = base.get("origin") or ("fork" if parent else "trained")
    if origin == "shipped":
        return f"the shipped base {base.get('name')} ({base.get('steps'):,} steps); parent {parent}"
    if origin == "import":
        return f"imported from {base.get('file')}"
    if origin == "fork":
        return f"a fork of {base.get('run') or parent}" + (f"@{base['step']}" if base.get("step") is not None else "")
    return "trained here"
