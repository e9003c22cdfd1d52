"""`stepadapt tui`: a Textual app over the run store.

Screens: runs (filter, sort) -> run (stage pipeline, one row per timestep group, the schedule) -> job log
(follows the file) and proxy rounds (prompt and response of each round). A worker thread polls the store
(``PRAGMA data_version``: it changes when another connection commits) and the run folder, and posts a
``Changed`` message; screens redraw only from messages, so the UI never waits on the database.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Optional

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, RichLog, Static

from core.jobs import reconcile
from core.monitor import run_detail, runs_overview, schedule_text
from core.runs import Run
from core.store import Store, open_store

POLL_S = 0.5


class Changed(Message):
    """The store or a run folder changed."""

    bubble = False


def _fmt(v, spec="{:.4f}"):
    return "-" if v is None else spec.format(v)


# -- modal screens -------------------------------------------------------------------------------------
class Confirm(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question)
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


HELP = """stepadapt tui - keys

runs screen   enter open run   / filter   s sort column   q quit
run screen    l job log (selected row)   p proxy rounds   k kill run   r resume run   escape back
job log       k kill job   escape back
proxy         enter show prompt and response   escape back
everywhere    ? this help   ctrl+q quit

Group rows: timestep range, budget (fraction of F), achieved MACs (fraction of F) after pruning,
job status, fine-tune step/total, current loss and a loss sparkline."""


class Help(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")


# -- runs --------------------------------------------------------------------------------------------
class RunsScreen(Screen):
    BINDINGS = [Binding("enter", "open", "open"), Binding("slash", "filter", "filter"),
                Binding("s", "sort", "sort"), Binding("q", "app.quit", "quit"),
                Binding("question_mark", "app.push_screen('help')", "help")]
    COLUMNS = ("name", "status", "preset", "method", "llm", "stages", "best FID")
    SORT_KEYS = ("created", "name", "status", "method", "best_fid")

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.filter = ""
        self.sort = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="message")
        yield Input(placeholder="filter runs (name, status, preset, method)", id="filter")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        t = self.query_one(DataTable)
        t.add_columns(*self.COLUMNS)
        self.query_one("#filter").display = False
        t.focus()
        self.refresh_data()

    def refresh_data(self) -> None:
        self.rows = self.app.runs_overview()
        self.render_rows()

    def render_rows(self) -> None:
        t = self.query_one(DataTable)
        msg = self.query_one("#message", Static)
        if not self.rows:
            msg.update(f"No runs in {self.app.runs_dir}.\nStart one with:  stepadapt run --preset tiny "
                       f"--runs-dir {self.app.runs_dir}")
        else:
            msg.update(f"{len(self.rows)} runs in {self.app.runs_dir}   sort: {self.SORT_KEYS[self.sort]}"
                       + (f"   filter: {self.filter}" if self.filter else ""))
        key = self.SORT_KEYS[self.sort]
        rows = [r for r in self.rows if not self.filter or any(
            self.filter.lower() in str(r.get(k) or "").lower() for k in ("name", "status", "preset", "method"))]
        rows.sort(key=lambda r: (r.get(key) is None, r.get(key) if r.get(key) is not None else 0),
                  reverse=key == "created")
        cur = t.cursor_row
        t.clear()
        for r in rows:
            t.add_row(r["name"], r["status"], r["preset"] or "-", r["method"] or "-", (r["llm"] or "")[:20],
                      f"{r['stages_done']}/{r['stages']}", _fmt(r["best_fid"], "{:.2f}"), key=r["name"])
        if rows:
            t.move_cursor(row=min(cur, len(rows) - 1))

    def on_changed(self, message: Changed) -> None:
        self.refresh_data()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#filter")
    def filtered(self, event: Input.Submitted) -> None:
        self.filter = event.value.strip()
        event.input.display = bool(self.filter)
        self.query_one(DataTable).focus()
        self.render_rows()

    def action_sort(self) -> None:
        self.sort = (self.sort + 1) % len(self.SORT_KEYS)
        self.render_rows()

    def action_open(self) -> None:
        t = self.query_one(DataTable)
        if t.row_count:
            name = t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
            self.app.push_screen(RunScreen(name))

    @on(DataTable.RowSelected, "#runs")
    def selected(self, event: DataTable.RowSelected) -> None:
        self.app.push_screen(RunScreen(event.row_key.value))


# -- one run -------------------------------------------------------------------------------------------
class RunScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "back"), Binding("l", "log", "log"),
                Binding("p", "proxy", "proxy"), Binding("k", "kill", "kill run"), Binding("r", "resume", "resume"),
                Binding("question_mark", "app.push_screen('help')", "help")]
    COLUMNS = ("group", "t", "budget", "MACs", "status", "step", "", "loss", "trend")

    def __init__(self, name: str):
        super().__init__()
        self.run_name = name
        self.detail: dict = {}
        self.schedule_drawn = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="stages")
        yield Static("", id="schedule")
        yield DataTable(id="groups", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*self.COLUMNS)
        self.query_one(DataTable).focus()
        self.title = f"run {self.run_name}"
        self.refresh_data()

    def refresh_data(self) -> None:
        self.detail = self.app.run_detail(self.run_name)
        d = self.detail
        if not d:
            self.query_one("#stages", Static).update(f"run {self.run_name} not found")
            return
        stages = "  ".join(f"{k}:{v}" for k, v in d["stages"].items())
        self.query_one("#stages", Static).update(f"{d['name']}  [{d['status']}]  {d['preset']}  "
                                                 f"prune {d['method']}\n{stages}")
        if d["schedule"] and not self.schedule_drawn:
            self.schedule_drawn = True
            try:
                self.query_one("#schedule", Static).update(schedule_text(self.app.get_run(self.run_name), 50))
            except Exception:
                pass
        t = self.query_one(DataTable)
        cur = t.cursor_row
        t.clear()
        for g in d["groups"]:
            t.add_row(str(g["group"]), g["t"], _fmt(g["budget"], "{:.3f}"), _fmt(g["macs"], "{:.3f}"), g["status"],
                      f"{g['progress']}/{g['total']}" if g["total"] else "", _bar(g), _fmt(g["loss"]), g["spark"],
                      key=str(g["group"]))
        if d["groups"]:
            t.move_cursor(row=min(cur, len(d["groups"]) - 1))

    def on_changed(self, message: Changed) -> None:
        self.refresh_data()

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
        job = self._selected_job()
        if job is None:
            self.notify("no job log yet", severity="warning")
            return
        self.app.push_screen(JobScreen(job))

    def action_proxy(self) -> None:
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


def _bar(g: dict) -> str:
    from core.monitor import bar

    return bar(g["progress"], g["total"], 10)


# -- a job's log ---------------------------------------------------------------------------------------
class JobScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "back"), Binding("k", "kill", "kill job"),
                Binding("question_mark", "app.push_screen('help')", "help")]

    def __init__(self, job_id: int):
        super().__init__()
        self.job_id = job_id

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="jobinfo")
        yield RichLog(id="log", wrap=False, max_lines=5000)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"job {self.job_id}"
        self.show_info()
        j = self.app.job(self.job_id)
        self.follow(Path(j["log_path"]) if j and j["log_path"] else None)

    def show_info(self) -> None:
        j = self.app.job(self.job_id)
        if j:
            grp = "" if j["group_index"] is None else f" group {j['group_index']}"
            self.query_one("#jobinfo", Static).update(
                f"job {j['id']}  {j['stage']}{grp}  run {j['run']}  [{j['status']}]  pid {j['pid']}  "
                f"exit {j['exit_code']}\n{j['log_path']}")

    def on_changed(self, message: Changed) -> None:
        self.show_info()

    @work(thread=True, exclusive=True, group="log")
    def follow(self, path: Optional[Path]) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        pos = 0
        while not worker.is_cancelled:
            if path and path.exists():
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1
                if end:
                    pos += end
                    text = chunk[:end].decode(errors="replace")
                    self.app.call_from_thread(self._append, text)
            time.sleep(POLL_S)

    def _append(self, text: str) -> None:
        log = self.query_one(RichLog)
        for line in text.splitlines():
            log.write(line)

    def action_kill(self) -> None:
        def answer(yes: bool) -> None:
            if yes:
                self.app.kill_job(self.job_id)

        self.app.push_screen(Confirm(f"Kill job {self.job_id}?"), answer)


# -- proxy rounds --------------------------------------------------------------------------------------
class ProxyScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "back"), Binding("enter", "show", "prompt/response"),
                Binding("question_mark", "app.push_screen('help')", "help")]

    def __init__(self, name: str):
        super().__init__()
        self.run_name = name

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="rounds", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="callbox"):
            yield Static("", id="call")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"proxy rounds of {self.run_name}"
        t = self.query_one(DataTable)
        t.add_columns("group", "round", "MACs G", "loss", "accepted", "source", "call")
        store = self.app.store
        calls = {c["id"]: c for c in store.calls(self.run_name)}
        rounds = store.rounds(self.run_name)
        if not rounds:
            self.query_one("#call", Static).update("No proxy rounds recorded for this run "
                                                   "(pruned with another method, or not pruned yet).")
        for r in rounds:
            c = calls.get(r["call_id"]) or {}
            t.add_row(str(r["group_index"]), str(r["round"] + 1), _fmt(r["macs"] and r["macs"] / 1e9),
                      _fmt(r["loss"], "{:.5f}"), "yes" if r["accepted"] else "no", c.get("source", "-"),
                      str(r["call_id"] or "-"), key=str(r["id"]))
        self.rounds = {str(r["id"]): r for r in rounds}
        self.calls = calls

    def action_show(self) -> None:
        t = self.query_one(DataTable)
        if t.row_count:
            self.show(t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value)

    @on(DataTable.RowSelected)
    def selected(self, event: DataTable.RowSelected) -> None:
        self.show(event.row_key.value)

    def show(self, key: str) -> None:
        r = self.rounds[key]
        c = self.calls.get(r["call_id"])
        if not c:
            self.query_one("#call", Static).update(f"round {r['round'] + 1}: {r['reason'] or 'no call recorded'}")
            return
        parts = [f"call {c['id']}  source {c['source']}  model {c['model_asked']}  "
                 f"verdict {c['error'] or c['validation_error'] or 'accepted'}"]
        for m in c["messages"]:
            parts.append(f"--- {m['role']} ---\n{m['content']}")
        parts.append(f"--- response ---\n{c['response_text']}")
        from rich.text import Text

        self.query_one("#call", Static).update(Text("\n".join(parts)))


# -- the app -------------------------------------------------------------------------------------------
class StepadaptApp(App):
    TITLE = "stepadapt"
    CSS = """
    #message, #stages, #schedule, #jobinfo, #status { padding: 0 1; height: auto; }
    #dialog { width: 60; height: auto; border: heavy $accent; padding: 1 2; background: $panel; }
    Confirm, Help { align: center middle; }
    #help { width: 90%; height: auto; border: heavy $accent; padding: 1 2; background: $panel; }
    #callbox { height: 1fr; border-top: solid $accent; }
    DataTable { height: 1fr; }
    """
    BINDINGS = [Binding("ctrl+q", "quit", "quit"), Binding("question_mark", "push_screen('help')", "help")]
    SCREENS = {"help": Help}

    def __init__(self, runs_dir, run_name: Optional[str] = None, poll: float = POLL_S):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.start_run = run_name
        self.poll = poll
        self._local = threading.local()
        self.store = self._open()

    def _open(self) -> Store:
        store = open_store(self.runs_dir)  # creates or migrates the store
        reconcile(store)
        return store

    # data access from the UI thread (the poller has its own connection)
    def runs_overview(self) -> list[dict]:
        return runs_overview(self.store)

    def get_run(self, name: str, store: Optional[Store] = None) -> Run:
        """The run's folder; from a worker thread pass that thread's own ``store`` (connections are per thread)."""
        row = (store or self.store).get_run(name)
        return Run(Path(row["path"]) if row else self.runs_dir / name)

    def run_detail(self, name: str) -> dict:
        run = self.get_run(name)
        if not (run.path / "config.json").exists():
            return {}
        return run_detail(self.store, run)

    def job(self, job_id: int) -> Optional[dict]:
        return self.store.job(job_id)

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())
        if self.start_run:
            self.push_screen(RunScreen(self.start_run))
        self.watch_store()

    @work(thread=True, exclusive=True, group="poll")
    def watch_store(self) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        con = sqlite3.connect(str(self.store.path), timeout=5)
        last = None
        last_reconcile = time.time()
        while not worker.is_cancelled:
            try:
                version = con.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                version = None
            stamp = (version, self._folder_stamp())
            if stamp != last:
                last = stamp
                self.post_message(Changed())
            if time.time() - last_reconcile > 5:
                last_reconcile = time.time()
                try:
                    reconcile(Store(self.store.path))
                except Exception:
                    pass
            time.sleep(self.poll)
        con.close()

    def _folder_stamp(self) -> float:
        try:
            return self.runs_dir.stat().st_mtime
        except OSError:
            return 0.0

    def on_changed(self, message: Changed) -> None:
        if not self.screen_stack:
            return
        scr = self.screen
        if isinstance(scr, (RunsScreen, RunScreen, JobScreen)):
            scr.post_message(Changed())

    # actions that reach the job layer (in threads: stopping waits for the process)
    @work(thread=True, group="actions")
    def kill_run(self, name: str) -> None:
        from core.errors import UserError
        from core.pipeline import stop_run

        try:
            done = stop_run(Store(self.store.path), name, grace=10.0)
            self.call_from_thread(self.notify, f"run {name}: " + ", ".join(f"job {j['id']} {s}" for j, s in done))
        except UserError as e:
            self.call_from_thread(self.notify, str(e), severity="error")

    @work(thread=True, group="actions")
    def kill_job(self, job_id: int) -> None:
        from core.errors import UserError
        from core.jobs import stop_job

        try:
            status = stop_job(Store(self.store.path), job_id, grace=10.0)
            self.call_from_thread(self.notify, f"job {job_id}: {status}")
        except UserError as e:
            self.call_from_thread(self.notify, str(e), severity="error")

    @work(thread=True, group="actions")
    def resume_run(self, name: str) -> None:
        from core.errors import UserError
        from core.pipeline import device_slots, start_detached

        try:
            store = Store(self.store.path)
            row = store.get_run(name)
            if row and row["status"] == "succeeded":
                raise UserError(f"run {name} has finished; nothing to resume")
            job_id, pid = start_detached(self.get_run(name, store), store, device_slots(1))
            self.call_from_thread(self.notify, f"run {name}: resumed in the background (job {job_id}, pid {pid})")
        except UserError as e:
            self.call_from_thread(self.notify, str(e), severity="error")
