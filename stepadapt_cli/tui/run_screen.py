"""The run screen: the stage pipeline, the schedule, and one row for the base and per timestep group."""

from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from core.evaluation.text import fmt, narrow_ci, with_ci
from core.manager.monitor import SERIES, bar, draw_schedule, sparkline

from .dialogs import confirm
from .view import BACK, HELP, QUIT, ViewScreen


def eval_summary(ev, width: int = 160) -> Text:
    """The run's evaluation: each model's FID and KID with 95% intervals and MACs against the base, then the
    verdict of each pair (the per-group losses are columns of the group table). Under 110 columns each line is
    shortened to fit one line, so the group rows keep their room at 80x24."""
    from core.evaluation.text import verdict_text

    models = (ev or {}).get("models") or {}
    if not models:
        return Text("")
    narrow = width < 110
    base = models.get("base", {})
    lines = []
    for name in [m for m in ("base", "control", "uniform", "dense-small", "progressive") if m in models]:
        m = models[name]
        ci = m.get("fid_ci")
        fid = narrow_ci(m.get("fid"), ci) if narrow else with_ci(m.get("fid"), ci)
        kci = m.get("kid_ci")
        kid = narrow_ci(m.get("kid"), kci, "{:.4f}") if narrow else with_ci(m.get("kid"), kci, "{:.4f}")
        ratio = f"{m['macs'] / base['macs']:.3f}x MACs" if base.get("macs") else f"{m['macs'] / 1e9:.3f} GMACs"
        steps = "" if narrow else f"  {m.get('train_steps', '?')} steps"
        lines.append(f"{name:<12} FID {fid}  KID {kid}  {ratio}{steps}")
    lines += [verdict_text(c, short=narrow) for c in (ev.get("comparisons") or [])]
    return Text("\n".join(lines))


# the run states resume continues (names.RUN_STATUSES but running and succeeded)
RESUMABLE = ("created", "partial", "failed", "killed", "lost")
# the whole-run stages with a job of their own, shown below the groups (stage 1 is the first row already)
WHOLE_RUN_STAGES = ("schedule", "trunk", "assemble", "control", "uniform", "dense-small", "sample", "eval")


def stage_rows(jobs: list[dict]) -> list[tuple]:
    """One row per whole-run stage that has run (its latest job): name, status, progress; ``l`` opens its log."""
    rows = []
    for stage in WHOLE_RUN_STAGES:
        mine = [j for j in jobs if j["stage"] == stage]
        if not mine:
            continue
        j = mine[-1]
        status = "done" if j["status"] == "succeeded" else j["status"]
        steps = f"{j.get('progress') or 0}/{j['total']}" if j.get("total") else ""
        rows.append((stage, "", "", "", status, steps, bar(j.get("progress") or 0, j.get("total") or 0, 10), *[""] * 5))
    return rows


def widths(total: int) -> dict:
    """What grows with the terminal's width: the schedule strip, the progress bar and the loss sparkline."""
    return {
        "strip": max(20, total - 24),
        "bar": 10 if total < 140 else 20,
        "spark": 12 if total < 120 else min(SERIES, 12 + (total - 120) // 2),
    }


def loss_columns(ev) -> dict:
    """Group -> (held-out eps-MSE of the progressive model, change vs base, change vs control)."""
    from core.evaluation.evaluate import loss_table
    from core.evaluation.text import change as written

    def change(ch):
        return written(ch, "{:+.0%}", "")

    rows = loss_table((ev or {}).get("models") or {}, (ev or {}).get("comparisons") or [])
    return {
        str(r["group"]): (r.get("progressive"), change(r.get("vs_base")), change(r.get("vs_control"))) for r in rows
    }


class RunScreen(ViewScreen):
    BINDINGS = [
        BACK,
        Binding("l", "log", "log"),
        Binding("p", "proxy", "proxy"),
        Binding("s", "samples", "samples"),
        Binding("k", "kill", "kill run"),
        Binding("r", "resume", "resume"),
        HELP,
        QUIT,
    ]
    COLUMNS = (
        "group",
        "t",
        "budget",
        "MACs",
        "status",
        "step",
        "",
        "hybrid loss",
        "trend",
        "eval eps-MSE",
        "vs base",
        "vs control",
    )

    def __init__(self, name: str):
        super().__init__(("run", name))
        self.run_name = name
        self.detail: dict = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="stages")
        yield Static("", id="schedule")
        yield Static("", id="evalsum")
        yield DataTable(id="groups", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*self.COLUMNS)
        self.query_one(DataTable).focus()
        self.title = f"run {self.run_name}"

    def on_resize(self) -> None:
        if self.detail:
            self.show(self.detail)

    def show(self, d) -> None:
        status_before = self.detail.get("status")
        self.detail = d or {}
        if self.detail.get("status") != status_before:
            self.refresh_bindings()  # kill and resume follow the run's status
        if not d:
            self.query_one("#stages", Static).update(Text(f"run {self.run_name} not found"))
            return
        w = widths(self.size.width or 80)
        stages = "  ".join(f"{k}:{v}" for k, v in d["stages"].items())
        self.query_one("#stages", Static).update(
            Text(f"{d['name']}  [{d['status']}]  {d['preset']}  prune {d['method']}\n{stages}")
        )
        if d["scheduled"]:
            self.query_one("#schedule", Static).update(draw_schedule(d["schedule_profile"], w["strip"]))
        self.query_one("#evalsum", Static).update(eval_summary(d.get("eval"), self.size.width or 80))
        t = self.query_one(DataTable)
        cur = t.cursor_row
        t.clear()
        losses = loss_columns(d.get("eval"))
        for g in d["groups"]:
            held, vs_base, vs_control = losses.get(str(g["group"]), (None, "", ""))
            t.add_row(
                str(g["group"]),
                g["t"],
                fmt(g["budget"], "{:.3f}"),
                fmt(g["macs"], "{:.3f}"),
                g["status"],
                f"{g['progress']}/{g['total']}" if g["total"] else "",
                bar(g["progress"], g["total"], w["bar"]),
                fmt(g["loss"]),
                sparkline(g["series"], w["spark"]),
                fmt(held),
                vs_base,
                vs_control,
                key=str(g["group"]),
            )
        for row in stage_rows(d.get("jobs") or []):
            t.add_row(*row, key=row[0])
        if t.row_count:
            t.move_cursor(row=min(cur, t.row_count - 1))

    def _selected_job(self) -> Optional[int]:
        t = self.query_one(DataTable)
        if not t.row_count:
            return None
        key = t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
        g = next((g for g in self.detail.get("groups", []) if str(g["group"]) == key), None)
        if g and g["job"]:
            return g["job"]
        staged = [j for j in self.detail.get("jobs", []) if j["stage"] == key]
        if staged:
            return staged[-1]["id"]
        jobs = [j for j in self.detail.get("jobs", []) if j["log_path"]]
        return jobs[-1]["id"] if jobs else None

    def action_log(self) -> None:
        from .job_screen import JobScreen

        job = self._selected_job()
        if job is None:
            self.notify("no job log yet", severity="warning")
            return
        self.app.push_screen(JobScreen(job))

    def action_samples(self) -> None:
        from .samples_screen import SamplesScreen

        self.app.push_screen(SamplesScreen(self.run_name))

    def action_proxy(self) -> None:
        from .proxy_screen import ProxyScreen

        self.app.push_screen(ProxyScreen(self.run_name))

    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        """Kill only a running run, resume only one that has something left and is not running: the footer
        offers what applies (False hides the key and ignores it)."""
        status = self.detail.get("status")
        if action == "kill":
            return status == "running"
        if action == "resume":
            return status in RESUMABLE
        return True

    def action_kill(self) -> None:
        confirm(
            self, f"Kill run {self.run_name}? (training checkpoints first)", lambda: self.app.kill_run(self.run_name)
        )

    def action_resume(self) -> None:
        confirm(self, f"Resume run {self.run_name} in the background?", lambda: self.app.resume_run(self.run_name))
