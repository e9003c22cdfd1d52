"""`stepadapt tui`: a Textual app over the run store.

Screens (one module each): runs (filter, sort) -> run (stage pipeline, one row per timestep group, the
schedule) -> job log (follows the file) and proxy rounds (prompt and response of each round).

Data flows one way. The screen on top names its view (``ViewScreen.key``); one worker thread, with its own
store connection, reads that view whenever the store changes (``PRAGMA data_version`` moves when another
connection commits), a run folder changes, or the view changes, and posts a ``Snapshot``; the app hands it
to the screen, which redraws. The UI thread never touches SQLite. Actions that reach the job layer (kill,
resume) run in worker threads with their own connections too.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Optional

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import Hit, Hits, Provider
from textual.css.query import NoMatches

from core.errors import UserError
from core.manager.jobs import reconcile
from core.store import Store, open_store

from .data import read_view, run_of
from .dialogs import Help, key_help
from .messages import Snapshot
from .runs_screen import RunsScreen
from .view import ViewScreen

POLL_S = 0.5
RECONCILE_S = 5.0


class ToolCommands(Provider):
    """The command palette (ctrl+p) offers the tool's own actions on the run shown, or on any run: open its
    report in the browser, show its sample grids, open its proxy rounds."""

    async def search(self, query: str) -> Hits:
        app = self.app
        matcher = self.matcher(query)
        screen = app.screen
        names = [screen.run_name] if hasattr(screen, "run_name") else [p.name for p in app.run_folders()]
        for name in names:
            for label, action in (
                (f"open the report of {name}", lambda n=name: app.open_report(n)),
                (f"samples of {name}", lambda n=name: app.open_samples(n)),
                (f"proxy rounds of {name}", lambda n=name: app.open_proxy(n)),
            ):
                score = matcher.match(label)
                if score > 0:
                    yield Hit(score, matcher.highlight(label), action, help=f"run {name}")


class StepadaptApp(App):
    TITLE = "stepadapt"
    COMMANDS = App.COMMANDS | {ToolCommands}
    CSS_PATH = "app.tcss"
    BINDINGS = [Binding("ctrl+q", "quit", "quit", show=False), Binding("question_mark", "push_screen('help')", "help")]
    SCREENS = {"help": lambda: Help(help_text())}

    def __init__(self, runs_dir, run_name: Optional[str] = None, poll: float = POLL_S):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.start_run = run_name
        self.poll = poll
        self.view_key: tuple = ("runs",)
        self._view_changed = threading.Event()

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())
        if self.start_run:
            from .run_screen import RunScreen

            self.push_screen(RunScreen(self.start_run))
        self.watch_store()

    # -- data: the worker reads, the UI thread draws ----------------------------------------------------
    def watch_view(self, key: tuple) -> None:
        """Called by the screen on top: read its view from now on (at once)."""
        self.view_key = key
        self._view_changed.set()

    @work(thread=True, exclusive=True, group="poll")
    def watch_store(self) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        store = open_store(self.runs_dir)  # creates or migrates the store; this thread's connection
        reconcile(store)
        con = sqlite3.connect(str(store.path), timeout=5)
        last, last_reconcile, shown = None, time.time(), None
        while not worker.is_cancelled:
            key = self.view_key
            stamp = (key, _data_version(con), self._folder_stamp())
            if stamp != last:
                last = stamp
                data = read_view(store, self.runs_dir, key)
                seen = (key, _fingerprint(data))
                if seen != shown:  # another run's commits, or heartbeats alone, change nothing on screen
                    shown = seen
                    self.post_message(Snapshot(key, data))
            if time.time() - last_reconcile > RECONCILE_S:
                last_reconcile = time.time()
                reconcile(store)
            self._view_changed.wait(self.poll)
            self._view_changed.clear()
        con.close()

    def _folder_stamp(self) -> float:
        try:
            return self.runs_dir.stat().st_mtime
        except OSError:
            return 0.0

    def on_snapshot(self, message: Snapshot) -> None:
        scr = self.screen
        if isinstance(scr, ViewScreen) and scr.key == message.key:
            try:
                scr.show(message.data)
            except NoMatches:  # the screen is not composed yet: hand it over once it is
                self.set_timer(0.05, lambda: self.post_message(Snapshot(message.key, message.data)))

    # -- the command palette's actions ------------------------------------------------------------------
    def run_folders(self) -> list[Path]:
        from core.runs import is_run_folder

        try:
            return sorted(p for p in self.runs_dir.iterdir() if is_run_folder(p))
        except OSError:
            return []

    def open_report(self, name: str) -> None:
        """The run's HTML report in the browser (a notification when there is none, or no browser)."""
        import webbrowser

        from core.runs import Run

        page = Run(self.runs_dir / name).report_dir() / "index.html"
        if not page.is_file():
            self.notify(f"run {name} has no report yet: stepadapt report {name}", severity="warning")
        elif not webbrowser.open(page.as_uri()):
            self.notify(f"no browser here; the report is {page}")

    def open_samples(self, name: str) -> None:
        from .samples_screen import SamplesScreen

        self.push_screen(SamplesScreen(name))

    def open_proxy(self, name: str) -> None:
        from .proxy_screen import ProxyScreen

        self.push_screen(ProxyScreen(name))

    # -- actions that reach the job layer (in threads: stopping waits for the process) -----------------
    @work(thread=True, group="actions")
    def kill_run(self, name: str) -> None:
        from core.manager.pipeline import stop_run

        self._act(
            lambda store: (
                f"run {name}: " + ", ".join(f"job {j['id']} {s}" for j, s in stop_run(store, name, grace=10.0))
            )
        )

    @work(thread=True, group="actions")
    def kill_job(self, job_id: int) -> None:
        from core.manager.jobs import stop_job

        self._act(lambda store: f"job {job_id}: {stop_job(store, job_id, grace=10.0)}")

    @work(thread=True, group="actions")
    def resume_run(self, name: str) -> None:
        from core.manager.pipeline import resume_run

        def resume(store: Store) -> str:
            job_id, pid = resume_run(store, run_of(store, self.runs_dir, name))
            return f"run {name}: resumed in the background (job {job_id}, pid {pid})"

        self._act(resume)

    def _act(self, action) -> None:
        """Run ``action(store)`` with this thread's own store; its line, or its error, as a notification."""
        try:
            self.call_from_thread(self.notify, action(open_store(self.runs_dir)))
        except UserError as e:
            self.call_from_thread(self.notify, str(e), severity="error")


def help_text() -> str:
    """The key help of every screen, from their bindings."""
    from .job_screen import JobScreen
    from .proxy_screen import ProxyScreen
    from .run_screen import RunScreen

    screens = [("runs screen", RunsScreen), ("run screen", RunScreen), ("job log", JobScreen), ("proxy", ProxyScreen)]
    return key_help(screens, StepadaptApp.BINDINGS)


def _fingerprint(data) -> str:
    """What a view shows, as text to compare: its data without the jobs' heartbeat times (no screen shows
    them; a live job's heartbeat alone would redraw the screen every few seconds) and without the schedule
    strip's per-timestep lists (fixed by the run's config; thousands of numbers to serialise on every change)."""
    import json

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("heartbeat", "schedule_profile")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return json.dumps(strip(data), sort_keys=True, default=str)


def _data_version(con: sqlite3.Connection) -> Optional[int]:
    try:
        return con.execute("PRAGMA data_version").fetchone()[0]
    except sqlite3.Error:  # busy or locked for a moment: try again next poll
        return None
