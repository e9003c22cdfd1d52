"""The runs screen: every run in the runs folder, with a filter and a sort key."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Input, Static

from core.evaluation.text import narrow_ci

from .view import HELP, QUIT, ViewScreen


def _llm(model) -> str:
    """The LLM column: the model name without its provider prefix, whole up to 24 characters."""
    name = (model or "").split("/", 1)[-1]
    return name if len(name) <= 24 else name[:23] + "…"


class RunsScreen(ViewScreen):
    BINDINGS = [
        Binding("enter", "open", "open"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "close_filter", "close filter", show=False),
        Binding("s", "sort", "sort"),
        QUIT,
        HELP,
    ]
    # the progressive model's FID and its verdict against the equal-compute control, as `stepadapt runs` shows
    # them (never the best of all models: that is the control's when the method loses)
    COLUMNS = ("name", "status", "stages", "FID prog ±95%", "vs control", "method", "llm", "preset")
    SORT_KEYS = ("created", "name", "status", "method", "progressive_fid")
    VERDICT = {"better": "better", "worse": "WORSE", "no significant difference": "same"}

    def __init__(self):
        super().__init__(("runs",))
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

    def show(self, rows) -> None:
        self.rows = rows or []
        self.render_rows()

    def render_rows(self) -> None:
        t = self.query_one(DataTable)
        msg = self.query_one("#message", Static)
        runs_dir = self.app.runs_dir
        if not self.rows:
            msg.update(
                Text(f"No runs in {runs_dir}.\nStart one with:  stepadapt run --preset tiny --runs-dir {runs_dir}")
            )
        else:
            msg.update(
                Text(
                    f"{len(self.rows)} runs in {runs_dir}   sort: {self.SORT_KEYS[self.sort]}"
                    + (f"   filter: {self.filter}" if self.filter else "")
                )
            )
        key = self.SORT_KEYS[self.sort]
        rows = [
            r
            for r in self.rows
            if not self.filter
            or any(self.filter.lower() in str(r.get(k) or "").lower() for k in ("name", "status", "preset", "method"))
        ]
        rows.sort(
            key=lambda r: (r.get(key) is None, r.get(key) if r.get(key) is not None else 0), reverse=key == "created"
        )
        cur = t.cursor_row
        t.clear()
        for r in rows:
            t.add_row(
                Text(r["name"]),
                r["status"],
                f"{r['stages_done']}/{r['stages_total']}",
                narrow_ci(r.get("progressive_fid"), r.get("progressive_fid_ci")),
                self.VERDICT.get(r.get("progressive_vs_control"), "-"),
                r.get("method") or "-",
                _llm(r.get("llm")),
                Text(r.get("preset") or "-"),
                key=r["name"],
            )
        if rows:
            t.move_cursor(row=min(cur, len(rows) - 1))
        elif self.rows:
            msg.update(Text(f"no run matches {self.filter!r} ({len(self.rows)} runs in {runs_dir}; escape clears)"))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def typed(self, event: Input.Changed) -> None:
        self.filter = event.value.strip()
        self.render_rows()

    @on(Input.Submitted, "#filter")
    def filtered(self, event: Input.Submitted) -> None:
        self.filter = event.value.strip()
        event.input.display = bool(self.filter)
        self.query_one(DataTable).focus()
        self.render_rows()

    def action_close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value, box.display, self.filter = "", False, ""
        self.query_one(DataTable).focus()
        self.render_rows()

    def action_sort(self) -> None:
        self.sort = (self.sort + 1) % len(self.SORT_KEYS)
        self.render_rows()

    def action_open(self) -> None:
        t = self.query_one(DataTable)
        if t.row_count:
            self._open(t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value)

    @on(DataTable.RowSelected, "#runs")
    def selected(self, event: DataTable.RowSelected) -> None:
        self._open(event.row_key.value)

    def _open(self, name: str) -> None:
        from .run_screen import RunScreen

        self.app.push_screen(RunScreen(name))
