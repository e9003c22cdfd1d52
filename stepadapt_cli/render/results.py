"""The results' tables: comparisons, held-out losses, the swap test, `eval`, scored folders, studies."""

from __future__ import annotations

from rich.markup import escape

from core.evaluation.text import FID, fmt, with_ci

from ..common import console
from .common import titled_table
from .evaluation import print_comparison, print_eval, print_fid_curve, print_loss_table  # noqa: F401 (at any width)


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

    def log(self, line: str) -> None:
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
            with_ci(r.get("fid"), r.get("fid_ci"), FID),
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
    if len({p["base_steps"] for p in res.get("gaps") or []}) > 1:  # arms on several base steps
        from core.evaluation.gaps import crossover_text, gap_rows

        head, rows = gap_rows(res["gaps"])
        gaps = titled_table("where the method pays: progressive minus each control, by base steps", head, "right")
        for row in rows:
            gaps.add_row(*map(escape, row))
        con.print(gaps)
        for series, c in res["crossover"].items():
            con.print(escape(crossover_text(series, c)), highlight=False)
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
