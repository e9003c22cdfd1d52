"""The run screen: the stage pipeline, the schedule, and one row for the base and per timestep group."""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from core.manager.monitor import bar

from .dialogs import Confirm
from .view import BACK, HELP, ViewScreen, fmt


def eval_summary(ev) -> Text:
    """The run's evaluation in two lines: FID and MACs per model, and the held-out eps-MSE per group."""
    models = (ev or {}).get("models") or {}
    if not models:
        return Text("")
    base = models.get("base", {})
    parts = []
    for name, m in models.items():
        ratio = f" ({m['macs'] / base['macs']:.3f} of base)" if base.get("macs") and name != "base" else ""
        parts.append(f"{name}: FID {fmt(m.get('fid'), '{:.2f}')}, {m['macs'] / 1e9:.3f} GMACs{ratio}")
    groups = sorted({g for m in models.values() for g in (m.get("loss_groups") or {})}, key=int)
    losses = "  ".join(f"g{g} " + "/".join(fmt((m.get("loss_groups") or {}).get(g), "{:.3f}") for m in models.values())
                       for g in groups)
    return Text(f"eval  {'   '.join(parts)}\nheld-out eps-MSE ({'/'.join(models)}): {losses}")


class RunScreen(ViewScreen):
    BINDINGS = [BACK, Binding("l", "log", "log"),
                Binding("p", "proxy", "proxy"), Binding("k", "kill", "kill run"), Binding("r", "resume", "resume"),
                HELP]
    COLUMNS = ("group", "t", "budget", "MACs", "status", "step", "", "hybrid loss", "trend")

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

    def show(self, d) -> None:
        self.detail = d or {}
        if not d:
            self.query_one("#stages", Static).update(f"run {self.run_name} not found")
            return
        stages = "  ".join(f"{k}:{v}" for k, v in d["stages"].items())
        self.query_one("#stages", Static).update(f"{d['name']}  [{d['status']}]  {d['preset']}  "
                                                 f"prune {d['method']}\n{stages}")
        if d["schedule"]:
            self.query_one("#schedule", Static).update(d["schedule_text"])
        self.query_one("#evalsum", Static).update(eval_summary(d.get("eval")))
        t = self.query_one(DataTable)
        cur = t.cursor_row
        t.clear()
        for g in d["groups"]:
            t.add_row(str(g["group"]), g["t"], fmt(g["budget"], "{:.3f}"), fmt(g["macs"], "{:.3f}"), g["status"],
                      f"{g['progress']}/{g['total']}" if g["total"] else "", bar(g["progress"], g["total"], 10),
                      fmt(g["loss"]), g["spark"], key=str(g["group"]))
        if d["groups"]:
            t.move_cursor(row=min(cur, len(d["groups"]) - 1))

    def _selected_job(self) -> Optional[int]:
        t = self.query_one(DataTable)
        if not t.row_count:
            return None
        key = t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
        g = next((g for g in self.detail.get("groups", []) if str(g["group"]) == key), None)
        if g and g["job"]:
            return g["job"]
        jobs = [j for j in self.detail.get("jobs", []) if j["log_path"]]
        return jobs[-1]["id"] if jobs else None

    def action_log(self) -> None:
        from .job_screen import JobScreen

        job = self._selected_job()
        if job is None:
            self.notify("no job log yet", severity="warning")
            return
        self.app.push_screen(JobScreen(job))

    def action_proxy(self) -> None:
        from .proxy_screen import ProxyScreen

        self.app.push_screen(ProxyScreen(self.run_name))

    def action_kill(self) -> None:
        def answer(yes: bool) -> None:
            if yes:
                self.app.kill_run(self.run_name)

        self.app.push_screen(Confirm(f"Kill run {self.run_name}? (training checkpoints first)"), answer)

    def action_resume(self) -> None:
        def answer(yes: bool) -> None:
            if yes:
                self.app.resume_run(self.run_name)

        self.app.push_screen(Confirm(f"Resume run {self.run_name} in the background?"), answer)
