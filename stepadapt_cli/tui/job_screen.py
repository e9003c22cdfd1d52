"""A job's log, followed live (the file is read in a worker thread), with its status line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, RichLog, Static

from .dialogs import confirm
from .view import BACK, HELP, QUIT, ViewScreen

FOLLOW_S = 0.5


class JobScreen(ViewScreen):
    BINDINGS = [BACK, Binding("k", "kill", "kill job"), HELP, QUIT]

    def __init__(self, job_id: int):
        super().__init__(("job", job_id))
        self.job_id, self.following, self.job = job_id, False, None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="jobinfo")
        yield RichLog(id="log", wrap=False, max_lines=5000)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"job {self.job_id}"

    def show(self, j) -> None:
        if not j:
            self.query_one("#jobinfo", Static).update(Text(f"job {self.job_id} not found"))
            return
        grp = "" if j["group_index"] is None else f" group {j['group_index']}"
        ended = "" if j["exit_code"] is None else f"  exit {j['exit_code']}"
        self.job = j
        self.query_one("#jobinfo", Static).update(
            Text(
                f"job {j['id']}  {j['stage']}{grp}  run {j['run']}  [{j['status']}]  "
                + (
                    f"Slurm job {j['slurm_job']} {(j.get('slurm_state') or '').lower()}  host {j.get('host') or '-'}"
                    if j.get("slurm_job")
                    else f"pid {j['pid']}"
                )
                + f"{ended}\n"
                f"{j['log_path'] or '(no log file: it ran in a terminal)'}"
            )
        )
        self.refresh_bindings()
        if not self.following:
            self.following = True
            self.follow(Path(j["log_path"]) if j["log_path"] else None)

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
                    self.app.call_from_thread(self._append, chunk[:end].decode(errors="replace"))
            time.sleep(FOLLOW_S)

    def _append(self, text: str) -> None:
        log = self.query_one(RichLog)
        for line in text.splitlines():
            log.write(line)

    def check_action(self, action: str, parameters) -> bool | None:
        """``k`` is offered only while the job runs."""
        if action == "kill":
            return (self.job or {}).get("status") in ("queued", "running")
        return True

    def action_kill(self) -> None:
        confirm(self, f"Kill job {self.job_id}?", lambda: self.app.kill_job(self.job_id))
