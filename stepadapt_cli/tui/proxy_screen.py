"""The proxy's rounds of a run: one row per round, and the prompt and answer of the selected one."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static

from .view import BACK, HELP, ViewScreen, fmt


class ProxyScreen(ViewScreen):
    BINDINGS = [BACK, Binding("enter", "show_call", "prompt/response"), HELP]

    def __init__(self, name: str):
        super().__init__(("proxy", name))
        self.run_name = name
        self.rounds, self.calls, self.loaded = {}, {}, False

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="rounds", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="callbox"):
            yield Static("", id="call")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"proxy rounds of {self.run_name}"
        self.query_one(DataTable).add_columns("group", "round", "MACs G", "loss", "accepted", "source", "call")

    def show(self, data) -> None:
        rounds, self.calls = data["rounds"], data["calls"]
        if self.loaded and [str(r["id"]) for r in rounds] == list(self.rounds):
            return  # nothing new: keep the cursor and the detail pane as they are
        self.loaded = True
        self.rounds = {str(r["id"]): r for r in rounds}
        t = self.query_one(DataTable)
        t.clear()
        if not rounds:
            self.query_one("#call", Static).update("No proxy rounds recorded for this run "
                                                   "(pruned with another method, or not pruned yet).")
        for r in rounds:
            c = self.calls.get(r["call_id"]) or {}
            t.add_row(str(r["group_index"]), str(r["round"] + 1), fmt(r["macs"] and r["macs"] / 1e9),
                      fmt(r["loss"], "{:.5f}"), "yes" if r["accepted"] else "no", c.get("source", "-"),
                      str(r["call_id"] or "-"), key=str(r["id"]))

    def action_show_call(self) -> None:
        t = self.query_one(DataTable)
        if t.row_count:
            self.show_call(t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value)

    @on(DataTable.RowSelected)
    def selected(self, event: DataTable.RowSelected) -> None:
        self.show_call(event.row_key.value)

    def show_call(self, key: str) -> None:
        from rich.text import Text

        r = self.rounds[key]
        c = self.calls.get(r["call_id"])
        if not c:
            self.query_one("#call", Static).update(f"round {r['round'] + 1}: {r['reason'] or 'no call recorded'}")
            return
        parts = [f"call {c['id']}  source {c['source']}  model {c['model_asked']}  "
                 f"verdict {c['error'] or c['validation_error'] or 'accepted'}"]
        parts += [f"--- {m['role']} ---\n{m['content']}" for m in c["messages"]]
        parts.append(f"--- response ---\n{c['response_text']}")
        self.query_one("#call", Static).update(Text("\n".join(parts)))
